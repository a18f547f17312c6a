"""Python client of the synthrad REST API, for training pipelines.

    from synthrad.client import SynthradClient

    client = SynthradClient("http://127.0.0.1:8000")            # api_key=... when the server has keys
    batch = client.create_batch(condition={"pleural_effusion": "present"}, count=256, seed=7)  # waits, tqdm bar
    for image, record in client.iter_images(batch):              # torch float32 (1, H, W) in [0, 1]
        ...
    client.write_webdataset(batch, "shards/effusion-%06d.tar")   # WebDataset shards: <key>.png + <key>.json
    dataset = client.torch_dataset(batch)                        # a torch IterableDataset over the batch
    stream = client.stream_dataset({"pleural effusion": 0.5, "no pleural effusion": 0.5})  # fresh, endless

Images travel as stored (PNG / DICOM / NPZ / WebDataset shards, all carrying the synthetic provenance) in one
streamed tar download, decoded as they arrive. Errors of the API raise :class:`SynthradError` with the
server's message (``.status``: HTTP status).

Every download is checked against the batch's manifest: each file's sha256 (and each WebDataset member's),
no file missing, none unexpected or twice, and the archive's own ``manifest.json`` the same as the API's.
A short stream (the server stops it when a stored file turns out missing or damaged; a dropped
connection), a missing, extra or mismatching file raises :class:`BatchIntegrityError`: ``download`` then
keeps nothing, and the image iterators stop with it (images already yielded were checked before decoding).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np

__all__ = ["SynthradClient", "SynthradError", "JobFailed", "BatchIntegrityError"]


class SynthradError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class JobFailed(SynthradError):
    """A batch or scoring job that failed: ``job`` is its record (``error`` says why)."""

    def __init__(self, job: dict):
        what = {"batch": "batch job", "score": "scoring job"}.get(job.get("kind"), "job")
        super().__init__(f"{what} {job.get('job_id')} failed: {job.get('error')}")
        self.job = job


class BatchIntegrityError(SynthradError):
    """A downloaded batch that does not match its manifest.

    The stream ended early (the server aborts it when a stored file is missing or damaged; or the connection
    dropped), a file or WebDataset member is missing, an unexpected or duplicate one arrived, or bytes differ
    from the manifest's sha256. ``batch_id`` and ``file`` (when one is to blame) say where."""

    def __init__(self, batch_id: str, message: str, file: str | None = None):
        super().__init__(f"batch {batch_id}: {message}")
        self.batch_id, self.file = batch_id, file


_MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class _ArchiveCheck:
    """Checks the files of one batch archive against the batch's manifest (as the API returned it)."""

    def __init__(self, man: dict):
        self.man, self.bid = man, man["batch_id"]
        table = man.get("files") or {}
        self.digest: dict[str, str | None] = {}  # file -> sha256 (None: a schema-1 shard, members checked)
        self.records: dict[str, list[dict]] = {}
        for rec in man["images"]:
            self.records.setdefault(rec["file"], []).append(rec)
            self.digest.setdefault(rec["file"], table.get(rec["file"]) or (None if rec.get("member") else rec["sha256"]))
        for name, d in table.items():
            self.digest.setdefault(name, d)
        self.seen: set[str] = set()

    def fail(self, message: str, file: str | None = None) -> "BatchIntegrityError":
        return BatchIntegrityError(self.bid, message, file)

    def name_of(self, raw: str, is_file: bool) -> str:
        prefix, _, name = raw.partition("/")
        if prefix != self.bid or not is_file or (name not in self.digest and name != _MANIFEST):
            raise self.fail(f"unexpected archive member {raw!r} (not a file of the batch's manifest)", raw)
        if name in self.seen:
            raise self.fail(f"{name} arrived twice", name)
        return name

    def needs_bytes(self, name: str) -> bool:
        return name == _MANIFEST or self.digest.get(name) is None

    def accept(self, name: str, sha256: str, data: bytes | None) -> None:
        """One complete file: its digest (or, for the manifest, its content) must match."""
        if name == _MANIFEST:
            self._check_manifest(data)
        else:
            want = self.digest[name]
            if want is not None and sha256 != want:
                raise self.fail(f"{name}: sha256 mismatch", name)
            if want is None:
                self.shard_members(name, data)
        self.seen.add(name)

    def shard_members(self, name: str, data: bytes) -> dict[str, bytes]:
        """{member: bytes} of a WebDataset shard, each member checked against its image record."""
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as shard:
                members = {m.name: shard.extractfile(m).read() for m in shard.getmembers() if m.isfile()}
        except tarfile.TarError as e:
            raise self.fail(f"{name}: unreadable shard ({e})", name) from None
        for rec in self.records.get(name, []):
            got = members.get(rec["member"])
            if got is None:
                raise self.fail(f"{name}/{rec['member']}: missing from the shard", name)
            if hashlib.sha256(got).hexdigest() != rec["sha256"]:
                raise self.fail(f"{name}/{rec['member']}: sha256 mismatch", name)
        return members

    def _check_manifest(self, data: bytes) -> None:
        try:
            got = json.loads(data)
            same = got["batch_id"] == self.bid and got["count"] == self.man["count"] and [
                (r["file"], r.get("member"), r["sha256"]) for r in got["images"]
            ] == [(r["file"], r.get("member"), r["sha256"]) for r in self.man["images"]]
            same = same and (got.get("files") or {}) == (self.man.get("files") or {})
        except (ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise self.fail("the archive's manifest.json differs from the batch's manifest", _MANIFEST)

    def finish(self) -> None:
        missing = [n for n in [*self.digest, _MANIFEST] if n not in self.seen]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise self.fail(f"the download ended without {', '.join(missing[:3])}{more} (incomplete archive)",
                            missing[0])

    # ---- readers ---------------------------------------------------------------------------------------
    def tar_files(self, chunks: Iterator[bytes], keep: bool) -> Iterator[tuple[str, bytes | None]]:
        """(name, bytes or None) of each checked file of a streamed tar; ``finish`` once the stream ends."""
        try:
            with tarfile.open(fileobj=_StreamReader(chunks), mode="r|") as tar:
                for member in tar:
                    name = self.name_of(member.name, member.isfile())
                    sha, data = _hash_read(tar.extractfile(member), keep or self.needs_bytes(name))
                    self.accept(name, sha, data)
                    yield name, data
        except tarfile.TarError as e:
            raise self.fail(f"the download is not a complete tar archive ({e}){self._progress()}", self._next()) from None
        except BatchIntegrityError as e:
            if e.file is not None:
                raise
            raise self.fail(f"{str(e).split(': ', 1)[-1]}{self._progress()}", self._next()) from e
        self.finish()

    def _next(self) -> str | None:
        return next((n for n in [*self.digest, _MANIFEST] if n not in self.seen), None)

    def _progress(self) -> str:
        return f"; {len(self.seen)} of {len(self.digest) + 1} files arrived intact, {self._next()} did not"

    def zip_file(self, path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = self.name_of(info.filename, not info.is_dir())
                    with zf.open(info) as fh:
                        sha, data = _hash_read(fh, self.needs_bytes(name))
                    self.accept(name, sha, data)
        except (zipfile.BadZipFile, EOFError) as e:
            raise self.fail(f"the download is not a complete zip archive ({e})") from None
        self.finish()


def _hash_read(fh, keep: bool) -> tuple[str, bytes | None]:
    h, parts = hashlib.sha256(), []
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        if keep:
            parts.append(chunk)
    return h.hexdigest(), b"".join(parts) if keep else None


def _guarded(chunks: Iterator[bytes], batch_id: str) -> Iterator[bytes]:
    """The response body; a connection that ends early (no terminating chunk) is a BatchIntegrityError."""
    try:
        yield from chunks
    except httpx.TransportError as e:
        raise BatchIntegrityError(batch_id, f"the download ended early ({type(e).__name__}: {e})") from e


class _StreamReader(io.RawIOBase):
    """File-like view of an iterator of byte chunks (for ``tarfile`` stream mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _batch_id(batch: str | dict) -> str:
    return batch["batch_id"] if isinstance(batch, dict) else str(batch)


class SynthradClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 120.0,
                 http: httpx.Client | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.http.headers.update(headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "SynthradClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------------
    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                detail, kind = body.get("detail", r.text), body.get("error")
            except Exception:
                detail, kind = r.text, None
            parts = r.request.url.path.split("/")
            if kind == "batch_damaged" and len(parts) > 3 and parts[2] == "batches":
                raise BatchIntegrityError(parts[3], f"the server refused it: {detail}")
            raise SynthradError(f"{r.request.method} {r.request.url.path}: {r.status_code} {detail}", r.status_code)
        return r

    def _get(self, path: str, **kw) -> Any:
        return self._check(self.http.get(path, **kw)).json()

    def _post(self, path: str, body: dict) -> Any:
        return self._check(self.http.post(path, json=body)).json()

    @staticmethod
    def _gen_body(condition, prompt, count, seed, model, params, fmt) -> dict:
        body: dict[str, Any] = {"count": int(count), "seed": int(seed), "format": fmt}
        if model:
            body["model"] = model
        if condition is not None:
            body["condition"] = condition if isinstance(condition, dict) else condition.to_json_dict()
        if prompt:
            body["prompt"] = prompt
        if params:
            body["params"] = dict(params)
        return body

    # ---- models & inline generation ----------------------------------------------------------------
    def models(self) -> list[dict]:
        return self._get("/v1/models")

    def generate(self, condition: dict | None = None, prompt: str | None = None, count: int = 1, seed: int = 0,
                 model: str | None = None, params: dict | None = None) -> np.ndarray:
        """Small synchronous request: float32 (N, H, W) in [0, 1] (at most the server's inline limit)."""
        body = self._gen_body(condition, prompt, count, seed, model, params, "npz")
        r = self._check(self.http.post("/v1/generate", json=body))
        with np.load(io.BytesIO(r.content)) as z:
            return z["images"]

    # ---- batches -----------------------------------------------------------------------------------
    def request_batch(self, condition: dict | None = None, prompt: str | None = None, count: int = 16,
                      seed: int = 0, model: str | None = None, format: str = "png",
                      params: dict | None = None) -> dict:
        """Start a stored batch job; returns the job (poll with :meth:`job` or :meth:`wait`)."""
        return self._post("/v1/batches", self._gen_body(condition, prompt, count, seed, model, params, format))

    def job(self, job_id: str) -> dict:
        return self._get(f"/v1/jobs/{job_id}")

    def wait(self, job: str | dict, progress: bool = True, poll_s: float = 0.5, timeout: float | None = None) -> dict:
        """Wait for a job with a tqdm progress bar; returns the finished job or raises :class:`JobFailed`."""
        job_id = job["job_id"] if isinstance(job, dict) else job
        bar = None
        deadline = None if timeout is None else time.time() + timeout
        try:
            while True:
                j = self.job(job_id)
                if progress:
                    if bar is None:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=j["total"] or None, unit="img", desc=f"{j['kind']} {job_id}")
                    bar.update(j["done"] - bar.n)
                if j["state"] == "succeeded":
                    return j
                if j["state"] == "failed":
                    raise JobFailed(j)
                if deadline is not None and time.time() > deadline:
                    raise TimeoutError(f"job {job_id} still {j['state']} ({j['done']}/{j['total']})")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()

    def create_batch(self, condition: dict | None = None, prompt: str | None = None, count: int = 16, seed: int = 0,
                     model: str | None = None, format: str = "png", params: dict | None = None,
                     progress: bool = True) -> dict:
        """Request a batch, wait for it (progress bar) and return its manifest."""
        job = self.wait(self.request_batch(condition, prompt, count, seed, model, format, params), progress=progress)
        return self.batch(job["batch_id"])

    def batches(self) -> list[dict]:
        return self._get("/v1/batches")

    def batch(self, batch: str | dict) -> dict:
        return self._get(f"/v1/batches/{_batch_id(batch)}")

    def delete(self, batch: str | dict) -> None:
        self._check(self.http.delete(f"/v1/batches/{_batch_id(batch)}"))

    @contextmanager
    def _archive(self, batch_id: str, archive: str) -> Iterator[Iterator[bytes]]:
        with self.http.stream("GET", f"/v1/batches/{batch_id}/download", params={"archive": archive}) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            yield _guarded(r.iter_bytes(), batch_id)

    def download(self, batch: str | dict, dest: str | Path, archive: str = "tar") -> Path:
        """Stream the batch archive to ``dest`` (a folder, or a file path ending in .tar/.zip).

        Every file is checked against the manifest; on any problem nothing is left at ``dest`` and
        :class:`BatchIntegrityError` is raised."""
        man = self.batch(batch)
        bid = man["batch_id"]
        check = _ArchiveCheck(man)
        dest = Path(dest)
        if dest.suffix not in (".tar", ".zip"):
            dest.mkdir(parents=True, exist_ok=True)
            dest = dest / f"{bid}.{archive}"
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._archive(bid, archive) as chunks, open(tmp, "wb") as fh:
                def tee() -> Iterator[bytes]:
                    for chunk in chunks:
                        fh.write(chunk)
                        yield chunk

                body = tee()
                if archive == "tar":
                    for _ in check.tar_files(body, keep=False):
                        pass
                for _ in body:  # the rest (zip: everything; tar: what follows the last member)
                    pass
            if archive == "zip":
                check.zip_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        return dest

    def iter_arrays(self, batch: str | dict) -> Iterator[tuple[np.ndarray, dict]]:
        """Yield ``(float32 (H, W) in [0, 1], image record)`` in batch order, decoded from one streamed tar.

        Each file is checked against the manifest before it is decoded; a short, incomplete or mismatching
        download raises :class:`BatchIntegrityError` (after the images that arrived intact)."""
        from services.common.codecs import decode_image

        man = self.batch(batch)
        check = _ArchiveCheck(man)
        with self._archive(man["batch_id"], "tar") as chunks:
            for name, data in check.tar_files(chunks, keep=True):
                recs = check.records.get(name, [])
                if recs and recs[0].get("member"):  # a webdataset shard: several images inside
                    members = check.shard_members(name, data)
                    for rec in recs:
                        img, _ = decode_image(members[rec["member"]], rec["member"])
                        yield img, rec
                elif recs:
                    img, _ = decode_image(data, name)
                    yield img, recs[0]

    def iter_images(self, batch: str | dict) -> Iterator[tuple[Any, dict]]:
        """Yield ``(torch.FloatTensor (1, H, W) in [0, 1], image record)`` — ready for a training loop."""
        import torch

        for img, rec in self.iter_arrays(batch):
            yield torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], rec

    def torch_dataset(self, batch: str | dict):
        """A ``torch.utils.data.IterableDataset`` of ``(image (1,H,W), condition codes (4,) long)``."""
        import torch
        from torch.utils.data import IterableDataset

        from services.common.findings import Condition

        client, bid = self, _batch_id(batch)

        class _BatchDataset(IterableDataset):
            def __iter__(self):
                for img, rec in client.iter_images(bid):
                    yield img, torch.tensor(Condition(**rec["condition"]).codes(), dtype=torch.long)

        return _BatchDataset()

    def stream_dataset(self, mix, **kw):
        """A :class:`synthrad.stream.StreamingDataset` of freshly generated, labelled images for a mix of
        conditions (e.g. ``{"pleural effusion": 0.5, "no pleural effusion": 0.5}``) from this server: retries on
        429/503 and dropped connections, backpressure, resumable (see :mod:`synthrad.stream`)."""
        from .stream import StreamingDataset

        key = self.http.headers.get("X-API-Key")
        return StreamingDataset(str(self.http.base_url), mix, api_key=key, **kw)

    def write_webdataset(self, batch: str | dict, pattern: str | Path, max_count: int = 10_000) -> list[Path]:
        """Write the batch as WebDataset tar shards (``pattern`` like ``out/shard-%06d.tar``).

        Each sample: ``<key>.png`` (8-bit, provenance in PNG text chunks) + ``<key>.json`` (seed, condition,
        condition codes, prompt, batch id, provenance). Returns the shard paths.
        """
        from services.common.codecs.webdataset import ShardWriter
        from services.common.findings import Condition
        from services.common.provenance import Provenance

        man = self.batch(batch)
        Path(str(pattern)).parent.mkdir(parents=True, exist_ok=True)
        with ShardWriter(pattern, max_count=max_count) as writer:
            for img, rec in self.iter_arrays(man):
                cond = Condition(**rec["condition"])
                prov = Provenance(model_id=man["model_id"], model_hash=man["model_hash"], seed=rec["seed"],
                                  condition=cond, prompt=rec.get("prompt"), backend=man["backend"],
                                  params=man.get("params") or {}, batch_id=man["batch_id"])
                writer.write(f"{man['batch_id']}_{rec['index']:06d}", img, meta={
                    "seed": rec["seed"], "condition": cond.to_json_dict(), "codes": cond.codes(),
                    "prompt": rec.get("prompt"), "batch_id": man["batch_id"], "index": rec["index"],
                }, provenance=prov)
        return list(writer.shards)

    # ---- scoring -----------------------------------------------------------------------------------
    def references(self) -> list[str]:
        return self._get("/v1/references")

    def score(self, batch: str | dict, reference: str | None = None, metrics: list[str] | tuple | None = None,
              extractor: str | None = None, wait: bool = True, progress: bool = False) -> dict:
        """Score a stored batch against a registered reference (default: the server's default_reference, e.g.
        nih-cxr64) with ``metrics`` (default: fid) and ``extractor`` (default: inception); returns the scoring
        job's result (with ``wait=False`` the job: pass it to :meth:`score_result` later). A failed scoring job
        raises :class:`JobFailed` with the server's reason."""
        body = {"batch_id": _batch_id(batch), "reference": reference, "extractor": extractor,
                "metrics": list(metrics) if metrics is not None else None}
        job = self._post("/v1/scores", {k: v for k, v in body.items() if v is not None})
        if not wait:
            return job
        self.wait(job, progress=progress)
        return self.score_result(job)

    def score_result(self, job: str | dict) -> dict:
        """The result of a finished scoring job; :class:`JobFailed` when it failed, :class:`SynthradError`
        (status 409) while it still runs."""
        job_id = job["job_id"] if isinstance(job, dict) else job
        res = self._get(f"/v1/scores/{job_id}")  # a failed job is a 200 with state "failed" and its error
        if res["state"] == "failed":
            raise JobFailed(res)
        return res["result"]

    # ---- health ------------------------------------------------------------------------------------
    def ready(self) -> bool:
        r = self.http.get("/v1/readyz")
        return r.status_code == 200 and bool(r.json().get("ready"))
