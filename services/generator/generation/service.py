"""The generation use case: plan a request, run it chunk by chunk, deliver the images or store them as a batch.

One implementation for every caller: ``synthrad generate`` (over :class:`LocalGenerators`), and the gateway's
REST, gRPC and batch jobs (over Serve deployment handles). Image ``i`` of a request with seed ``s`` gets seed
``s + i``. A plan runs in chunks of at most the model's ``max_batch_size`` images; ``window`` chunks are kept in
flight (so a replica's ``@serve.batch`` queue never runs dry) and results are consumed in order. A chunk whose
replica died is sent again (same seeds, so the same pixels), up to ``retries`` times.

Screening (``request.screen`` ``flag`` / ``drop``): each chunk of a stored batch is given to the model's
:class:`~services.common.screening.Screener` (from the ``screeners`` factory the service was built with; the
metrics package provides one over a training-set index) before it is written; near copies are marked or left
out and the manifest's ``screening`` records the index, thresholds and seeds. A resumed screened batch continues
after the last *generated* image (the seed of the last stored one), so dropped images are not redone twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Protocol

import numpy as np

from services.common.config import Limits
from services.common.logging import get_logger
from services.common.screening import Screener, ScreenerFactory, ScreeningUnavailable, ScreenVerdict
from services.common.store import BatchStore, BatchWriter, Manifest
from services.generator.base import GenerationParams, GeneratorError
from services.generator.chunks import ChunkResult, GenChunk
from services.generator.registry import UnknownModel, pick_model
from services.generator.replica import ServedModel

from .generators import Generators
from .plan import GenerationPlan, check_request, make_plan
from .request import GenerationRequest, InvalidRequest

log = get_logger(__name__)



class GenerationOverloaded(RuntimeError):
    """A model's request queue is full: an interactive request is shed (HTTP 503 / UNAVAILABLE with
    Retry-After) instead of waiting into a timeout."""

    retry_after_s = 2.0

class ChunkObserver(Protocol):
    """Hooks the serving layer uses for telemetry (queue depth, latency, retries)."""

    def sent(self, model_id: str, chunk: GenChunk) -> None: ...

    def returned(self, model_id: str, chunk: GenChunk) -> None: ...

    def done(self, model_id: str, chunk: GenChunk, result: ChunkResult, latency_s: float) -> None: ...

    def retried(self, model_id: str) -> None: ...


class _NoObserver:
    def sent(self, model_id, chunk): pass

    def returned(self, model_id, chunk): pass

    def done(self, model_id, chunk, result, latency_s): pass

    def retried(self, model_id): pass


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 6
    backoff_s: float = 0.5  # first delay; doubles per retry, at most 10 s


class GenerationService:
    def __init__(self, generators: Generators, limits: Limits, default_model: str | None = None, window: int = 4,
                 retry: RetryPolicy | None = None, observer: ChunkObserver | None = None,
                 screeners: ScreenerFactory | None = None):
        self.generators = generators
        self.screeners = screeners
        self.limits = limits
        ids = generators.model_ids()
        self.default_model = default_model if default_model in ids else (ids[0] if ids else (default_model or ""))
        self.window = max(1, int(window))
        self.retry = retry or RetryPolicy()
        self.observer = observer or _NoObserver()
        self._infos: dict[str, ServedModel] = {}
        self._resolved: dict[tuple[str, GenerationParams], dict] = {}

    # ---- models -------------------------------------------------------------------------------
    async def resolve_model(self, model: str | None) -> str:
        """The served model a request means: its id, or a family name (the registry's :func:`pick_model` rule,
        the same as the CLI's); blank means the default model."""
        name = (model or "").strip() or self.default_model
        ids = self.generators.model_ids()
        if name in ids:
            return name
        return pick_model(name, [await self.model_info(mid) for mid in ids], self.default_model)

    async def model_info(self, model_id: str) -> ServedModel:
        """A served model's description (asked once per model: it does not change while it is served)."""
        if model_id not in self.generators.model_ids():
            raise UnknownModel(f"model {model_id!r} is not served here; it serves: "
                               f"{', '.join(sorted(self.generators.model_ids())) or '(none)'}")
        if model_id not in self._infos:
            self._infos[model_id] = await self.generators.info(model_id)
        return self._infos[model_id]

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        """The model's ``check_params`` + ``resolved_params`` (a GeneratorError names a param the model's family
        does not use). Both depend only on the model and the params, so successes are cached."""
        key = (model_id, params)
        if key not in self._resolved:
            resolved = dict(await self.generators.resolve_params(model_id, params))
            if len(self._resolved) >= 1024:
                self._resolved.clear()
            self._resolved[key] = resolved
        return dict(self._resolved[key])

    # ---- planning -----------------------------------------------------------------------------
    async def plan(self, request: GenerationRequest, max_images: int, what: str) -> GenerationPlan:
        """Check ``request`` against the limits (at most ``max_images`` images for ``what``) and the model."""
        model_id = await self.resolve_model(request.model)
        check_request(request, self.limits, max_images, what)
        model = await self.model_info(model_id)
        resolved = await self.resolve_params(model_id, request.params)
        if request.screen != "off":
            await asyncio.to_thread(self.screener, model_id)  # refused now, not after the images are made
        return make_plan(request, model, resolved)

    def screener(self, model_id: str) -> Screener:
        """The near-copy screener of ``model_id`` (InvalidRequest when screening is unavailable for it)."""
        if self.screeners is None:
            raise InvalidRequest("near-copy screening is not available here (no training-set index is set up); "
                                 "use screen=off")
        try:
            return self.screeners(model_id)
        except ScreeningUnavailable as e:
            raise InvalidRequest(f"cannot screen images of model {model_id}: {e}") from None

    # ---- running ------------------------------------------------------------------------------
    async def _call(self, model_id: str, chunk: GenChunk, on_retry: Callable[[], None] | None,
                    shed: bool = False) -> ChunkResult:
        attempt = 0
        while True:
            self.observer.sent(model_id, chunk)
            t0 = time.perf_counter()
            try:
                res = await self.generators.generate(model_id, chunk)
            except Exception as e:
                if shed and self.generators.is_overload(e):
                    raise GenerationOverloaded(f"model {model_id} is at capacity (its request queue is full): "
                                               "retry after a moment, or use a batch job (POST /v1/batches), "
                                               "which waits for capacity") from None
                if attempt >= self.retry.retries or not self.generators.is_transient(e):
                    raise
                attempt += 1
                delay = min(10.0, self.retry.backoff_s * 2 ** (attempt - 1))
                log.warning("generation chunk failed; retrying", extra={
                    "model": model_id, "attempt": attempt, "error": type(e).__name__, "delay_s": delay})
                self.observer.retried(model_id)
                if on_retry is not None:
                    on_retry()
                await asyncio.sleep(delay)
                continue
            finally:
                self.observer.returned(model_id, chunk)
            self.observer.done(model_id, chunk, res, time.perf_counter() - t0)
            return res

    async def stream(self, plan: GenerationPlan, start: int = 0, on_retry: Callable[[], None] | None = None,
                     shed: bool = False) -> AsyncIterator[tuple[int, GenChunk, ChunkResult]]:
        """Yield ``(first_index, chunk, result)`` in order from image ``start`` on, keeping ``window`` chunks in
        flight. Chunk boundaries are counted from ``start``; pixels never depend on them. ``shed``: a full model
        queue raises :class:`GenerationOverloaded` at once (interactive requests) instead of backing off."""
        chunks = plan.chunks(plan.model.max_batch_size, start)
        pending: deque[tuple[int, GenChunk, asyncio.Task]] = deque()
        nxt, first = 0, start

        def launch() -> None:
            nonlocal nxt, first
            ch = chunks[nxt]
            pending.append((first, ch, asyncio.ensure_future(self._call(plan.model_id, ch, on_retry, shed))))
            first += len(ch)
            nxt += 1

        try:
            while nxt < len(chunks) and len(pending) < self.window:
                launch()
            while pending:
                at, ch, task = pending.popleft()
                res = await task
                if nxt < len(chunks):
                    launch()
                yield at, ch, res
        finally:
            for _, _, task in pending:
                task.cancel()

    async def generate(self, plan: GenerationPlan) -> np.ndarray:
        """The plan's images in memory, ``(N, H, W)`` float32 in [0, 1]. Screening applies to stored batches
        only (their manifest records it): a screened plan is refused here."""
        if plan.request.screen != "off":
            raise InvalidRequest("screening applies to stored batches (the manifest records it); use screen=off "
                                 "for images returned inline")
        parts = [res.images async for _, _, res in self.stream(plan, shed=True)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0, 0), np.float32)

    # ---- storing ------------------------------------------------------------------------------
    async def open_batch(self, plan: GenerationPlan, store: BatchStore, fmt: str, created_by: str | None = None,
                         resume_id: str | None = None) -> BatchWriter:
        """A writer for the plan's batch: the staging batch ``resume_id`` continued when it is still there,
        else a new one."""
        if resume_id:
            writer = await asyncio.to_thread(store.resume, resume_id)
            if writer is not None:
                return writer
        o = plan.origin
        return await asyncio.to_thread(store.create, o.model_id, o.model_hash, o.backend, fmt, o.params,
                                       created_by=created_by)

    async def store(self, plan: GenerationPlan, writer: BatchWriter,
                    progress: Callable[[int], None] | None = None, check: Callable[[], None] | None = None,
                    on_retry: Callable[[], None] | None = None,
                    suspend_on: tuple[type[BaseException], ...] = (),
                    on_chunk: Callable[[ChunkResult], None] | None = None) -> Manifest:
        """Generate the images ``writer`` does not hold yet and commit the batch.

        Every chunk is made durable (journal) before ``progress(images_stored)`` is called, so a resumed writer
        continues after the last stored image. ``check()`` runs before every write (a job's lease check).
        ``suspend_on`` exceptions (a job's cancellation and lost lease) keep what is stored (suspend: the batch
        can be resumed); any other failure removes it (all or nothing: no half-stored batch). ``on_chunk(result)``
        sees each chunk's result as it arrives (e.g. which replica made it)."""
        try:
            action = plan.request.screen
            screener = await asyncio.to_thread(self.screener, plan.model_id) if action != "off" else None
            start = resume_position(plan, writer)
            if progress is not None:
                progress(start)
            async for first, chunk, res in self.stream(plan, start=start, on_retry=on_retry):
                if on_chunk is not None:
                    on_chunk(res)
                if check is not None:
                    check()
                verdicts = await asyncio.to_thread(screener.screen, res.images) if screener is not None else None
                await asyncio.to_thread(add_chunk, writer, plan, first, chunk, res, verdicts, action)
                await asyncio.to_thread(writer.sync)
                if progress is not None:
                    progress(first + len(chunk))
            if check is not None:
                check()
            if screener is not None:
                writer.screening = screening_record(screener, action, plan, writer)
                if not writer.records:
                    raise GeneratorError(f"all {plan.count} images were near copies of the training set "
                                         f"(index {writer.screening.index}) and were dropped; nothing to store")
            return await asyncio.to_thread(writer.commit)
        except suspend_on:
            await asyncio.to_thread(writer.suspend)
            raise
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise


def add_chunk(writer: BatchWriter, plan: GenerationPlan, first: int, chunk: GenChunk, res: ChunkResult,
              verdicts: list[ScreenVerdict] | None = None, action: str = "off") -> None:
    """Store one chunk's images with their seeds, conditions and the request's prompt (recorded for every
    model, even class-conditional ones that were given the parsed condition). With ``verdicts`` (screening):
    ``flag`` marks each image's ``near_copy``, ``drop`` leaves near copies out."""
    if verdicts is not None and len(verdicts) != len(chunk):
        raise GeneratorError(f"the screener returned {len(verdicts)} verdicts for {len(chunk)} images")
    for j in range(len(chunk)):
        near = None if verdicts is None else bool(verdicts[j].near_copy)
        if near and action == "drop":
            continue
        writer.add(res.images[j], chunk.seeds[j], chunk.conditions[j], prompt=plan.prompt, near_copy=near)


def resume_position(plan: GenerationPlan, writer: BatchWriter) -> int:
    """The plan index to continue from: after the image of the last stored seed (= ``writer.count`` unless
    near copies were dropped)."""
    if not writer.records:
        return 0
    pos = int(writer.records[-1].seed) - int(plan.seeds[0]) + 1
    if 0 < pos <= plan.count and plan.seeds[pos - 1] == writer.records[-1].seed:
        return pos
    return writer.count


def screening_record(screener: Screener, action: str, plan: GenerationPlan, writer: BatchWriter):
    """The manifest's record of a finished screened batch (rebuilt from the stored records, so a resumed batch
    records the seeds dropped before its restart too)."""
    kept = {int(r.seed) for r in writer.records}
    dropped = [int(s) for s in plan.seeds if int(s) not in kept] if action == "drop" else []
    flagged = sorted(set(dropped) | {int(r.seed) for r in writer.records if r.near_copy})
    return screener.record(action).model_copy(update={"screened": plan.count, "flagged_seeds": flagged,
                                                      "dropped_seeds": dropped})
