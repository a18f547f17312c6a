"""Serving benchmark: batch-1 vs dynamic batching, and the gateway's overhead over a direct handle call.

Starts the platform locally (one Ray + Serve, like ``synthrad serve``) and measures, on the same machine in the
same run:

* ``model, in process``   — ``LoadedGenerator.generate`` called directly (no Ray): batch 1 and batch B;
* ``handle, batch-1``     — sequential 1-image requests to the generator deployment's unbatched method;
* ``handle, batched xC``  — C concurrent 1-image requests to the ``@serve.batch`` method (batches fill);
* ``REST, sequential``    — sequential 1-image ``POST /v1/generate`` (NPZ) through the HTTP proxy + gateway;
* ``REST, batched xC``    — C concurrent 1-image REST requests;
* ``gRPC, sequential``    — sequential 1-image ``Generate`` through Serve's gRPC proxy + gateway.

Gateway overhead = REST (or gRPC) sequential latency minus the handle's sequential latency on the same
(batched) method at concurrency 1. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_serving.py                      # shipped default model, CPU
    .venv/bin/python benchmarks/bench_serving.py --device cuda --concurrency 64 --requests 512   # on a GPU
    .venv/bin/python benchmarks/bench_serving.py --tiny               # harness check with a toy generator
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def summary(name: str, lat_s: list[float], wall_s: float, images: int, extra: dict | None = None) -> dict:
    return {
        "scenario": name, "requests": len(lat_s), "images": images,
        "p50_ms": 1000 * pct(lat_s, 0.5), "p95_ms": 1000 * pct(lat_s, 0.95),
        "mean_ms": 1000 * statistics.fmean(lat_s) if lat_s else float("nan"),
        "images_per_s": images / wall_s if wall_s > 0 else float("nan"), "wall_s": wall_s, **(extra or {}),
    }


async def run_concurrent(fn, n: int, concurrency: int) -> tuple[list[float], float, list]:
    """Run ``fn(i)`` n times with ``concurrency`` workers; returns (latencies, wall, results)."""
    lat: list[float] = []
    results: list = []
    it = iter(range(n))

    async def worker():
        for i in it:
            t = time.perf_counter()
            res = await fn(i)
            lat.append(time.perf_counter() - t)
            results.append(res)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model id (default: SYNTHRAD_DEFAULT_MODEL)")
    ap.add_argument("--tiny", action="store_true", help="benchmark the harness with the tests' toy generator")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--device", default=None, help="cpu | cuda")
    ap.add_argument("--requests", type=int, default=48, help="requests per scenario")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent 1-image requests in batched scenarios")
    ap.add_argument("--max-batch", type=int, default=16, help="generator max_batch_size (images)")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0, help="@serve.batch wait timeout")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--json", default=None, help="output JSON (default benchmarks/bench_serving_<device>.json)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.tiny:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "support"), os.environ.get("PYTHONPATH", "")])
        sys.path.insert(0, str(ROOT / "tests" / "support"))
    import grpc
    import httpx
    from ray import serve

    from services.common.config import get_settings
    from services.common.findings import Condition
    from services.gateway.app import APP_NAME, start_local
    from services.generator.chunks import GenChunk
    from services.gateway.stubs import generator_pb2, generator_pb2_grpc

    settings = get_settings()
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(update={
        "generator_max_batch_size": args.max_batch, "generator_batch_wait_s": args.batch_wait_ms / 1000.0})})
    model = "tiny" if args.tiny else (args.model or settings.default_model)
    factory = {"tiny": "serving_fakes:make_tiny"} if args.tiny else None

    # ---- in-process baseline (no Ray) ----------------------------------------------------------------
    if (args.device or settings.resolved_device()) == "cpu":
        import torch

        torch.set_num_threads(1)  # what a Ray replica gets (OMP_NUM_THREADS from its CPU share): same footing
    if args.tiny:
        from serving_fakes import make_tiny

        gen = make_tiny("tiny")
    else:
        from services.generator.registry import load_generator

        gen = load_generator(model, args.backend or settings.backend, args.device or settings.resolved_device())
    cond = Condition(pleural_effusion="present")
    rows: list[dict] = []
    for b in (1, args.max_batch):
        gen.generate([cond] * b, list(range(b)))  # warm-up
        lat = []
        t0 = time.perf_counter()
        n_iter = max(3, args.requests // b)
        for i in range(n_iter):
            t = time.perf_counter()
            gen.generate([cond] * b, [1000 + i * b + j for j in range(b)])
            lat.append(time.perf_counter() - t)
        rows.append(summary(f"model in process, batch {b}", lat, time.perf_counter() - t0, n_iter * b))
    del gen

    # ---- the platform ---------------------------------------------------------------------------------
    t_start = time.perf_counter()
    lp = start_local(settings, models=[model], backend=args.backend, device=args.device, with_metrics=False,
                     http_port=0, grpc_port=0, generator_factory=factory)
    cold_s = time.perf_counter() - t_start
    try:
        handle = serve.get_deployment_handle(f"generator-{model}", app_name=APP_NAME)
        seeds = iter(range(10_000, 10_000_000))

        async def via_handle_unbatched(i):
            return await handle.generate_unbatched.remote(GenChunk([cond], [next(seeds)]))

        async def via_handle_batched(i):
            return await handle.generate.remote(GenChunk([cond], [next(seeds)]))

        async def scenarios():
            out = []
            async with httpx.AsyncClient(base_url=lp.http_url, timeout=300) as http:
                async def via_rest(i):
                    r = await http.post("/v1/generate", json={"model": model, "count": 1, "seed": next(seeds),
                                                              "format": "npz", "condition": {"pleural_effusion": "present"}})
                    r.raise_for_status()
                    return r

                for fn in (via_handle_unbatched, via_handle_batched, via_rest):  # warm-up every path
                    await run_concurrent(fn, args.warmup, 1)
                lat, wall, res = await run_concurrent(via_handle_unbatched, args.requests, 1)
                out.append(summary("handle, batch-1 (unbatched method), sequential", lat, wall, args.requests))
                lat, wall, res = await run_concurrent(via_handle_batched, args.requests, 1)
                out.append(summary("handle, @serve.batch method, sequential", lat, wall, args.requests,
                                   {"mean_batch": statistics.fmean(r.stats.batch_images for r in res)}))
                n = max(args.requests, 4 * args.concurrency)
                lat, wall, res = await run_concurrent(via_handle_batched, n, args.concurrency)
                out.append(summary(f"handle, @serve.batch, {args.concurrency} concurrent", lat, wall, n,
                                   {"mean_batch": statistics.fmean(r.stats.batch_images for r in res)}))
                lat, wall, res = await run_concurrent(via_handle_unbatched, n, args.concurrency)
                out.append(summary(f"handle, batch-1 (unbatched), {args.concurrency} concurrent", lat, wall, n))
                lat, wall, _ = await run_concurrent(via_rest, args.requests, 1)
                out.append(summary("REST /v1/generate, sequential", lat, wall, args.requests))
                lat, wall, _ = await run_concurrent(via_rest, n, args.concurrency)
                out.append(summary(f"REST /v1/generate, {args.concurrency} concurrent", lat, wall, n))
            return out

        rows += asyncio.run(scenarios())

        with grpc.insecure_channel(lp.grpc_target) as ch:
            stub = generator_pb2_grpc.GeneratorServiceStub(ch)
            req = lambda: generator_pb2.GenerateRequest(model_id=model, count=1, seed=next(seeds))  # noqa: E731
            for _ in range(args.warmup):
                stub.Generate(req())
            lat = []
            t0 = time.perf_counter()
            for _ in range(args.requests):
                t = time.perf_counter()
                stub.Generate(req())
                lat.append(time.perf_counter() - t)
            rows.append(summary("gRPC Generate, sequential", lat, time.perf_counter() - t0, args.requests))
        metrics_text = httpx.get(lp.metrics_url).text
    finally:
        lp.shutdown()

    by = {r["scenario"]: r for r in rows}
    handle_seq = by["handle, @serve.batch method, sequential"]["p50_ms"]
    overhead = {
        "rest_minus_handle_p50_ms": by["REST /v1/generate, sequential"]["p50_ms"] - handle_seq,
        "grpc_minus_handle_p50_ms": by["gRPC Generate, sequential"]["p50_ms"] - handle_seq,
    }
    b1 = by["handle, batch-1 (unbatched), %d concurrent" % args.concurrency]["images_per_s"]
    bb = by["handle, @serve.batch, %d concurrent" % args.concurrency]["images_per_s"]
    env = {
        "model": model, "device": args.device or settings.resolved_device(), "backend": args.backend or settings.backend,
        "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "concurrency": args.concurrency,
        "requests": args.requests, "cold_start_s": cold_s, "host": pyplatform.node(), "cpus": os.cpu_count(),
        "python": pyplatform.python_version(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    print(f"\nserving benchmark: {model} on {env['device']} ({env.get('gpu', str(env['cpus']) + ' CPUs')}), "
          f"max_batch {args.max_batch}, wait {args.batch_wait_ms} ms, cold start {cold_s:.1f} s")
    print(f"{'scenario':55s} {'p50 ms':>9s} {'p95 ms':>9s} {'img/s':>9s} {'mean batch':>11s}")
    for r in rows:
        mb = f"{r['mean_batch']:.1f}" if "mean_batch" in r else ""
        print(f"{r['scenario']:55s} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f} {r['images_per_s']:9.1f} {mb:>11s}")
    print(f"\ndynamic batching vs batch-1 at {args.concurrency} concurrent: {bb / b1:.2f}x images/s")
    print(f"gateway overhead (p50): REST +{overhead['rest_minus_handle_p50_ms']:.2f} ms, "
          f"gRPC +{overhead['grpc_minus_handle_p50_ms']:.2f} ms over a direct handle call")
    out = Path(args.json) if args.json else ROOT / "benchmarks" / f"bench_serving_{env['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"env": env, "rows": rows, "overhead": overhead, "batching_speedup": bb / b1,
           "metrics_sample": [l for l in metrics_text.splitlines() if l.startswith("synthrad_generation_batch_size_")]}
    out.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
