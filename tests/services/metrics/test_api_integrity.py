"""Scoring refuses a damaged stored batch before any feature is extracted (and before cached features of
the batch, computed while it was intact, could stand in for it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics_fakes import registered_counting_extractor
from services.common.findings import Condition
from services.common.store import BatchDamaged, BatchStore
from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError

Counting, counting = registered_counting_extractor("counting-integrity", batch_size=8)


def _setup(tmp_path: Path, fmt: str) -> tuple[BatchStore, str, Path]:
    store = BatchStore(tmp_path / "store")
    rng = np.random.default_rng(3)
    with store.create("fake-model", "0" * 16, "eager", fmt) as w:
        for i in range(10):
            w.add(rng.random((32, 32)).astype(np.float32), seed=i, condition=Condition())
    real = tmp_path / "real"
    real.mkdir()
    for i in range(10):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(real / f"{i:03d}.png")
    return store, w.batch_id, real


def _damage(store: BatchStore, bid: str, how: str) -> str:
    man = store.get(bid)
    path = Path(store.batch_path(bid)) / man.images[-1].file
    if how == "deleted":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return path.name


@pytest.mark.parametrize("fmt,how", [("png", "corrupt"), ("png", "deleted"), ("webdataset", "corrupt")])
def test_damaged_batch_is_refused_before_extraction(tmp_path, fmt, how):
    from services.metrics.api import score

    store, bid, real = _setup(tmp_path, fmt)
    cache = FeatureCache(tmp_path / "cache")
    kw = dict(extractor="counting-integrity", bootstrap=0, store_url=str(store.url), cache=cache)
    assert score(real, bid, "fid", **kw).synthetic.n == 10  # intact: scored, features cached
    name = _damage(store, bid, how)
    Counting.calls = 0
    reason = "missing" if how == "deleted" else "sha256 mismatch"
    with pytest.raises(MetricsError, match=f"{name}: {reason}") as ei:
        score(real, bid, "fid", **kw)
    assert isinstance(ei.value.__cause__, BatchDamaged) and ei.value.__cause__.batch_id == bid
    assert Counting.calls == 0
    with pytest.raises(MetricsError, match=reason):  # the batch given as its folder
        score(real, store.batch_path(bid), "fid", **kw)
    assert Counting.calls == 0


def test_batch_source_verifies_on_open(tmp_path):
    from services.metrics.sources import BatchSource

    store, bid, _ = _setup(tmp_path, "png")
    assert len(BatchSource(bid, store.url)) == 10
    _damage(store, bid, "corrupt")
    with pytest.raises(BatchDamaged, match="sha256 mismatch"):
        BatchSource(bid, store.url)
