"""Resumable batch writes: what a crashed write keeps (journaled, intact images), on a folder and an object store."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import services.common.store as store_mod
from services.common.findings import Condition
from services.common.store import JOURNAL, BatchStore


def _img(i: int) -> np.ndarray:
    return np.full((8, 8), i / 20, np.float32)


@pytest.fixture(params=["folder", "memory"])
def store(request, tmp_path):
    return BatchStore(tmp_path / "b" if request.param == "folder" else f"memory://resume-{uuid.uuid4().hex}")


def _crashed_write(store, fmt, n=10, sync_every=3, created_by="key-a"):
    w = store.create("m", "0" * 64, "eager", fmt, {"truncation": 0.7}, created_by=created_by)
    for i in range(n):
        w.add(_img(i), 100 + i, Condition(pleural_effusion="present"))
        if i % sync_every == sync_every - 1:
            w.sync()
    if w._shard_fh is not None:  # noqa: SLF001 - a crash leaves the open shard as it is
        w._shard_fh.close()
    return w


@pytest.mark.parametrize("fmt", ["png", "dicom", "webdataset"])
def test_a_resumed_write_keeps_journaled_images_and_publishes_one_batch(store, fmt, monkeypatch):
    monkeypatch.setattr(store_mod, "SHARD_SIZE", 4)
    w = _crashed_write(store, fmt)
    assert store.list() == []  # nothing of an unfinished write is visible
    again = store.resume(w.batch_id)
    assert again.count == (8 if fmt == "webdataset" else 9)  # journaled (closed shards only for webdataset)
    assert again.params == {"truncation": 0.7} and again.created_by == "key-a"
    for i in range(again.count, 12):
        again.add(_img(i), 100 + i, Condition(pleural_effusion="present"))
    man = again.commit()
    assert man.batch_id == w.batch_id and man.count == 12 and man.created_by == "key-a"
    store.verify(man.batch_id)
    assert [r.seed for r in man.images] == list(range(100, 112))
    px = [img for _, img in store.iter_images(man.batch_id)]
    assert all(np.allclose(px[i], i / 20, atol=1 / 255) for i in range(12))
    names = [e.rsplit("/", 1)[-1] for e in store.fs.ls(store.batch_path(man.batch_id), detail=False)]
    assert not any(n.startswith(".journal") for n in names)  # a published batch carries no journal
    assert [m.batch_id for m in store.list()] == [man.batch_id]


def test_resume_stops_at_the_first_image_that_does_not_match(tmp_path):
    store = BatchStore(tmp_path)
    w = _crashed_write(store, "png", n=9, sync_every=9)
    (tmp_path / w.dir.rsplit("/", 1)[-1] / w.records[4].file).write_bytes(b"torn")  # image 4 was not flushed
    with open(f"{w.dir}/{JOURNAL}", "a") as fh:
        fh.write('{"image": {"index": 9, "fi')  # a torn last line
    again = store.resume(w.batch_id)
    assert again.count == 4
    assert sorted(n for n in store.fs.ls(again.dir, detail=False) if n.endswith(".png"))[-1].endswith("000003-s103.png")


def test_nothing_to_resume(tmp_path):
    store = BatchStore(tmp_path)
    assert store.resume("20261201t000000-0123456789ab") is None
    w = store.create("m", "0" * 64, "eager", "png", {})
    w.add(_img(0), 0, Condition())
    assert store.resume(w.batch_id) is None  # never synced: nothing durable to keep
    man = store.create("m", "0" * 64, "eager", "png", {})
    man.add(_img(0), 0, Condition())
    published = man.commit()
    assert store.resume(published.batch_id) is None


def test_cleanup_keeps_staging_folders_a_job_will_resume(tmp_path):
    store = BatchStore(tmp_path)
    keep = _crashed_write(store, "png")
    drop = _crashed_write(store, "png")
    assert store.cleanup_stale(0.0, keep={keep.batch_id}) == 1
    assert store.resume(keep.batch_id) is not None and store.resume(drop.batch_id) is None
