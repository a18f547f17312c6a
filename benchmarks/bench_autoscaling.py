"""Autoscaling under a locust step ramp: replicas over time, p50/p95/p99 and error rate per load step, the SLO.

    python benchmarks/bench_autoscaling.py [--steps 1:40,2:40,4:40,8:40,16:40,0:60] [--max-replicas 3]
                                           [--p99-bound-s 2.0] [--json benchmarks/bench_autoscaling_cpu.json]

Starts the platform locally (Ray Serve, loopback only) with the shipped default model and generator autoscaling
from 1 to ``--max-replicas`` (short delays so a bounded run sees both directions), runs
``loadtests/autoscale.py`` in a locust subprocess, samples the generator's running replicas every second from
``serve.status()``, and reports per step: users, requests/s, p50/p95/p99 latency, error rate (shed 429/503
counted apart), and the replicas seen. The **SLO** line is the highest throughput of a step whose p99 stayed
under ``--p99-bound-s`` with an error rate under 0.1 %. The naive baseline is the same ramp on one fixed
replica (``--max-replicas 1``), measured in the same run unless ``--no-baseline``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _replicas(deployment: str) -> int:
    from ray import serve

    try:
        app = serve.status().applications["synthrad"]
        states = app.deployments[deployment].replica_states
        return int(states.get("RUNNING", 0))
    except Exception:
        return -1


def run_ramp(steps: list[tuple[int, float]], max_replicas: int, model: str | None) -> dict:
    from services.common.config import get_settings
    from services.gateway.app import start_local

    base = get_settings()
    serve_opts = {**base.serve.model_dump(), "generator_max_replicas": max_replicas,
                  "generator_target_ongoing_requests": 2.0, "generator_upscale_delay_s": 3.0,
                  "generator_downscale_delay_s": 20.0, "generator_max_queued_requests": 64}
    settings = base.model_copy(update={"serve": base.serve.model_validate(serve_opts)})
    model = model or settings.default_model
    lp = start_local(settings, models=[model], http_port=0, grpc_port=0, with_metrics=False, wait_ready_s=600)
    deployment = f"generator-{model}"
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            timeline.append((time.time(), _replicas(deployment)))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "requests.jsonl"
            env = {**os.environ, "SYNTHRAD_LOADTEST_STEPS": ",".join(f"{u}:{s:g}" for u, s in steps),
                   "SYNTHRAD_LOADTEST_LOG": str(log), "SYNTHRAD_LOADTEST_MODEL": model}
            sampler.start()
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "autoscale.py"),
                            "--headless", "--host", lp.http_url, "--only-summary", "--loglevel", "WARNING"],
                           env=env, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=sum(s for _, s in steps) + 120)
            stop.set()
            sampler.join(5)
            records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    finally:
        stop.set()
        lp.shutdown()
    return {"max_replicas": max_replicas, "model": model, "steps": _per_step(steps, t0, records, timeline),
            "timeline": [(round(t - t0, 1), n) for t, n in timeline]}


def _per_step(steps, t0, records, timeline) -> list[dict]:
    out, start = [], t0
    for users, seconds in steps:
        end = start + seconds
        rs = [r for r in records if start <= r["t"] < end]
        reps = [n for t, n in timeline if start <= t < end and n >= 0]
        ok = [r["ms"] for r in rs if r["status"] == 200]
        shed = sum(1 for r in rs if r["status"] in (429, 503))
        errors = sum(1 for r in rs if r["status"] != 200)
        lat = np.array([r["ms"] for r in rs], float) / 1000.0
        out.append({
            "users": users, "seconds": seconds, "requests": len(rs), "ok": len(ok), "shed": shed, "errors": errors,
            "rps": round(len(ok) / seconds, 2), "error_rate": round(errors / len(rs), 5) if rs else 0.0,
            "p50_s": _q(lat, 50), "p95_s": _q(lat, 95), "p99_s": _q(lat, 99),
            "replicas_min": min(reps) if reps else None, "replicas_max": max(reps) if reps else None,
            "replicas_end": reps[-1] if reps else None})
        start = end
    return out


def _q(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 3) if len(a) else None


def slo(steps: list[dict], p99_bound_s: float) -> dict | None:
    good = [s for s in steps if s["users"] and s["requests"] and s["p99_s"] is not None
            and s["p99_s"] <= p99_bound_s and s["error_rate"] < 0.001]
    return max(good, key=lambda s: s["rps"]) if good else None


def table(run: dict) -> str:
    lines = [f"max_replicas {run['max_replicas']} ({run['model']})",
             "| users | s | requests | req/s ok | p50 s | p95 s | p99 s | errors (shed) | error rate | replicas min-max (end) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in run["steps"]:
        lines.append(f"| {s['users']} | {s['seconds']:g} | {s['requests']} | {s['rps']} | {s['p50_s']} | {s['p95_s']} "
                     f"| {s['p99_s']} | {s['errors']} ({s['shed']}) | {s['error_rate']:.2%} | "
                     f"{s['replicas_min']}-{s['replicas_max']} ({s['replicas_end']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="1:40,2:40,4:40,8:40,16:40,0:60")
    ap.add_argument("--max-replicas", type=int, default=3)
    ap.add_argument("--p99-bound-s", type=float, default=2.0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "bench_autoscaling_cpu.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    steps = [(int(u), float(s)) for u, s in (x.split(":") for x in args.steps.split(","))]
    runs = [run_ramp(steps, args.max_replicas, args.model)]
    if not args.no_baseline:
        runs.append(run_ramp(steps, 1, args.model))
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": pyplatform.platform(),
           "cpus": os.cpu_count(), "p99_bound_s": args.p99_bound_s, "runs": runs,
           "slo": [{"max_replicas": r["max_replicas"], "step": slo(r["steps"], args.p99_bound_s)} for r in runs]}
    for r in runs:
        print(table(r))
        best = slo(r["steps"], args.p99_bound_s)
        print(f"SLO (p99 <= {args.p99_bound_s} s, error rate < 0.1 %): "
              + (f"{best['rps']} req/s at {best['users']} users" if best else "not met at any step") + "\n")
    if len(runs) == 2:
        a, b = (slo(r["steps"], args.p99_bound_s) for r in runs)
        if a and b and b["rps"]:
            print(f"autoscaled vs one fixed replica, SLO throughput: {a['rps'] / b['rps']:.2f}x")
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
