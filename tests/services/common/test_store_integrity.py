"""The batch store checks what it reads against the manifest's sha256 values (BatchDamaged otherwise),
lists around damaged manifests, and cleans leftovers of crashed writes on object stores too."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.common.findings import Condition
from services.common.store import MANIFEST, BatchDamaged, BatchNotFound, BatchStore, StoreError

COND = Condition.from_findings(present=["pleural effusion"])


def _write(store: BatchStore, fmt: str = "png", n: int = 4) -> str:
    with store.create("m1", "abc123", "eager", fmt) as w:
        for s in range(n):
            w.add(np.random.default_rng(s).random((16, 16), dtype=np.float32), seed=s, condition=COND)
    return w.batch_id


def _file(store: BatchStore, bid: str, name: str) -> Path:
    return Path(store.batch_path(bid)) / name


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(excinfo, bid: str, file: str, reason: str, root: Path) -> None:
    e = excinfo.value
    assert isinstance(e, StoreError) and e.batch_id == bid
    assert any(f == file and r == reason for f, r in e.problems), e.problems
    assert bid in str(e) and file in str(e) and reason in str(e)
    assert str(root) not in str(e)  # names, never paths


def test_intact_batches_verify_in_every_format(tmp_path):
    store = BatchStore(tmp_path)
    for fmt in ("png", "png16", "dicom", "npz", "webdataset"):
        bid = _write(store, fmt)
        man = store.verify(bid)
        assert man.schema_version == 2 and set(man.files) == set(man.expected_files())
        assert len(list(store.iter_images(bid))) == 4
        assert [name for name, _ in store.iter_files(bid)][-1] == MANIFEST


def test_corrupt_png_is_refused_by_every_reader(tmp_path):
    store = BatchStore(tmp_path)
    bid = _write(store)
    name = store.get(bid).images[2].file
    _flip_byte(_file(store, bid, name))
    with pytest.raises(BatchDamaged) as ei:
        store.read_file(bid, name)
    _damage(ei, bid, name, "sha256 mismatch", tmp_path)
    with pytest.raises(BatchDamaged, match="sha256 mismatch"):
        store.image_bytes(bid, 2)
    assert store.image_bytes(bid, 1)[1][:4] == b"\x89PNG"  # the intact ones still read
    it = store.iter_images(bid)
    assert [next(it)[0].index, next(it)[0].index] == [0, 1]
    with pytest.raises(BatchDamaged, match=name):
        next(it)
    with pytest.raises(BatchDamaged) as ei:
        store.verify(bid)
    _damage(ei, bid, name, "sha256 mismatch", tmp_path)
    assert store.verify(bid, digests=False).batch_id == bid  # presence only: all files are there


def test_swapped_files_are_both_reported(tmp_path):
    store = BatchStore(tmp_path)
    bid = _write(store)
    a, b = (_file(store, bid, r.file) for r in store.get(bid).images[:2])
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(BatchDamaged) as ei:
        store.verify(bid)
    assert sorted(ei.value.problems) == sorted([(a.name, "sha256 mismatch"), (b.name, "sha256 mismatch")])
    assert "and 1 more" in str(ei.value)


def test_deleted_file_is_missing_not_short(tmp_path):
    store = BatchStore(tmp_path)
    bid = _write(store)
    name = store.get(bid).images[3].file
    _file(store, bid, name).unlink()
    with pytest.raises(BatchDamaged) as ei:
        list(store.iter_images(bid))
    _damage(ei, bid, name, "missing", tmp_path)
    with pytest.raises(BatchDamaged, match="missing"):
        store.read_file(bid, name)
    with pytest.raises(BatchDamaged, match="missing"):
        store.verify(bid, digests=False)
    with pytest.raises(BatchDamaged, match="missing"):
        list(store.iter_files(bid))
    with pytest.raises(BatchNotFound):  # a name the manifest never had is still "not found"
        store.read_file(bid, "other.png")


def test_truncated_shard(tmp_path):
    store = BatchStore(tmp_path)
    bid = _write(store, "webdataset")
    shard = _file(store, bid, "shard-000000.tar")
    with tarfile.open(shard) as tar:
        cut = tar.getmember("000003.png").offset_data + 10  # inside the last image
    shard.write_bytes(shard.read_bytes()[:cut])
    for read in (lambda: store.read_file(bid, shard.name), lambda: list(store.iter_images(bid)),
                 lambda: store.verify(bid), lambda: store.image_bytes(bid, 3)):
        with pytest.raises(BatchDamaged) as ei:
            read()
        assert ei.value.file.startswith(shard.name)
        assert str(tmp_path) not in str(ei.value)


def _rewrite_shard(path: Path, change) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for m, data in members:
            data = change(m.name, data)
            if data is None:
                continue
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def test_shard_digest_covers_the_json_members(tmp_path):
    """A changed .json member (same size, valid tar, PNG members intact) is caught by the files table."""
    store = BatchStore(tmp_path)
    bid = _write(store, "webdataset")
    shard = _file(store, bid, "shard-000000.tar")
    _rewrite_shard(shard, lambda name, d: d.replace(b'"seed": 1', b'"seed": 7') if name == "000001.json" else d)
    assert store.image_bytes(bid, 1)[1][:4] == b"\x89PNG"  # one member alone still matches its digest
    with pytest.raises(BatchDamaged) as ei:
        list(store.iter_images(bid))
    _damage(ei, bid, shard.name, "sha256 mismatch", tmp_path)


def _as_schema_1(store: BatchStore, bid: str) -> None:
    path = _file(store, bid, MANIFEST)
    doc = json.loads(path.read_text())
    doc.pop("files")
    doc.pop("created_by", None)
    doc["schema_version"] = 1
    path.write_text(json.dumps(doc))


def test_schema_1_manifests_read_with_per_image_checks(tmp_path):
    store = BatchStore(tmp_path)
    png, wds = _write(store), _write(store, "webdataset")
    _as_schema_1(store, png)
    _as_schema_1(store, wds)
    assert store.get(wds).files == {} and len(list(store.iter_images(wds))) == 4
    assert store.verify(png).count == 4 and store.verify(wds).count == 4
    name = store.get(png).images[0].file
    _flip_byte(_file(store, png, name))
    with pytest.raises(BatchDamaged, match="sha256 mismatch"):
        store.verify(png)
    shard = _file(store, wds, "shard-000000.tar")
    _rewrite_shard(shard, lambda n, d: None if n == "000002.png" else d)
    with pytest.raises(BatchDamaged) as ei:
        list(store.iter_images(wds))
    _damage(ei, wds, "shard-000000.tar/000002.png", "missing", tmp_path)
    with pytest.raises(BatchDamaged, match="000002.png: missing"):
        store.image_bytes(wds, 2)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_corrupt_manifest_never_breaks_listing(tmp_path):
    store = BatchStore(tmp_path)
    good, bad, renamed = _write(store), _write(store), _write(store)
    _file(store, bad, MANIFEST).write_text('{"batch_id": "' + bad + '", "images": [')  # torn write
    other = f"{renamed[:16]}{'f' * 12}"
    shutil.copytree(store.batch_path(renamed), store.batch_path(other))  # a folder with another batch's manifest
    handler = _Records()
    logger = logging.getLogger("synthrad.store")
    logger.addHandler(handler)
    try:
        assert {m.batch_id for m in store.list()} == {good, renamed}
        damaged = {d.batch_id: d.reason for d in store.list_damaged()}
        store.list()
    finally:
        logger.removeHandler(handler)
    assert set(damaged) == {bad, other}
    assert "manifest.json" in damaged[bad] and "unreadable" in damaged[bad]
    assert "not its folder" in damaged[other] and str(tmp_path) not in damaged[other]
    warned = [r for r in handler.records if getattr(r, "batch_id", None) in damaged]
    assert len(warned) == 2  # once per damaged batch, not on every listing
    with pytest.raises(BatchDamaged, match="manifest.json"):
        store.get(bad)
    store.delete(bad)  # a damaged batch can still be deleted
    assert {d.batch_id for d in store.list_damaged()} == {other}


def test_manifest_with_inconsistent_records_is_damaged(tmp_path):
    store = BatchStore(tmp_path)
    bid = _write(store)
    path = _file(store, bid, MANIFEST)
    doc = json.loads(path.read_text())
    doc["images"][1]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(doc))
    with pytest.raises(BatchDamaged, match="image record 1"):
        store.get(bid)
    doc["images"][1]["file"] = doc["images"][0]["file"]
    doc["count"] = 9
    path.write_text(json.dumps(doc))
    assert [d.batch_id for d in store.list_damaged()] == [bid] and store.list() == []


# ---- object stores (fsspec memory://) --------------------------------------------------------------

@pytest.fixture
def mem_store():
    url = f"memory://synthrad-integrity-{uuid.uuid4().hex[:8]}"
    store = BatchStore(url)
    yield store
    store.fs.rm(store.root, recursive=True)


def test_object_store_reads_are_checked(mem_store):
    store = mem_store
    png, wds = _write(store), _write(store, "webdataset")
    name = store.get(png).images[1].file
    path = f"{store.batch_path(png)}/{name}"
    data = bytearray(store.fs.cat_file(path))
    data[-20] ^= 0xFF
    store.fs.pipe_file(path, bytes(data))
    with pytest.raises(BatchDamaged, match=f"{name}: sha256 mismatch"):
        list(store.iter_images(png))
    store.fs.rm(f"{store.batch_path(wds)}/shard-000000.tar")
    with pytest.raises(BatchDamaged, match="shard-000000.tar: missing"):
        store.verify(wds)
    with pytest.raises(BatchDamaged, match="missing"):
        store.image_bytes(wds, 0)
    store.fs.pipe_file(f"{store.batch_path(png)}/{MANIFEST}", b"not json")
    assert [m.batch_id for m in store.list()] == [wds] and [d.batch_id for d in store.list_damaged()] == [png]


def test_object_store_cleanup_removes_unpublished_prefixes(mem_store):
    store = mem_store
    kept = _write(store)
    crashed = store.create("m", "h", "eager")  # an unpublished write (no manifest: never listed)
    crashed.add(np.zeros((8, 8), np.float32), seed=0, condition=COND)
    resumable = store.create("m", "h", "eager")
    resumable.add(np.zeros((8, 8), np.float32), seed=0, condition=COND)
    old = "20200101t000000-0123456789ab"  # a leftover of years ago, its files written just now (a slow writer)
    store.fs.pipe_file(f"{store._path(old)}/000000-s0.png", b"x")
    assert store.cleanup_stale(3600) == 0  # all recently written: maybe still in progress
    time.sleep(0.01)
    assert store.cleanup_stale(0, keep={resumable.batch_id}) == 2
    assert not store.fs.exists(store._path(crashed.batch_id)) and not store.fs.exists(store._path(old))
    assert store.fs.exists(store._path(resumable.batch_id))
    assert [m.batch_id for m in store.list()] == [kept] and store.verify(kept).count == 4


def test_local_cleanup_keeps_a_write_that_is_still_busy(tmp_path):
    store = BatchStore(tmp_path)
    w = store.create("m", "h", "eager", "webdataset")
    w.add(np.zeros((8, 8), np.float32), seed=0, condition=COND)
    staging = next(Path(tmp_path).glob(".tmp-*"))
    old = time.time() - 7200
    os.utime(staging, (old, old))  # the folder looks old, but its open shard was written just now
    assert store.cleanup_stale(3600) == 0 and staging.exists()
    w.abort()
