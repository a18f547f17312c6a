import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from repo_paths import ROOT

from services.common.findings import Condition
from services.common.store import MANIFEST, BatchNotFound, BatchStore, BatchWriter, InvalidBatchId, StoreError

COND = Condition.from_findings(present=["pleural effusion"], absent=["cardiomegaly"])


def _img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size), dtype=np.float32)


def _write(store: BatchStore, fmt: str = "png", n: int = 3):
    with store.create("m1", "abc123", "eager", fmt, {"steps": 5}) as w:
        for s in range(n):
            w.add(_img(s), seed=s, condition=COND)
    return store.get(w.batch_id)


@pytest.mark.parametrize("fmt,tol", [("png", 0.5 / 255 + 1e-6), ("png16", 0.5 / 65535 + 1e-6), ("webdataset", 0.5 / 255 + 1e-6)])
def test_roundtrip_lists_and_streams(tmp_path, fmt, tol):
    store = BatchStore(tmp_path)
    m = _write(store, fmt)
    assert [b.batch_id for b in store.list()] == [m.batch_id]
    assert m.count == 3 and m.synthetic and m.format == fmt and m.params == {"steps": 5}
    got = list(store.iter_images(m.batch_id))
    for (rec, img), s in zip(got, range(3)):
        assert rec.seed == s and rec.condition == COND
        assert np.abs(img - _img(s)).max() <= tol


def test_every_png_carries_provenance(tmp_path):
    from services.common.codecs.png import decode_png

    store = BatchStore(tmp_path)
    m = _write(store)
    _, data = store.image_bytes(m.batch_id, 1)
    _, meta = decode_png(data)
    prov = meta["provenance"]
    assert prov.synthetic and prov.model_id == "m1" and prov.model_hash == "abc123" and prov.seed == 1
    assert prov.condition == COND and prov.batch_id == m.batch_id
    assert "SYNTHETIC" in meta["Description"]


def test_dicom_batch_numbers_instances_and_leaves_view_empty(tmp_path):
    import io

    import pydicom

    store = BatchStore(tmp_path)
    m = _write(store, "dicom")
    for i in range(3):
        _, data = store.image_bytes(m.batch_id, i)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.InstanceNumber == i + 1
        assert ds.get("ViewPosition", "") == ""


def test_crash_before_manifest_leaves_no_batch(tmp_path, monkeypatch):
    store = BatchStore(tmp_path)
    real_write = BatchWriter._write

    def crashing_write(self, name, data):
        if name == MANIFEST:
            raise OSError("disk gone")
        return real_write(self, name, data)

    monkeypatch.setattr(BatchWriter, "_write", crashing_write)
    with pytest.raises(OSError):
        _write(store)
    assert store.list() == []
    assert list(Path(tmp_path).iterdir()) == []  # the temp folder was removed too


def test_killed_process_leaves_nothing_listed(tmp_path):
    code = textwrap.dedent(f"""
        import os, numpy as np
        from services.common.findings import Condition
        from services.common.store import BatchStore
        w = BatchStore({str(tmp_path)!r}).create("m", "h", "eager", "png")
        for s in range(3):
            w.add(np.zeros((8, 8), np.float32), seed=s, condition=Condition())
        os._exit(9)  # hard crash between image writes and the manifest
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert r.returncode == 9
    store = BatchStore(tmp_path)
    leftovers = [p for p in Path(tmp_path).iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")
    assert store.list() == []
    assert store.cleanup_stale(older_than_s=0) == 1 and not any(Path(tmp_path).iterdir())


@pytest.mark.parametrize("bad", ["../etc", "..", "/etc/passwd", "20261127t015959-1a2b3c4d5e6f/../x", "x" * 30, ""])
def test_traversal_ids_rejected(tmp_path, bad):
    store = BatchStore(tmp_path)
    with pytest.raises(InvalidBatchId):
        store.get(bad)
    with pytest.raises(InvalidBatchId):
        store.delete(bad)


def test_file_names_are_checked_against_manifest(tmp_path):
    store = BatchStore(tmp_path)
    m = _write(store)
    with pytest.raises(InvalidBatchId):
        store.read_file(m.batch_id, "../../secret")
    with pytest.raises(BatchNotFound):
        store.read_file(m.batch_id, "other.png")
    assert store.read_file(m.batch_id, m.images[0].file)[:4] == b"\x89PNG"


def test_delete_and_missing(tmp_path):
    store = BatchStore(tmp_path)
    m = _write(store)
    store.delete(m.batch_id)
    assert store.list() == []
    with pytest.raises(BatchNotFound):
        store.get(m.batch_id)
    with pytest.raises(BatchNotFound):
        store.delete(m.batch_id)


def test_empty_batch_refused(tmp_path):
    store = BatchStore(tmp_path)
    w = store.create("m", "h", "eager")
    with pytest.raises(StoreError, match="empty"):
        w.commit()
    assert store.list() == [] and not any(Path(tmp_path).iterdir())


def test_fsspec_memory_store_manifest_last():
    store = BatchStore("memory://synthrad-test-store")
    m = _write(store, n=2)
    assert [b.batch_id for b in store.list()] == [m.batch_id]
    assert len(list(store.iter_images(m.batch_id))) == 2
    store.delete(m.batch_id)
    assert store.list() == []


def test_webdataset_batch_shards_read_with_iter_shard(tmp_path):
    from services.common.codecs.webdataset import iter_shard

    store = BatchStore(tmp_path / "s")
    m = _write(store, "webdataset", n=3)
    (tmp_path / "shard.tar").write_bytes(store.read_file(m.batch_id, m.images[0].file))
    samples = list(iter_shard(tmp_path / "shard.tar"))
    assert [k for k, _, _ in samples] == ["000000", "000001", "000002"]
    assert samples[2][2]["provenance"]["seed"] == 2 and samples[2][2]["provenance"]["synthetic"] is True
