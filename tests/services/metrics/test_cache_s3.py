"""The metrics feature cache and user-registered references on object storage (a real S3 API: moto's server), so
every metrics replica of a cluster shares them: round trips, a fresh cache (another replica) hitting, corrupt
entries as misses, references registered by one process listed and loaded by another, damaged references as a
clear error, and scoring twice through replicas whose cache is in the bucket (the second run all cache hits)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics_fakes import registered_counting_extractor
from repo_paths import ROOT as REPO
from s3_server import s3_bucket
from services.metrics import references
from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError
from services.metrics.references import (
    Reference,
    ReferenceDamaged,
    get_reference,
    list_references,
    register_reference,
    save_reference,
    unregister_reference,
)

pytestmark = pytest.mark.slow

CountingExtractor, counting_extractor = registered_counting_extractor("counting-s3", batch_size=8)


@pytest.fixture(scope="module")
def bucket():
    with s3_bucket() as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_registry():
    references._REGISTRY.clear()
    yield
    references._REGISTRY.clear()


@pytest.fixture(params=["s3", "local"])
def cache_url(request, tmp_path) -> str:
    """A fresh cache location: a prefix in the bucket, or a local folder (the same behaviour on both)."""
    if request.param == "local":
        return str(tmp_path / "cache")
    return f"{request.getfixturevalue('bucket')}/cache-{uuid.uuid4().hex[:8]}"


def _s3(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _write_folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / ("a", "b")[i % 2]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


# ----------------------------------------------------------------------------- the feature cache
def test_features_and_set_data_round_trip_in_the_bucket_and_a_fresh_cache_hits(bucket):
    url = f"{bucket}/rt"
    cache = FeatureCache(url)
    assert not cache.local and cache.root == url and cache.url == url
    feats = np.random.default_rng(0).random((12, 16)).astype(np.float32)
    assert cache.get_features("stamp1", "h1") is None  # nothing yet: a miss
    cache.put_features("stamp1", "h1", feats)
    cache.put_set("h1", {"spatial": np.ones((12, 8)), "labels": np.array(["a"] * 12)})
    fs, root = _s3(url)
    assert fs.exists(f"{root}/features/stamp1/h1.npz") and fs.exists(f"{root}/sets/h1.npz")

    again = FeatureCache(url)  # another replica: a fresh object, the same URL
    got, stats = again.get_features("stamp1", "h1")
    assert got.dtype == np.float32 and np.array_equal(got, feats)
    assert stats.n == 12 and np.allclose(stats.mean, feats.astype(np.float64).mean(0))
    blob = again.get_set("h1")
    assert set(blob) == {"spatial", "labels"} and blob["spatial"].shape == (12, 8)
    assert again.get_features("stamp2", "h1") is None  # another extractor stamp: a miss
    assert FeatureCache(url, enabled=False).get_features("stamp1", "h1") is None


def test_a_corrupt_or_short_entry_in_the_bucket_is_a_miss(bucket):
    url = f"{bucket}/corrupt"
    cache = FeatureCache(url)
    cache.put_features("s", "ok", np.ones((4, 16), np.float32))
    fs, root = _s3(url)
    whole = fs.cat_file(f"{root}/features/s/ok.npz")
    fs.pipe_file(f"{root}/features/s/short.npz", whole[: len(whole) // 2])  # a truncated object
    fs.pipe_file(f"{root}/features/s/junk.npz", b"not an npz at all")
    fs.pipe_file(f"{root}/sets/junk.npz", b"PK\x03\x04 broken")
    fresh = FeatureCache(url)
    assert fresh.get_features("s", "short") is None
    assert fresh.get_features("s", "junk") is None
    assert fresh.get_set("junk") is None
    assert fresh.get_features("s", "ok")[0].shape == (4, 16)
    fresh.put_features("s", "short", np.zeros((3, 16), np.float32))  # recomputed: the entry is replaced whole
    assert fresh.get_features("s", "short")[0].shape == (3, 16)


def test_the_default_cache_follows_the_cache_url_setting(bucket, monkeypatch, tmp_path):
    from services.metrics.cache import default_cache_root

    monkeypatch.setenv("SYNTHRAD_CACHE_URL", f"{bucket}/from-settings")
    assert FeatureCache().url == f"{bucket}/from-settings" and not FeatureCache().local
    assert default_cache_root() == f"{bucket}/from-settings"
    monkeypatch.setenv("SYNTHRAD_CACHE_URL", str(tmp_path / "c"))
    assert FeatureCache().local and FeatureCache().root == tmp_path / "c" and default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("SYNTHRAD_CACHE_URL")
    from services.common.config import get_settings

    assert FeatureCache().root == Path(get_settings().resolved_cache_dir) / "metrics"  # unchanged default


# ----------------------------------------------------------------------------- user references
def test_a_reference_registered_by_one_process_is_listed_and_loaded_by_another(cache_url, tmp_path, bucket):
    cache = FeatureCache(cache_url)
    real = _write_folder(tmp_path / "real", 12, 1)
    ref = register_reference("shared-ref", real, extractors=("counting-s3",), cache=cache)
    assert CountingExtractor.calls == 12 and ref.data.n == 12
    assert ref.path == (cache.root / "references/shared-ref.npz" if cache.local else f"{cache_url}/references/shared-ref.npz")

    # a fresh registry and cache object in this process (the in-process view of another replica)
    references._REGISTRY.clear()
    other = FeatureCache(cache_url)
    assert "shared-ref" in list_references(other)
    got = get_reference("shared-ref", other)
    assert got.data.n == 12 and np.array_equal(got.data.features["counting-s3"], ref.data.features["counting-s3"])
    assert got.data.labels == ref.data.labels and set(got.data.means) == set(ref.data.means)

    # another OS process pointing at the same URL (its own registry, its own s3fs listing cache)
    env = dict(os.environ, FSSPEC_S3_ENDPOINT_URL=_endpoint(), FSSPEC_S3_KEY="testing", FSSPEC_S3_SECRET="testing")
    code = ("import json, sys; from services.metrics.cache import FeatureCache; "
            "from services.metrics.references import get_reference, list_references; "
            "c = FeatureCache(sys.argv[1]); r = get_reference('shared-ref', c); "
            "print(json.dumps({'names': list_references(c), 'n': r.data.n, "
            "'sum': float(r.data.features['counting-s3'].astype('float64').sum())}))")
    out = subprocess.run([sys.executable, "-c", code, cache_url], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "shared-ref" in seen["names"] and seen["n"] == 12
    assert seen["sum"] == pytest.approx(float(ref.data.features["counting-s3"].astype(np.float64).sum()))

    unregister_reference("shared-ref", cache)
    assert "shared-ref" not in list_references(FeatureCache(cache_url))


def _endpoint() -> str:
    import fsspec

    return fsspec.config.conf["s3"]["endpoint_url"]


def test_a_reference_replaced_or_removed_by_another_process_is_noticed(cache_url):
    cache = FeatureCache(cache_url)
    feats = np.random.default_rng(2).random((10, 16)).astype(np.float32)
    register_reference("moving", feats, extractors=("counting-s3",), cache=cache)
    assert get_reference("moving", cache).data.n == 10  # held in memory

    # another replica registers the same name with other data (written straight to the shared location)
    from services.metrics.sets import features_set

    newer = features_set(np.ones((7, 16), np.float32), "newer", "counting-s3")
    save_reference(Reference(name="moving", data=newer), cache.location("references/moving.npz"))
    assert get_reference("moving", cache).data.n == 7

    # … and then removes it
    assert cache.remove("references/moving.npz")
    assert "moving" not in list_references(cache)
    with pytest.raises(MetricsError, match="no registered reference named 'moving'"):
        get_reference("moving", cache)


def _damage(cache: FeatureCache, rel: str, how: str) -> None:
    raw = cache.read_bytes(rel)
    if how == "truncated":
        bad = raw[: len(raw) * 2 // 3]
    elif how == "bytes":
        mid = len(raw) // 2
        bad = raw[:mid] + bytes(64) + raw[mid + 64 :]
    else:  # "content": a well-formed npz whose features changed but whose recorded sha256 did not
        with np.load(io.BytesIO(raw)) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["features__counting-s3"] = arrays["features__counting-s3"] + 1.0
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        bad = buf.getvalue()
        assert zipfile.is_zipfile(io.BytesIO(bad))
    cache.write_bytes(rel, bad)


@pytest.mark.parametrize("how", ["truncated", "bytes", "content"])
def test_a_damaged_reference_is_a_clear_error_naming_it(cache_url, how):
    cache = FeatureCache(cache_url)
    register_reference("fragile", np.random.default_rng(3).random((20, 16)).astype(np.float32),
                       extractors=("counting-s3",), cache=cache)
    _damage(cache, "references/fragile.npz", how)
    for fresh in (False, True):  # the process that held it (sees the change), and a fresh one
        if fresh:
            references._REGISTRY.clear()
        with pytest.raises(ReferenceDamaged, match="reference 'fragile' is damaged") as e:
            get_reference("fragile", FeatureCache(cache_url))
        assert e.value.name == "fragile" and isinstance(e.value, MetricsError)
        if how == "content":
            assert "sha256 mismatch" in str(e.value)
    assert "fragile" in list_references(cache)  # still listed: it can be removed or registered again
    register_reference("fragile", np.zeros((5, 16), np.float32), extractors=("counting-s3",), cache=cache)
    assert get_reference("fragile", FeatureCache(cache_url)).data.n == 5


def test_a_reference_file_given_by_url_loads_and_is_checked(bucket):
    from services.metrics.references import load_reference_file
    from services.metrics.sets import features_set

    url = f"{bucket}/files/r.npz"
    assert save_reference(Reference("r", features_set(np.ones((6, 16), np.float32), "x", "counting-s3")), url) == url
    assert load_reference_file(url).data.n == 6
    fs, path = _s3(url)
    fs.pipe_file(path, b"garbage")
    with pytest.raises(MetricsError, match="cannot read reference file"):
        load_reference_file(url)


# ----------------------------------------------------------------------------- scoring through replicas
def test_scoring_twice_through_replicas_sharing_an_s3_cache_gives_the_same_numbers_from_the_cache(bucket, tmp_path):
    from services.common.findings import Condition
    from services.common.store import BatchStore
    from services.metrics.replica import MetricsReplica

    cache_url = f"{bucket}/scoring-{uuid.uuid4().hex[:8]}"
    store = BatchStore(tmp_path / "store")
    rng = np.random.default_rng(7)
    with store.create("fake-model", "0" * 16, "eager", "png") as w:
        for i in range(16):
            w.add(rng.random((16, 16)).astype(np.float32), seed=i, condition=Condition.no_finding())
    register_reference("s3-scoring-ref", _write_folder(tmp_path / "real", 16, 5), extractors=("counting-s3",),
                       cache=FeatureCache(cache_url))
    assert CountingExtractor.calls == 16
    references._REGISTRY.clear()  # the replicas below know the reference only from the bucket

    first = MetricsReplica(store.url, device="cpu", cache_url=cache_url)
    assert first.cache.url == cache_url and not first.cache.local
    assert "s3-scoring-ref" in first.references()
    s1 = first.score_summary(w.batch_id, "s3-scoring-ref", ["fid", "kid"], "counting-s3")
    assert CountingExtractor.calls == 16 + 16 and s1.result.synthetic.computed_images == 16
    assert s1.result.real.computed_images == 0  # the reference's features came with it
    fs, root = _s3(cache_url)
    assert fs.ls(f"{root}/features", detail=False)  # the batch's features went to the bucket

    references._REGISTRY.clear()
    second = MetricsReplica(store.url, None, "cpu", cache_url)  # another replica (positional arguments)
    s2 = second.score_summary(w.batch_id, "s3-scoring-ref", ["fid", "kid"], "counting-s3")
    assert CountingExtractor.calls == 32  # nothing extracted: every feature from the shared cache
    assert s2.result.synthetic.computed_images == 0 and s2.result.real.computed_images == 0
    assert [(s.name, s.value) for s in s2.scores] == [(s.name, s.value) for s in s1.scores]
    assert s2.n_real == s1.n_real == 16 and s2.n_synthetic == 16


def test_the_deployment_passes_its_cache_url_to_the_replica():
    import inspect

    from services.metrics.deployment import MetricsDeployment

    cls = MetricsDeployment.func_or_class
    assert list(inspect.signature(cls.__init__).parameters) == ["self", "store_url", "inception_weights", "device",
                                                                "cache_url"]
    dep = cls.__new__(cls)
    cls.__init__(dep, "/tmp/store-unused", None, "cpu", "s3://some-bucket/cache")
    assert dep.core.cache_url == "s3://some-bucket/cache" and dep.core.store_url == "/tmp/store-unused"
