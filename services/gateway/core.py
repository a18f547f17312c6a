"""The gateway's transport-neutral core: validation, chunked generation, jobs, store access, scoring.

``rest.py`` (FastAPI) and ``grpc_api.py`` (gRPC servicer) are thin translations onto :class:`Platform`, so both
APIs have the same rules and the same errors (see ``errors.py``).

Seeds: image ``i`` of a request with seed ``s`` gets seed ``s + i``; every stored image records its seed.
Generation is split into chunks of at most the generator's ``max_batch_size`` images, a few chunks are kept
in flight per request (so the replica's ``@serve.batch`` queue never runs dry), and results are consumed in
order.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import numpy as np

from services.common.config import Settings
from services.common.findings import Condition
from services.common.logging import get_logger
from services.common.store import BatchStore, Manifest
from services.generator.base import GenerationParams
from services.generator.deployment import ChunkResult, GenChunk

from . import prometheus as m
from .clients import Generators, Scorer
from .errors import InvalidArgument, NotFound, NotReady, Unavailable, api_error
from .jobs import JobManager, JobRecord, JobState
from .limits import check_count, check_params

log = get_logger(__name__)

STORED_FORMATS = ("png", "png16", "dicom", "npz", "webdataset")
DEFAULT_REFERENCE = "nih-cxr64"


@dataclass
class GenPlan:
    """A validated generation request: one condition (and prompt) per image, seeds ``seed + i``."""

    model_id: str
    info: dict
    conditions: list[Condition]
    seeds: list[int]
    prompts: list[str | None] | None
    params: GenerationParams
    prompt: str | None = None
    condition: Condition | None = None
    #: ``params`` as the model applies them, its defaults filled in (recorded in batch manifests)
    resolved_params: dict | None = None

    def recorded_params(self) -> dict:
        """What provenance and manifests record: the resolved params when known, else those sent."""
        return dict(self.resolved_params) if self.resolved_params is not None else self.params.model_dump(exclude_none=True)

    @property
    def count(self) -> int:
        return len(self.seeds)

    def request_dict(self) -> dict:
        return {
            "model": self.model_id, "count": self.count, "seed": self.seeds[0] if self.seeds else 0,
            "condition": (self.condition or Condition()).to_json_dict(), "prompt": self.prompt,
            "params": self.params.model_dump(exclude_none=True),
        }


class Platform:
    def __init__(self, generators: Generators, scorer: Scorer | None, store: BatchStore, settings: Settings,
                 jobs_dir=None, default_model: str | None = None, window: int = 4,
                 chunk_size: int | None = None):
        self.generators = generators
        self.scorer = scorer
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.window = max(1, int(window))
        self.chunk_size = int(chunk_size or settings.serve.generator_max_batch_size)
        ids = generators.model_ids()
        wanted = default_model or settings.default_model
        self.default_model = wanted if wanted in ids else (ids[0] if ids else wanted)
        self._infos: dict[str, dict] = {}
        self._resolved: dict[tuple[str, GenerationParams], dict] = {}
        self._finished_jobs: set[str] = set()
        self.jobs = JobManager(jobs_dir, settings.limits.max_concurrent_jobs, on_change=self._job_changed)
        m.init_labels(ids)
        m.set_job_counts(self.jobs.counts())

    # ---- models -------------------------------------------------------------------------------
    def resolve_model(self, model_id: str | None) -> str:
        mid = (model_id or "").strip() or self.default_model
        if mid not in self.generators.model_ids():
            raise InvalidArgument(
                f"unknown model {mid!r}; this platform serves: {', '.join(sorted(self.generators.model_ids())) or '(none)'}"
            )
        return mid

    async def model_info(self, model_id: str) -> dict:
        if model_id not in self.generators.model_ids():
            raise NotFound(f"model {model_id!r} not found; this platform serves: {', '.join(sorted(self.generators.model_ids()))}")
        if model_id not in self._infos:
            info = dict(await self.generators.info(model_id))
            info["is_default"] = model_id == self.default_model
            self._infos[model_id] = info
        return self._infos[model_id]

    async def model_infos(self) -> list[dict]:
        return [await self.model_info(mid) for mid in sorted(self.generators.model_ids())]

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        """The model's ``check_params`` + ``resolved_params`` (InvalidArgument naming a param the model's family
        does not use). Both depend only on the model and the params, so successes are cached."""
        key = (model_id, params)
        if key not in self._resolved:
            try:
                resolved = dict(await self.generators.resolve_params(model_id, params))
            except Exception as e:
                raise api_error(e) from e
            if len(self._resolved) >= 1024:
                self._resolved.clear()
            self._resolved[key] = resolved
        return dict(self._resolved[key])

    # ---- planning -----------------------------------------------------------------------------
    async def plan(self, model: str | None, condition: Condition | None, prompt: str | None, count: int,
                   seed: int, params: GenerationParams | None, limit: int, what: str) -> GenPlan:
        model_id = self.resolve_model(model)
        params = params or GenerationParams()
        check_count(int(count), limit, what)
        check_params(params, self.limits)
        seed = int(seed)
        if seed < 0 or seed + count > 2**63:
            raise InvalidArgument(f"seed must be in [0, 2**63 - count); got {seed}")
        info = await self.model_info(model_id)
        resolved = await self.resolve_params(model_id, params)
        prompt = (prompt or "").strip() or None
        prompts: list[str | None] | None = None
        if prompt is not None:
            if condition is not None and condition != Condition():
                raise InvalidArgument("give either a condition or a prompt, not both")
            from services.common.prompts import PromptError, parse_prompt

            if info.get("text_conditioned"):
                try:
                    cond = parse_prompt(prompt)  # recorded with the image; the model reads the raw prompt
                except PromptError:
                    cond = Condition()
                prompts = [prompt] * count
            else:
                try:
                    cond = parse_prompt(prompt)
                except Exception as e:  # PromptError lists what was understood
                    raise InvalidArgument(str(e)) from e
        else:
            cond = condition or Condition()
        return GenPlan(model_id=model_id, info=info, conditions=[cond] * count,
                       seeds=[seed + i for i in range(count)], prompts=prompts, params=params,
                       prompt=prompt, condition=cond, resolved_params=resolved)

    # ---- generation ---------------------------------------------------------------------------
    def _chunks(self, plan: GenPlan) -> list[GenChunk]:
        c = max(1, min(self.chunk_size, int(plan.info.get("max_batch_size") or self.chunk_size)))
        return [
            GenChunk(conditions=plan.conditions[i:i + c], seeds=plan.seeds[i:i + c], params=plan.params,
                     prompts=plan.prompts[i:i + c] if plan.prompts is not None else None)
            for i in range(0, plan.count, c)
        ]

    async def _call(self, model_id: str, chunk: GenChunk) -> ChunkResult:
        n = len(chunk)
        m.QUEUE_DEPTH.labels(model_id).inc(n)
        t0 = time.perf_counter()
        try:
            res = await self.generators.generate(model_id, chunk)
        finally:
            m.QUEUE_DEPTH.labels(model_id).dec(n)
        m.record_chunk(model_id, chunk.conditions, res.stats, time.perf_counter() - t0)
        return res

    async def stream(self, plan: GenPlan) -> AsyncIterator[tuple[int, GenChunk, ChunkResult]]:
        """Yield ``(first_index, chunk, result)`` in order, keeping ``window`` chunks in flight."""
        chunks = self._chunks(plan)
        pending: deque[tuple[int, GenChunk, asyncio.Task]] = deque()
        nxt = 0
        start = 0

        def launch() -> None:
            nonlocal nxt, start
            ch = chunks[nxt]
            pending.append((start, ch, asyncio.ensure_future(self._call(plan.model_id, ch))))
            start += len(ch)
            nxt += 1

        try:
            while nxt < len(chunks) and len(pending) < self.window:
                launch()
            while pending:
                first, ch, task = pending.popleft()
                res = await task
                if nxt < len(chunks):
                    launch()
                yield first, ch, res
        finally:
            for _, _, task in pending:
                task.cancel()

    async def generate(self, plan: GenPlan) -> np.ndarray:
        parts = [res.images async for _, _, res in self.stream(plan)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0, 0), np.float32)

    # ---- batch jobs ---------------------------------------------------------------------------
    def create_batch_job(self, plan: GenPlan, fmt: str) -> JobRecord:
        if fmt not in STORED_FORMATS:
            raise InvalidArgument(f"unknown format {fmt!r}; use one of {', '.join(STORED_FORMATS)}")
        request = {**plan.request_dict(), "format": fmt}
        params = plan.recorded_params()

        async def run(handle) -> dict:
            writer = await asyncio.to_thread(
                self.store.create, plan.model_id, plan.info.get("model_hash", ""), plan.info.get("backend", ""),
                fmt, params,
            )
            try:
                done = 0
                async for _, chunk, res in self.stream(plan):
                    await asyncio.to_thread(_add_chunk, writer, chunk, res, plan.prompt)
                    done += len(chunk)
                    handle.progress(done)
                manifest = await asyncio.to_thread(writer.commit)
            except BaseException:
                await asyncio.to_thread(writer.abort)  # all or nothing: no half-stored batch
                raise
            return {"batch_id": manifest.batch_id}

        return self.jobs.submit("batch", request, plan.count, run)

    # ---- scoring ------------------------------------------------------------------------------
    async def references(self) -> list[str]:
        if self.scorer is None:
            return []
        return list(await self.scorer.references())

    async def create_score_job(self, batch_id: str, reference: str | None, metrics: list[str] | None,
                               extractor: str | None) -> JobRecord:
        if self.scorer is None:
            raise Unavailable("this platform runs without a metrics deployment")
        manifest = await self.get_batch(batch_id)
        reference = (reference or DEFAULT_REFERENCE).strip()
        refs = await self.references()
        if reference not in refs:
            raise InvalidArgument(f"unknown reference {reference!r}; registered references: {', '.join(refs) or '(none)'}")
        metrics = [x.strip().lower() for x in (metrics or ["fid"]) if x.strip()]
        extractor = (extractor or "inception").strip()
        request = {"batch_id": manifest.batch_id, "reference": reference, "metrics": metrics, "extractor": extractor}

        async def run(handle) -> dict:
            t0 = time.perf_counter()
            result = await self.scorer.score(manifest.batch_id, reference, metrics, extractor)
            m.SCORING_LATENCY.labels(reference, extractor).observe(time.perf_counter() - t0)
            handle.progress(manifest.count)
            return {"batch_id": manifest.batch_id, **{k: v for k, v in dict(result).items() if k != "batch_id"}}

        return self.jobs.submit("score", request, manifest.count, run)

    def score_result(self, job_id: str) -> JobRecord:
        rec = self.jobs.get(job_id)
        if rec.kind != "score":
            raise NotFound(f"job {job_id} is a {rec.kind} job, not a scoring job")
        if rec.state == JobState.FAILED:
            return rec
        if not rec.state.finished:
            raise NotReady(f"scoring job {job_id} is {rec.state.value} ({rec.done}/{rec.total}); poll again")
        return rec

    def _job_changed(self, rec: JobRecord) -> None:
        m.set_job_counts(self.jobs.counts())
        if rec.state.finished and rec.job_id not in self._finished_jobs:
            self._finished_jobs.add(rec.job_id)
            m.JOBS_FINISHED.labels(rec.kind, rec.state.value).inc()

    # ---- store --------------------------------------------------------------------------------
    async def _store(self, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:
            raise api_error(e) from e

    async def list_batches(self) -> list[Manifest]:
        return await self._store(self.store.list)

    async def get_batch(self, batch_id: str) -> Manifest:
        return await self._store(self.store.get, batch_id)

    async def delete_batch(self, batch_id: str) -> None:
        await self._store(self.store.delete, batch_id)

    async def image_bytes(self, batch_id: str, index: int) -> tuple[str, bytes]:
        return await self._store(self.store.image_bytes, batch_id, int(index))

    async def read_file(self, batch_id: str, name: str) -> bytes:
        return await self._store(self.store.read_file, batch_id, name)

    def iter_images(self, batch_id: str):
        return self.store.iter_images(batch_id)

    def archive(self, manifest: Manifest, kind: str) -> Iterator[bytes]:
        files = list(dict.fromkeys([r.file for r in manifest.images])) + ["manifest.json"]
        if kind == "tar":
            return _iter_tar(self.store, manifest.batch_id, files)
        if kind == "zip":
            return _iter_zip(self.store, manifest.batch_id, files)
        raise InvalidArgument(f"unknown archive type {kind!r}; use tar or zip")

    # ---- health -------------------------------------------------------------------------------
    async def readiness(self, timeout_s: float = 5.0) -> dict[str, str]:
        out: dict[str, str] = {}

        async def probe(name: str, coro) -> None:
            try:
                await asyncio.wait_for(coro, timeout_s)
                out[name] = "ok"
            except Exception as e:  # noqa: BLE001 - reported, not raised
                out[name] = f"{type(e).__name__}: {e}"[:300]

        probes = [probe(f"generator:{mid}", self.generators.info(mid)) for mid in self.generators.model_ids()]
        if self.scorer is not None:
            probes.append(probe("metrics", self.scorer.ready()))
        probes.append(probe("store", asyncio.to_thread(self.store.fs.exists, self.store.root)))
        await asyncio.gather(*probes)
        return out

    async def shutdown(self) -> None:
        await self.jobs.shutdown()


def _add_chunk(writer, chunk: GenChunk, res: ChunkResult, prompt: str | None) -> None:
    for j in range(len(chunk)):
        p = chunk.prompts[j] if chunk.prompts is not None else prompt  # recorded even for class-conditional models
        writer.add(res.images[j], chunk.seeds[j], chunk.conditions[j], prompt=p)


def _iter_tar(store: BatchStore, batch_id: str, files: list[str]) -> Iterator[bytes]:
    """A tar stream built file by file (never the whole archive in memory)."""
    for name in files:
        data = store.read_file(batch_id, name)
        info = tarfile.TarInfo(f"{batch_id}/{name}")
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        yield data
        pad = (-len(data)) % tarfile.BLOCKSIZE
        if pad:
            yield b"\0" * pad
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


class _Sink(io.RawIOBase):
    """Unseekable write-only buffer that ``zipfile`` streams into (data descriptors, no seeking)."""

    def __init__(self):
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _iter_zip(store: BatchStore, batch_id: str, files: list[str]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name in files:
            data = store.read_file(batch_id, name)
            with zf.open(zipfile.ZipInfo(f"{batch_id}/{name}", date_time=time.gmtime()[:6]), "w") as fh:
                fh.write(data)
            chunk = sink.drain()
            if chunk:
                yield chunk
    tail = sink.drain()
    if tail:
        yield tail
