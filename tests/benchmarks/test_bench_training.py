"""benchmarks/bench_training.py: a smoke run with tiny nets (16 px, one step) writes both settings and ratios."""

import importlib.util
import json

import torch
from repo_paths import ROOT


def _load():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "benchmarks" / "bench_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_training_tiny_writes_both_settings_and_ratios(tmp_path):
    bench = _load()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    result = bench.main(["--device", "cpu", "--tiny", "--models", "stylegan2-64,ddpm-64", "--steps", "1",
                         "--warmup", "0", "--batch", "2", "--images", "8", "--threads", "1", "--json", str(out)])
    assert torch.get_num_threads() == threads  # --threads is restored afterwards
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for key in ("date", "torch", "cpu_count", "device_name"):
        assert saved["machine"][key] is not None
    for model in ("stylegan2-64", "ddpm-64"):
        rows = {r["setting"]: r for r in saved["rows"] if r["model"] == model}
        assert set(rows) == {"today", "new"}
        assert rows["today"]["sync_every_step"] and not rows["new"]["sync_every_step"]
        assert rows["today"]["acceleration"] == {"amp": "fp32", "channels_last": False, "compile": False,
                                                 "fused_adam": False}
        for r in rows.values():
            assert r["resolution"] == 16 and r["batch"] == 2 and r["img_per_s"] > 0 and r["loss_finite"]
        assert rows["today"]["ratio_vs_today"] == 1.0
        assert rows["new"]["ratio_vs_today"] == rows["new"]["img_per_s"] / rows["today"]["img_per_s"]
        assert saved["ratios"][model]["new"] > 0
    assert "target" not in saved  # the H200 target line is for CUDA runs only
