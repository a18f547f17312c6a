"""score() end to end with a tiny counting extractor: caching, registered references (only the new batch's
features are computed), stored batches, feature files, errors, JSON, HTML report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError
from metrics_fakes import registered_counting_extractor
from services.metrics.extractors.base import ExtractorStamp


CountingExtractor, counting_extractor = registered_counting_extractor("counting", batch_size=8)


def _write_folder(root: Path, n: int, seed: int, blur: float = 0.0, classes=("a", "b")) -> Path:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[:32, :32] / 32.0
        img = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) + 0.15 * rng.random((32, 32))
        if blur:
            img = gaussian_filter(img, blur)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_score_all_metrics_and_cache_reuse(tmp_path, cache):
    from services.metrics.api import score

    real = _write_folder(tmp_path / "real", 60, 0)
    synth = _write_folder(tmp_path / "synth", 60, 1, blur=1.2)
    res = score(real, synth, "all", extractor="counting", bootstrap=20, kid_subset_size=50, kid_subsets=10, cache=cache)
    assert CountingExtractor.calls == 120
    v = res.values()
    assert set(v) >= {"FD_counting", "KID_counting", "precision", "recall", "density", "coverage", "svm_f1_linear",
                      "svm_f1_rbf", "variety_png_bytes_real", "variety_png_bytes_synthetic"}
    assert "FID" not in v  # only inception scores are called FID
    fd = res.get("FD_counting")
    assert fd.extractor == "counting" and fd.ci_low < fd.value < fd.ci_high
    assert res.stamps["counting"]["weights_sha256"] == "counting-v1"
    rows = {r["feature"]: r for r in res.spatial}
    assert rows["brenner"]["real_mean"] > rows["brenner"]["synthetic_mean"]  # blurred synthetic set
    assert res.separability["rbf"]["f1"] > 0.8
    assert res.variety["real"]["a"]["n"] == 30 and set(res.variety["real"]) == {"a", "b", "all"}
    json.loads(res.to_json())  # JSON-able
    assert res.real.classes == {"a": 30, "b": 30} and res.real.computed_images == 60
    # second run: everything from the cache
    res2 = score(real, synth, "all", extractor="counting", bootstrap=20, kid_subset_size=50, kid_subsets=10, cache=cache)
    assert CountingExtractor.calls == 120
    assert res2.values() == pytest.approx(v)
    assert res2.real.computed_images == 0 and res2.synthetic.computed_images == 0


def test_registered_reference_only_new_batch_is_extracted(tmp_path, cache):
    from services.metrics.api import score
    from services.metrics.references import get_reference, list_references, register_reference, unregister_reference

    real = _write_folder(tmp_path / "real", 40, 2)
    ref = register_reference("test-ref", real, extractors=("counting",), cache=cache)
    assert CountingExtractor.calls == 40 and ref.data.n == 40 and ref.path.is_file()
    assert "test-ref" in list_references(cache)
    b1 = _write_folder(tmp_path / "b1", 20, 3)
    b2 = _write_folder(tmp_path / "b2", 25, 4)
    score("test-ref", b1, "fid,ipr", extractor="counting", bootstrap=0, cache=cache)
    assert CountingExtractor.calls == 40 + 20
    r2 = score("test-ref", b2, "fid,ipr", extractor="counting", bootstrap=0, cache=cache)
    assert CountingExtractor.calls == 40 + 20 + 25  # only the new batch
    assert r2.real.computed_images == 0 and r2.synthetic.computed_images == 25
    # the persisted reference is found by a fresh registry (another process) without recomputation
    from services.metrics import references

    references._REGISTRY.clear()
    assert get_reference("test-ref", cache).data.features["counting"].shape == (40, 16)
    score("test-ref", b2, "fid", extractor="counting", bootstrap=0, cache=cache)
    assert CountingExtractor.calls == 85
    unregister_reference("test-ref", cache)
    assert "test-ref" not in list_references(cache)


def test_stored_batch_as_synthetic(tmp_path, cache):
    store_mod = pytest.importorskip("services.common.store")
    from services.common.findings import Condition
    from services.metrics.api import score

    store = store_mod.BatchStore(tmp_path / "store")
    rng = np.random.default_rng(5)
    with store.create("fake-model", "0" * 16, "eager", "png") as w:
        for i in range(12):
            cond = Condition.from_findings(present=["pleural_effusion"]) if i % 2 else Condition.no_finding()
            w.add(rng.random((32, 32)).astype(np.float32), seed=i, condition=cond)
    batch_id = store.list()[0].batch_id
    real = _write_folder(tmp_path / "real", 12, 6)
    res = score(real, batch_id, "fid,variety", extractor="counting", bootstrap=0, store_url=str(tmp_path / "store"), cache=cache)
    assert res.synthetic.kind == "batch" and res.synthetic.n == 12
    assert len(res.synthetic.classes) == 2  # condition keys
    calls = CountingExtractor.calls
    score(real, batch_id, "fid", extractor="counting", bootstrap=0, store_url=str(tmp_path / "store"), cache=cache)
    assert CountingExtractor.calls == calls  # batch features cached by manifest hash
    with pytest.raises(MetricsError, match="no stored batch"):
        score(real, "20990101t000000-000000000000", "fid", extractor="counting", store_url=str(tmp_path / "store"), cache=cache)


def test_feature_files_both_sides(tmp_path):
    from services.metrics.api import score

    rng = np.random.default_rng(7)
    np.save(tmp_path / "r.npy", rng.normal(size=(80, 8)).astype(np.float32))
    np.save(tmp_path / "s.npy", (rng.normal(size=(70, 8)) + 0.5).astype(np.float32))
    res = score(str(tmp_path / "r.npy"), str(tmp_path / "s.npy"), "fid,kid,ipr,prdc", extractor="inception", bootstrap=10,
                kid_subset_size=50, kid_subsets=5, cache=False)
    assert res.get("fid").name == "FID"  # user says these are inception features
    assert "user-supplied" in res.stamps["inception"]["arch"]
    np.save(tmp_path / "bad.npy", rng.normal(size=(70, 9)))
    with pytest.raises(MetricsError, match="feature dimensions differ"):
        score(str(tmp_path / "r.npy"), str(tmp_path / "bad.npy"), "fid", cache=False)
    with pytest.raises(MetricsError, match="need images"):
        score(str(tmp_path / "r.npy"), str(tmp_path / "s.npy"), "spatial", cache=False)


def test_clear_errors(tmp_path, cache):
    from services.metrics.api import score

    real = _write_folder(tmp_path / "real", 10, 8)
    broken = _write_folder(tmp_path / "broken", 4, 9)
    (broken / "a" / "zz_corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MetricsError, match="cannot read image .*zz_corrupt.png"):
        score(real, broken, "fid", extractor="counting", cache=cache)
    one = _write_folder(tmp_path / "one", 1, 10)
    with pytest.raises(MetricsError, match="too few images"):
        score(real, one, "fid", extractor="counting", bootstrap=0, cache=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricsError, match="no images found"):
        score(real, tmp_path / "empty", "fid", extractor="counting", cache=cache)
    with pytest.raises(MetricsError, match="unknown metric"):
        score(real, real, "fid,bogus", extractor="counting", cache=cache)
    with pytest.raises(MetricsError, match="unknown extractor"):
        score(real, real, "fid", extractor="nope", cache=cache)
    with pytest.raises(MetricsError, match="no registered reference"):
        score("no-such-ref", real, "fid", extractor="counting", cache=cache)
    with pytest.raises(MetricsError, match="FID Inception weights not found"):
        score(real, real, "fid", weights=str(tmp_path / "missing.pth"), cache=cache)


def test_html_report_is_self_contained(tmp_path, cache):
    from services.metrics.api import score
    from services.metrics.report import write_html

    real = _write_folder(tmp_path / "real", 40, 11)
    synth = _write_folder(tmp_path / "synth", 40, 12, blur=1.0)
    res = score(real, synth, "all", extractor="counting", bootstrap=10, kid_subset_size=30, kid_subsets=5, cache=cache)
    html = write_html(res, tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # spatial plots, mean images, two sample grids
    assert "FD_counting" in html
    assert "src=\"http" not in html and "<script src" not in html
    for needle in ("Spatial features", "Separability", "Variety", "Samples", "brenner"):
        assert needle in html


def test_cli_score(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from synthrad.cli.score_cmd import command

    real = _write_folder(tmp_path / "real", 30, 13)
    synth = _write_folder(tmp_path / "synth", 30, 14)
    out = tmp_path / "o.json"
    rep = tmp_path / "o.html"
    r = CliRunner().invoke(command, ["--real", str(real), "--synthetic", str(synth), "--metrics", "fid,ipr,spatial",
                                     "--extractor", "counting", "--bootstrap", "5", "--json", str(out),
                                     "--report", str(rep), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "FD_counting" in r.output and out.is_file() and rep.is_file()
    assert json.loads(out.read_text())["scores"][0]["name"] == "FD_counting"
    r = CliRunner().invoke(command, ["--real", str(real), "--synthetic", str(tmp_path / "nothing"), "--quiet"])
    assert r.exit_code != 0 and "not found" in r.output


def test_stamp_keys_and_compatibility():
    from dataclasses import replace

    s1 = ExtractorStamp("x", "arch", 16, weights_sha256="d" * 64, weights_file_sha256="f" * 64, weights_source="file",
                        preprocessing={"size": 299}, dtype="float32")
    s16 = replace(s1, dtype="bfloat16")
    other_prep = replace(s1, preprocessing={"size": 224})
    other_w = replace(s1, weights_sha256="e" * 64)
    assert len({s1.key(), s16.key(), other_prep.key(), other_w.key()}) == 4  # each change is a cache miss
    assert s1.compatible(s16) and not s1.compatible(other_prep) and not s1.compatible(other_w)
    assert ExtractorStamp.from_dict(s1.to_dict()) == s1


def test_in_memory_arrays_any_layout():
    from services.metrics.api import score

    rng = np.random.default_rng(30)
    real = rng.random((20, 32, 32)).astype(np.float32)  # (N, H, W) as generators return
    synth = rng.random((20, 1, 32, 32)).astype(np.float32)  # (N, 1, H, W) channel-first
    res = score(real, synth, "fid", extractor="counting", bootstrap=0, cache=False)
    assert res.synthetic.n == 20 and res.real.kind == "arrays"
    with pytest.raises(MetricsError, match="expected images"):
        score(real, rng.random((4, 5, 6, 7)), "fid", extractor="counting", cache=False)


# ----------------------------------------------------------------------------- typed inputs, registry, summary
def _stored_batch(store_root: Path, n: int = 12, seed: int = 5) -> str:
    from services.common.findings import Condition
    from services.common.store import BatchStore

    store = BatchStore(store_root)
    rng = np.random.default_rng(seed)
    with store.create("fake-model", "0" * 16, "eager", "png") as w:
        for i in range(n):
            w.add(rng.random((32, 32)).astype(np.float32), seed=i, condition=Condition.no_finding())
    return w.batch_id


def test_parse_input_precedence(tmp_path, cache, monkeypatch):
    from services.metrics.inputs import BatchId, FeatureFile, Folder, ReferenceFile, ReferenceSet, parse_input

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ref.npz").write_bytes(b"")
    assert parse_input("x.npy", "real") == FeatureFile(Path("x.npy"))
    assert parse_input("imgs", "synthetic") == Folder(Path("imgs"))
    assert parse_input("ref.npz", "real") == ReferenceFile(Path("ref.npz"))
    assert parse_input("nih-cxr64", "real", cache) == ReferenceSet("nih-cxr64")
    assert parse_input("20990101t000000-000000000000", "synthetic") == BatchId("20990101t000000-000000000000")
    assert parse_input("batch:imgs", "synthetic") == BatchId("imgs")  # explicit: the local folder is not guessed
    assert parse_input("reference:imgs", "real") == ReferenceSet("imgs")
    with pytest.raises(MetricsError, match="no registered reference"):
        parse_input("imgs-missing", "real", cache)


def test_explicit_batch_id_never_reads_a_same_named_folder(tmp_path, cache, monkeypatch):
    from services.metrics.api import score
    from services.metrics.inputs import BatchId, Folder

    bid = _stored_batch(tmp_path / "store")
    real = _write_folder(tmp_path / "real", 12, 6)
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / bid, 20, 7)  # a local folder named like the batch
    kw = dict(extractor="counting", bootstrap=0, cache=cache)
    assert score(Folder(real), bid, "fid", store_url=str(tmp_path / "store"), **kw).synthetic.kind == "folder"  # str: folder wins
    res = score(Folder(real), BatchId(bid, str(tmp_path / "store")), "fid", **kw)
    assert res.synthetic.kind == "batch" and res.synthetic.n == 12
    with pytest.raises(MetricsError, match="no stored batch"):
        score(Folder(real), BatchId("20990101t000000-000000000000", str(tmp_path / "store")), "fid", **kw)


def test_registered_measure_is_scored_and_options_are_checked(tmp_path, cache):
    from services.metrics.api import score
    from services.metrics.registry import FEATURES, Measure, Outcome, parse_metrics, register_measure, unregister_measure
    from services.metrics.result import Score

    def mean_gap(inp):
        gap = float(np.abs(inp.real_features.mean(0) - inp.synthetic_features.mean(0)).sum()) * inp.options["gap_scale"]
        return Outcome([Score(metric="gap", name="mean_gap", value=gap, extractor=inp.extractor)])

    register_measure(Measure("gap", frozenset({FEATURES}), mean_gap, options={"gap_scale": 1.0}))
    try:
        assert parse_metrics("all")[-1] == "gap" and parse_metrics("gap,fid") == ["gap", "fid"]
        real = _write_folder(tmp_path / "real", 10, 20)
        res = score(real, real, "gap,fid", extractor="counting", bootstrap=0, gap_scale=2.0, cache=cache)
        assert [s.name for s in res.scores] == ["FD_counting", "mean_gap"]  # registry order
        assert res.get("gap").value == 0.0 and res.get("gap").extractor == "counting"
        with pytest.raises(TypeError, match="no_such_option"):
            score(real, real, "fid", extractor="counting", no_such_option=1, cache=cache)
    finally:
        unregister_measure("gap")
    with pytest.raises(MetricsError, match="unknown metric"):
        parse_metrics("gap")


def test_naming_rule():
    from services.metrics.naming import score_name

    assert score_name("fid", "inception") == "FID" and score_name("kid", "inception") == "KID"
    assert score_name("fid", "cxr-encoder") == "FD_cxr-encoder" and score_name("kid", "x") == "KID_x"


def test_legacy_stamp_dict_keeps_its_key():
    legacy = {"name": "inception", "arch": "a", "dims": 2048, "weights_sha256": "f" * 64, "weights_digest": "d" * 64,
              "weights_source": "file", "preprocessing": {"size": 299}, "dtype": "float32", "key": "old"}
    st = ExtractorStamp.from_dict(legacy)
    assert st.weights_sha256 == "d" * 64 and st.weights_file_sha256 == "f" * 64
    assert "weights_digest" not in st.to_dict() and ExtractorStamp.from_dict(st.to_dict()) == st
    import hashlib

    # the key as stamps computed it before (weights = tensor digest): cached features and references stay valid
    old_payload = {"name": "inception", "arch": "a", "dims": 2048, "weights": "d" * 64, "preprocessing": {"size": 299},
                   "dtype": "float32"}
    assert st.key() == hashlib.sha256(json.dumps(old_payload, sort_keys=True).encode()).hexdigest()[:24]


def test_replica_returns_the_score_summary_the_gateway_reads(tmp_path):
    from services.metrics.references import register_reference, unregister_reference
    from services.metrics.replica import MetricsReplica

    bid = _stored_batch(tmp_path / "store", n=16)
    register_reference("summary-ref", _write_folder(tmp_path / "real", 16, 21), extractors=("counting",), persist=False)
    try:
        rep = MetricsReplica(str(tmp_path / "store"), device="cpu")
        assert "summary-ref" in rep.references()
        out = rep.score(bid, "summary-ref", ["fid", "kid", "spatial"], "counting")
    finally:
        unregister_reference("summary-ref")
    json.dumps(out)  # the job result is stored as JSON
    assert set(out) == {"batch_id", "reference", "metrics", "extractor", "scores", "n_real", "n_synthetic", "warnings",
                        "seconds", "result"}
    assert out["batch_id"] == bid and out["reference"] == "summary-ref" and out["metrics"] == ["fid", "kid", "spatial"]
    assert out["n_real"] == 16 and out["n_synthetic"] == 16
    ext = out["extractor"]
    assert ext["name"] == "counting" and ext["weights_sha256"] == "counting-v1" and ext["dtype"] == "float32"
    assert ext["preprocessing"] == {"size": 4} and "key" in ext and "weights_digest" not in ext
    fd, kd = out["scores"]
    assert fd["name"] == "FD_counting" and fd["metric"] == "fid" and "std" not in fd and "ci_low" in fd
    assert kd["name"] == "KID_counting" and kd["std"] >= 0 and "ci_low" not in kd
    assert out["result"]["synthetic"]["kind"] == "batch" and out["result"]["spatial"]
