"""The request body limit (ASGI middleware, 413 past ``settings.limits.max_request_bytes``).

The other bounds of ``settings.limits`` (``SYNTHRAD_LIMITS__*``) are enforced where their rule lives: image
counts, resolution and steps by the generation use case's planner
(``services/generator/generation/plan.py``, 422), ``max_concurrent_jobs`` by the job manager (429).
"""

from __future__ import annotations

from .errors import TooLarge, error_response


class BodySizeLimit:
    """Pure ASGI middleware: 413 when Content-Length or the streamed body exceeds ``max_bytes``."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers") or []:
            if k == b"content-length":
                try:
                    if int(v) > self.max_bytes:
                        return await self._reject(scope, receive, send)
                except ValueError:
                    pass
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        # Bodies of this API are small JSON documents: read the body (up to the limit) before the app sees
        # it, so a chunked upload without Content-Length is cut off at the limit too.
        parts: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await self._reject(scope, receive, send)
            parts.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send) -> None:
        err = TooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
        await error_response(err)(scope, receive, send)
