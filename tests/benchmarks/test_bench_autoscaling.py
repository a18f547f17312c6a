"""benchmarks/bench_autoscaling.py: per-step statistics from raw request records, the SLO rule, the table; and
the locust ramp's shape (the run itself is a benchmark, not a test)."""

import importlib.util
import os
import subprocess
import sys

from repo_paths import ROOT


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_steps_percentiles_errors_replicas_and_the_slo():
    bench = _load("bench_autoscaling", ROOT / "benchmarks" / "bench_autoscaling.py")
    t0 = 1000.0
    records = [{"t": t0 + i * 0.1, "status": 200, "ms": 100 + i} for i in range(100)]  # step 1: 10 s, 100 ok
    records += [{"t": t0 + 10 + i * 0.05, "status": 200 if i % 10 else 503, "ms": 900.0} for i in range(200)]
    timeline = [(t0 + s, 1 if s < 12 else 3) for s in range(0, 20)]
    steps = bench._per_step([(2, 10.0), (8, 10.0)], t0, records, timeline)
    a, b = steps
    assert (a["requests"], a["ok"], a["errors"], a["rps"], a["error_rate"]) == (100, 100, 0, 10.0, 0.0)
    assert a["p50_s"] == round(0.1495, 3) and a["replicas_max"] == 1  # median of 0.100 ... 0.199 s
    assert (b["requests"], b["shed"], b["error_rate"]) == (200, 20, 0.1) and b["rps"] == 18.0
    assert (b["replicas_min"], b["replicas_max"], b["replicas_end"]) == (1, 3, 3)
    assert bench.slo(steps, p99_bound_s=0.5) == a  # the overloaded step breaks the error-rate bound
    assert bench.slo(steps, p99_bound_s=0.1) is None
    assert "| 8 | 10 | 200 | 18.0 |" in bench.table({"max_replicas": 3, "model": "m", "steps": steps})


def test_the_ramp_refuses_a_host_beyond_loopback(tmp_path):
    env = {**os.environ, "SYNTHRAD_LOADTEST_STEPS": "1:1"}
    r = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "autoscale.py"), "--headless",
                        "--host", "http://192.0.2.1:8000", "--only-summary"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "loopback host only" in (r.stdout + r.stderr)
    # (not imported here: importing locust monkey-patches the test process with gevent)
