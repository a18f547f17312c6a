"""Telemetry of a replicated application: every replica's events recorded in ONE place.

Requests are counted by whichever gateway replica took them and jobs run in the jobs deployment, but a scrape of
``/metrics`` must show the whole application, the same whichever gateway replica answers it. So in a Serve
application each gateway and jobs replica records nothing itself: its :class:`RelayTelemetry` (the generation use
case's observer, and :func:`~services.gateway.prometheus.count_request`'s sink) queues what happened as typed
:class:`RelayedEvent` objects and sends them in batches to the telemetry deployment
(:mod:`services.gateway.telemetry_hub`), which records each event once; ``/metrics`` on any gateway replica
returns the hub's exposition. Batches go every ``flush_s`` (0.5 s) and at once before a finished job's record is
written; a replica killed outright loses the events it still held. While the hub does not answer, events wait
in a bounded buffer (the oldest are dropped beyond ``max_buffer``, counted in a warning).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

from services.common.findings import Condition
from services.common.logging import get_logger
from services.generator.chunks import ChunkStats

log = get_logger(__name__)


@dataclass(frozen=True)
class RelayedEvent:
    kind: Literal["inflight", "retried", "chunk", "job_finished", "scoring", "request"]
    #: the model (chunk events), the job kind (job_finished), the reference (scoring) or the protocol (request)
    model: str
    #: images in flight now (inflight: an absolute value, per source)
    count: int = 0
    #: the job's final state (job_finished), the extractor (scoring), the operation (request), the source
    #: process (inflight)
    state: str = ""
    #: the outcome code of a request
    code: str = ""
    seconds: float = 0.0
    conditions: tuple[Condition, ...] = field(default_factory=tuple)
    stats: ChunkStats | None = None


Push = Callable[[list[RelayedEvent]], Awaitable[None]]


class RelayTelemetry:
    """The observer of the jobs deployment's generation use case (and its job/scoring telemetry)."""

    #: while images are in flight the in-flight counts are re-sent at least this often (the hub forgets a source
    #: it has not heard from for ``telemetry_hub.SOURCE_TTL_S``: a killed replica's chunks stop counting)
    KEEPALIVE_S = 5.0

    def __init__(self, push: Push, flush_s: float = 0.5, max_buffer: int = 20000):
        self.push, self.flush_s, self.max_buffer = push, flush_s, max_buffer
        self.source = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._buf: list[RelayedEvent] = []
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._dropped = 0
        self._inflight: dict[str, int] = {}
        self._inflight_dirty = False

    # ---- the observer interface (ChunkTelemetry's) ------------------------------------------------
    def sent(self, model_id: str, chunk) -> None:
        self._inflight[model_id] = self._inflight.get(model_id, 0) + len(chunk)
        self._inflight_dirty = True
        self._schedule(self.flush_s)

    def returned(self, model_id: str, chunk) -> None:
        self._inflight[model_id] = max(0, self._inflight.get(model_id, 0) - len(chunk))
        self._inflight_dirty = True
        self._schedule(self.flush_s)

    def retried(self, model_id: str) -> None:
        self._add(RelayedEvent("retried", model_id))

    def done(self, model_id: str, chunk, result, latency_s: float) -> None:
        self._add(RelayedEvent("chunk", model_id, seconds=float(latency_s), conditions=tuple(chunk.conditions),
                               stats=result.stats))

    def job_finished(self, kind: str, state: str) -> None:
        self._add(RelayedEvent("job_finished", kind, state=state))  # the job's owner flushes before it records

    def scoring(self, reference: str, extractor: str, seconds: float) -> None:
        self._add(RelayedEvent("scoring", reference, state=extractor, seconds=float(seconds)))

    def request(self, protocol: str, operation: str, code: str) -> None:
        self._add(RelayedEvent("request", protocol, state=operation, code=str(code)))

    # ---- sending ------------------------------------------------------------------------------
    def _add(self, ev: RelayedEvent) -> None:
        self._buf.append(ev)
        if len(self._buf) > self.max_buffer:
            over = len(self._buf) - self.max_buffer
            del self._buf[:over]
            self._dropped += over
        self._schedule(self.flush_s)

    def _schedule(self, delay: float) -> None:
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._flush_later(delay))
            except RuntimeError:  # no loop (a synchronous caller): sent with the next event or flush()
                pass

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.flush()
        if any(self._inflight.values()) or self._buf:  # keep the hub's view of the in-flight images fresh
            self._task = asyncio.get_running_loop().create_task(
                self._flush_later(self.flush_s if self._buf else self.KEEPALIVE_S))

    async def flush(self) -> int:
        """Send what is buffered (after any send still in progress: batches arrive in order); returns how many
        events went (0 when the hub did not take them)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            batch, self._buf = self._buf, []
            if self._inflight_dirty or any(self._inflight.values()):
                batch += [RelayedEvent("inflight", m, count=n, state=self.source) for m, n in self._inflight.items()]
                self._inflight_dirty = False
            if not batch:
                return 0
            try:
                await self.push(batch)
            except Exception as e:  # noqa: BLE001 - keep them for the next try; jobs never fail for telemetry
                self._buf = [ev for ev in batch if ev.kind != "inflight"] + self._buf
                self._inflight_dirty = True
                log.warning("telemetry not delivered yet", extra={"events": len(batch), "error": type(e).__name__})
                if self._task is None or self._task.done() or self._task is asyncio.current_task():
                    self._task = asyncio.get_running_loop().create_task(self._flush_later(self.flush_s))
                return 0
            if self._dropped:
                log.warning("telemetry events dropped while the hub did not answer", extra={"events": self._dropped})
                self._dropped = 0
            return len(batch)
