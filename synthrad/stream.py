"""A stream of freshly generated, labelled images for training pipelines: a PyTorch ``IterableDataset``.

    from synthrad.stream import StreamingDataset

    mix = {"pleural effusion": 0.5, "no pleural effusion": 0.5}         # findings text or condition dicts
    data = StreamingDataset("http://127.0.0.1:8000", mix, chunk=16, seed=7, max_images=10_000)
    for images, codes in torch.utils.data.DataLoader(data, batch_size=64):   # (B,1,H,W) float32, (B,4) long
        ...

How it behaves:

* **Mix**: requests go out one chunk (``chunk`` images, one condition) at a time; chunk ``k``'s condition is
  chosen by a smooth weighted round robin over the mix, so any window of chunks follows the weights as closely
  as whole chunks allow (50 % / 50 % alternates exactly). Labels are the server's condition codes (0 absent,
  1 present, 2 unspecified, in ``FINDINGS`` order), checked against the condition asked for.
* **Deterministic**: chunk ``k`` asks for seeds ``seed + k*chunk`` …: the same stream again gives the same
  pixels (the server's rule: same model + seed + condition + backend, same pixels), and every image's seed is
  unique. The server's returned seeds and count are checked: a short or different chunk is an error, never
  silently used.
* **Backpressure**: a background thread keeps at most ``prefetch`` chunks ahead of the consumer; a slow training
  loop slows the requests, a fast one is limited by the server.
* **Retries**: 429 and 503 (the server shedding load) are retried after ``Retry-After`` (else exponential
  back-off, 0.5 s doubling to 10 s), as are 502/504 and dropped connections (the same chunk again: same seeds,
  same images — nothing lost, nothing twice); after ``max_retries`` failures in a row of one chunk, or at once
  on any other error (a 4xx names the problem), iteration raises :class:`~synthrad.client.SynthradError`.
* **Resumption**: ``state_dict()`` / ``load_state_dict()`` record the position (chunk and image within it) after
  the last sample handed out, so a restarted job continues the same stream exactly where it stopped. With a ``DataLoader`` of several workers, each worker takes every
  ``num_workers``-th chunk (disjoint seeds).
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import httpx
import numpy as np

from .client import SynthradError

RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    codes: tuple[int, ...]  # condition codes in FINDINGS order
    seed: int
    chunk: int


def _condition(spec: Any) -> dict:
    """A mix key (findings text such as "pleural effusion, no cardiomegaly", or a condition dict) -> condition."""
    from services.common.findings import Condition
    from services.common.prompts import parse_prompt

    if isinstance(spec, Mapping):
        return Condition(**spec).to_json_dict()
    return parse_prompt(str(spec)).to_json_dict()


def _weights(mix: Mapping[Any, float] | Sequence[tuple[Any, float]]) -> list[tuple[dict, float]]:
    items = list(mix.items()) if isinstance(mix, Mapping) else list(mix)
    if not items:
        raise ValueError("the mix is empty: give at least one condition with a weight")
    out = []
    for spec, w in items:
        if not (isinstance(w, (int, float)) and w > 0):
            raise ValueError(f"weight {w!r} of {spec!r} must be a positive number")
        out.append((_condition(spec), float(w)))
    total = sum(w for _, w in out)
    return [(c, w / total) for c, w in out]


class _Schedule:
    """Smooth weighted round robin over the mix, kept as state: asking for chunks in increasing order (what a
    stream does) costs O(1) each; an earlier chunk restarts from 0."""

    def __init__(self, weights: Sequence[float]):
        self.weights = list(weights)
        self._reset()

    def _reset(self) -> None:
        self.k, self.current, self.last = -1, [0.0] * len(self.weights), 0

    def at(self, k: int) -> int:
        if k < self.k:
            self._reset()
        while self.k < k:
            self.current = [c + w for c, w in zip(self.current, self.weights)]
            self.last = max(range(len(self.weights)), key=lambda i: (self.current[i], -i))
            self.current[self.last] -= 1.0
            self.k += 1
        return self.last


def schedule(weights: Sequence[float], n: int) -> list[int]:
    """Indices of the mix for chunks 0..n-1: smooth weighted round robin (deterministic; every prefix follows
    the weights to within one chunk per condition)."""
    s = _Schedule(weights)
    return [s.at(k) for k in range(n)]


class GenerationStream:
    """The plain iterator under :class:`StreamingDataset` (no torch): :class:`Sample` objects."""

    def __init__(self, url: str, mix, *, model: str | None = None, chunk: int = 8, seed: int = 0,
                 max_images: int | None = None, api_key: str | None = None, prefetch: int = 2,
                 max_retries: int = 20, timeout: float = 120.0, start_chunk: int = 0, shard: tuple[int, int] = (0, 1),
                 http_factory: Callable[[], httpx.Client] | None = None, sleep: Callable[[float], None] = time.sleep):
        if chunk < 1:
            raise ValueError("chunk must be at least 1 image")
        self.url, self.model, self.chunk, self.seed = url.rstrip("/"), model, int(chunk), int(seed)
        self.mix = _weights(mix)
        self._schedule = _Schedule([w for _, w in self.mix])
        self.max_images, self.api_key, self.prefetch = max_images, api_key, max(1, int(prefetch))
        self.max_retries, self.timeout, self.next_chunk = int(max_retries), timeout, int(start_chunk)
        self.shard, self.http_factory, self.sleep = shard, http_factory, sleep
        self.skip = 0  # samples of chunk next_chunk the consumer already has
        self.retries = 0  # retried requests so far (telemetry for the caller)

    # ---- what chunk k is --------------------------------------------------------------------------------------
    @property
    def total_chunks(self) -> int | None:
        return None if self.max_images is None else -(-self.max_images // self.chunk)

    def chunk_request(self, k: int) -> dict:
        cond = self.mix[self._schedule.at(k)][0]
        count = self.chunk if self.max_images is None else min(self.chunk, self.max_images - k * self.chunk)
        body = {"condition": cond, "count": count, "seed": self.seed + k * self.chunk, "format": "npz"}
        if self.model:
            body["model"] = self.model
        return body

    # ---- one chunk, with retries ------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        if self.http_factory is not None:
            return self.http_factory()
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        return httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers)

    def fetch(self, http: httpx.Client, k: int) -> list[Sample]:
        body = self.chunk_request(k)
        delay, failures = 0.5, 0
        while True:
            try:
                r = http.post("/v1/generate", json=body)
                if r.status_code not in RETRY_STATUSES:
                    break
                wait = _retry_after(r) or delay
                reason = f"{r.status_code} {_detail(r)}"
            except httpx.TransportError as e:  # refused, reset, timed out, cut short
                wait, reason = delay, f"{type(e).__name__}: {e}"
            failures += 1
            self.retries += 1
            if failures > self.max_retries:
                raise SynthradError(f"chunk {k}: gave up after {self.max_retries} retries (last: {reason})")
            self.sleep(min(wait, 30.0))
            delay = min(delay * 2, 10.0)
        if r.status_code >= 400:
            raise SynthradError(f"POST /v1/generate: {r.status_code} {_detail(r)}", r.status_code)
        return self._samples(r.content, body, k)

    def _samples(self, content: bytes, body: dict, k: int) -> list[Sample]:
        from services.common.findings import Condition

        with np.load(io.BytesIO(content)) as z:
            images, seeds, codes = z["images"], z["seeds"], z["condition_codes"]
        want = list(range(body["seed"], body["seed"] + body["count"]))
        if len(images) != body["count"] or [int(s) for s in seeds] != want:
            raise SynthradError(f"chunk {k}: the server returned {len(images)} images with seeds "
                                f"{[int(s) for s in seeds][:4]}…, not {body['count']} with seeds {want[:4]}…")
        expected = Condition(**body["condition"]).codes()
        if any(list(map(int, c)) != expected for c in np.atleast_2d(codes)):
            raise SynthradError(f"chunk {k}: the server labelled the images {codes[0].tolist()}, not {expected}")
        return [Sample(np.asarray(img, np.float32), tuple(expected), int(s), k) for img, s in zip(images, seeds)]

    # ---- iteration ----------------------------------------------------------------------------------------------
    def my_chunks(self) -> Iterator[int]:
        first, step = self.shard
        k = self.next_chunk
        k += (first - k) % step  # this shard's first chunk at or after next_chunk
        total = self.total_chunks
        while total is None or k < total:
            yield k
            k += step

    def __iter__(self) -> Iterator[Sample]:
        """Samples in chunk order; a producer thread keeps at most ``prefetch`` chunks ahead."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                with self._client() as http:
                    for k in self.my_chunks():
                        item = (k, self.fetch(http, k))
                        while not stop.is_set():
                            try:
                                q.put(item, timeout=0.2)  # blocks while the consumer is behind: backpressure
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(("error", e))
                return
            q.put(("end", None))

        worker = threading.Thread(target=produce, name="synthrad-stream", daemon=True)
        worker.start()
        try:
            while True:
                k, samples = q.get()
                if k == "end":
                    return
                if k == "error":
                    raise samples
                first = self.skip if k == self.next_chunk else 0
                for j in range(first, len(samples)):
                    # the state says what the consumer holds once it has this sample (resume: the one after it)
                    if j + 1 < len(samples):
                        self.next_chunk, self.skip = k, j + 1
                    else:
                        self.next_chunk, self.skip = k + self.shard[1], 0
                    yield samples[j]
        finally:
            stop.set()

    def state_dict(self) -> dict:
        return {"next_chunk": self.next_chunk, "skip": self.skip, "seed": self.seed, "chunk": self.chunk,
                "mix": [[c, w] for c, w in self.mix]}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for key in ("seed", "chunk", "mix"):
            if json.dumps(state.get(key), sort_keys=True) != json.dumps(mine[key], sort_keys=True):
                raise ValueError(f"the saved stream has another {key} ({state.get(key)!r}); it cannot be resumed here")
        self.next_chunk, self.skip = int(state["next_chunk"]), int(state.get("skip", 0))


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))[:300]
    except Exception:
        return r.text[:300]


def _torch_dataset_base():
    from torch.utils.data import IterableDataset

    return IterableDataset


class StreamingDataset(_torch_dataset_base()):
    """``torch.utils.data.IterableDataset`` of ``(image (1, H, W) float32, codes (4,) long)`` from a
    :class:`GenerationStream` (same arguments). Several DataLoader workers share the stream: each takes every
    ``num_workers``-th chunk."""

    def __init__(self, url: str, mix, **kw):
        self.url, self.mix, self.kw = url, mix, kw
        self.stream = GenerationStream(url, mix, **kw)

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        stream = self.stream
        if info is not None and info.num_workers > 1:
            stream = GenerationStream(self.url, self.mix, **{**self.kw, "start_chunk": self.stream.next_chunk,
                                                            "shard": (info.id, info.num_workers)})
        for s in stream:
            yield torch.from_numpy(s.image)[None], torch.tensor(s.codes, dtype=torch.long)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.stream.load_state_dict(state)


__all__ = ["GenerationStream", "Sample", "StreamingDataset", "schedule"]
