"""Where job records live: a folder, or any fsspec URL (``s3://bucket/prefix/jobs``) every replica sees.

One JSON object per job (``<job_id>.json``), written whole: on a folder through a temp file + rename, on an
object store as one PUT (S3 readers see the old or the new object, never part of one). Taking over a job is a
*claim*: a marker per (job, attempt) created exclusively — ``O_EXCL`` on a folder, a conditional PUT
(``If-None-Match: *``, fsspec's ``mode="create"``) on an object store — so of the executors that race for a
job exactly one wins. Only storages with an atomic create are accepted: a local folder, S3 (and S3-compatible
servers that honour ``If-None-Match: *`` — MinIO and Ceph RGW do in current releases) and ``memory://`` (one
process); fsspec's generic "create" is an existence check followed by a write, which two executors can both win.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from services.common.logging import get_logger

log = get_logger(__name__)


#: fsspec protocols whose ``pipe_file(mode="create")`` is atomic (s3fs: a conditional PUT)
ATOMIC_CREATE = {"s3", "s3a", "memory"}


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class JobStore:
    """Records (:meth:`put` / :meth:`get` / :meth:`ids` / :meth:`delete`) and exclusive :meth:`claim` markers."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        if _is_url(self.location):
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(self.location)
            protocols = set(self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else [self.fs.protocol])
            if not protocols & ATOMIC_CREATE:
                raise ValueError(f"job records need a storage with an atomic create (a folder, s3://, memory://); "
                                 f"{sorted(protocols)[0]}:// is not supported: set SYNTHRAD_JOBS__URL to a folder "
                                 "every replica shares or to an s3:// URL")
            self.root = root.rstrip("/")
            self.local: Path | None = None
        else:
            self.local = Path(self.location.removeprefix("file://"))
            self.local.mkdir(parents=True, exist_ok=True)
            self.fs, self.root = None, str(self.local)

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ---- records ------------------------------------------------------------------------------
    def put(self, job_id: str, data: bytes) -> None:
        """Store a record whole (raises ``OSError`` when the storage refuses it)."""
        if self.local is None:
            try:
                self.fs.pipe_file(self._key(f"{job_id}.json"), data)
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 - object-store client errors as the OSError callers handle
                raise OSError(f"job store write failed: {type(e).__name__}") from e
            return
        path = self.local / f"{job_id}.json"
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, job_id: str) -> bytes | None:
        """A record's bytes; None when there is none (``OSError`` when the storage does not answer)."""
        try:
            if self.local is None:
                return self.fs.cat_file(self._key(f"{job_id}.json"))
            return (self.local / f"{job_id}.json").read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - object-store client errors as OSError
            raise OSError(f"job store read failed: {type(e).__name__}") from e

    def _names(self) -> list[str]:
        """Every name in the store (records, claim markers, temp files): one fresh listing."""
        if self.local is not None:
            return [p.name for p in self.local.iterdir()]
        try:
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - object-store client errors as OSError
            raise OSError(f"job store listing failed: {type(e).__name__}") from e

    def ids(self) -> list[str]:
        """The job ids stored (records only, not claims or temp files), sorted."""
        return sorted(n[:-5] for n in self._names() if n.startswith("job-") and n.endswith(".json"))

    def delete(self, *job_ids: str) -> None:
        """Remove records and their claim markers (one listing for all of them)."""
        if not job_ids:
            return
        claims = tuple(f".{j}.claim-" for j in job_ids)
        names = [f"{j}.json" for j in job_ids] + [n for n in self._names() if n.startswith(claims)]
        for name in names:
            if self.local is not None:
                (self.local / name).unlink(missing_ok=True)
                continue
            try:
                self.fs.rm_file(self._key(name))
            except FileNotFoundError:
                pass

    # ---- claims -------------------------------------------------------------------------------
    def claim(self, job_id: str, attempt: int, owner: str) -> bool:
        """Create the marker of ``attempt`` of ``job_id`` for ``owner``; False when someone created it first."""
        name = f".{job_id}.claim-{int(attempt)}"
        if self.local is None:
            try:
                self.fs.pipe_file(self._key(name), owner.encode(), mode="create")
            except FileExistsError:  # someone's marker — or ours, when a PUT that succeeded was retried (412)
                try:
                    return self.fs.cat_file(self._key(name)) == owner.encode()
                except FileNotFoundError:
                    return False
            except Exception as e:  # noqa: BLE001 - a 412 some clients report otherwise
                if "PreconditionFailed" in type(e).__name__ or "412" in str(e):
                    return False
                raise
            return True
        try:
            fd = os.open(self.local / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        return True

    def claim_age(self, job_id: str, attempt: int) -> float | None:
        """Seconds since the marker of ``attempt`` was created (None: there is none)."""
        name = f".{job_id}.claim-{int(attempt)}"
        try:
            if self.local is None:
                info = self.fs.info(self._key(name), refresh=True)
                stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
                if stamp is None:
                    return None
                return time.time() - (stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp))
            return time.time() - (self.local / name).stat().st_mtime
        except FileNotFoundError:
            return None

    def describe(self) -> str:
        """The store's kind for logs (never its path or URL: those may name buckets or folders)."""
        return "folder" if self.local is not None else f"{type(self.fs).__name__}"
