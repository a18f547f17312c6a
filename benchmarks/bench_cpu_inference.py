"""CPU inference through a stored batch job: today's path vs the new default, measured in the same run.

Each variant is a generator of a shipped model (``stylegan2-cxr64``, ``ddpm-cxr64``) loaded with a backend, a
micro-batch size (``settings.runtime.*_micro_batch``) and a thread count, served in process
(:class:`~services.generator.replica.GeneratorReplica` + :class:`~services.generator.generation.LocalGenerators`,
chunks of ``serve.generator_max_batch_size``) and driven by
:class:`~services.generator.generation.GenerationService`, which stores every image (PNG) in a batch in a
temporary folder and commits it: the images/s are those of a stored batch job, generation + encoding +
journal + commit. Model loading (and the one-off ONNX export, into a temporary cache) is timed apart.

Variants run in interleaved rounds (every variant once per round, short rounds) so that a shared CPU's load
changes hit all of them alike; img/s = all images / all seconds of a variant. Ratios are vs ``today``
(eager, StyleGAN2 micro-batch 1 / DDPM micro-batch 4, the process's torch threads) from the same run: of the
totals, and the median over rounds of the ratio to today's run in the same round (robust to load drift).
Defaults: StyleGAN2 4 rounds x 32 images, DDPM 4 rounds x 4 images (16 per variant); ``--sweep`` adds
reference rows (about 20 min on the 2-core VM; without it about 6).

    python benchmarks/bench_cpu_inference.py --json benchmarks/bench_cpu_inference.json
    python benchmarks/bench_cpu_inference.py --sweep   # + micro-batch / thread reference rows

Besides speed the run checks what the defaults promise, on the real models: each variant's pixels vs today's
(max |delta| on [0, 1] floats and on the stored 8-bit pixels), the default variant's pixels equal in every
round, and image ``k`` generated alone equal to the same image inside the batch. It also reports the work per
image (GFLOP of a forward pass; UNet calls and rows per DDPM image) and the machine's sgemm GFLOP/s, which
bound what any backend can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.common.config import Limits, get_settings  # noqa: E402
from services.common.findings import Condition  # noqa: E402
from services.common.store import BatchStore  # noqa: E402
from services.generator import registry  # noqa: E402
from services.generator.base import GenerationParams  # noqa: E402
from services.generator.generation import GenerationRequest, GenerationService, LocalGenerators  # noqa: E402
from services.generator.replica import GeneratorReplica  # noqa: E402

CONDITION = Condition.from_findings(["pleural_effusion"], ["enlarged_cardiac_silhouette"])
MODELS = {"stylegan2": "stylegan2-cxr64", "ddpm": "ddpm-cxr64"}
PARAMS = {"stylegan2": GenerationParams(), "ddpm": GenerationParams(sampler="dpmpp", steps=20)}  # guidance: default


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # as asked ("auto" = the default)
    micro_batch: int | None  # None: the family's default
    threads: int | None = None  # None: the process's torch threads (ORT follows them unless ort_threads is set)
    note: str = ""


def variants(family: str, sweep: bool) -> list[Variant]:
    today_mb = 1 if family == "stylegan2" else 4
    out = [Variant("today", "eager", today_mb, note="eager, one image per pass" if family == "stylegan2"
                   else "eager, micro-batch 4"),
           Variant("default", "auto", None, note="the new default on CPU")]
    out.append(Variant("eager-1thread", "eager", today_mb, 1, "today's path on 1 torch thread (Serve replicas' "
                                                                "setting)"))
    if sweep:
        sizes = (1, 8, 16) if family == "stylegan2" else (8,)
        out += [Variant(f"onnx-mb{m}", "onnx", m, note="micro-batch sweep") for m in sizes]
        out.append(Variant("onnx-1thread", "onnx", None, 1, "the default on 1 thread"))
        if family == "stylegan2":
            out.append(Variant("eager-default-mb", "eager", None, note="eager with the default micro-batch"))
    return out


@contextlib.contextmanager
def runtime_env(family: str, v: Variant):
    """The variant's settings while its generator loads: micro-batch and ORT threads (env -> settings)."""
    keys = {f"SYNTHRAD_RUNTIME__{family.upper()}_MICRO_BATCH": str(v.micro_batch or 0)}
    if v.threads:
        keys["SYNTHRAD_RUNTIME__ORT_THREADS"] = str(v.threads)
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, val in old.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val
        get_settings.cache_clear()


@contextlib.contextmanager
def torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Capture:
    """Wraps a generator's ``generate`` to keep its float outputs by seed (no extra compute)."""

    def __init__(self, gen):
        self.gen, self.inner, self.by_seed = gen, gen.generate, {}

    def __call__(self, conditions, seeds, params=None, prompts=None, **kw):
        out = self.inner(conditions, seeds, params, prompts, **kw)
        for s, img in zip(seeds, out):
            self.by_seed[int(s)] = img
        return out


def load(family: str, v: Variant):
    desc, weights = registry.resolve(MODELS[family])
    mod, fn = registry.FAMILIES[desc["family"]].split(":")
    with runtime_env(family, v), torch_threads(v.threads):
        t0 = time.perf_counter()
        gen = getattr(importlib.import_module(mod), fn)(desc, weights, v.backend, "cpu")
        load_s = time.perf_counter() - t0
    gen.generate = Capture(gen)
    return gen, load_s


async def stored_batch(gen, n: int, seed: int, params: GenerationParams, folder: Path) -> tuple[float, str, BatchStore]:
    replica = GeneratorReplica(gen.model_id, generator=gen)  # chunks of serve.generator_max_batch_size
    svc = GenerationService(LocalGenerators({gen.model_id: replica}), Limits(), gen.model_id)
    store = BatchStore(folder)
    plan = await svc.plan(GenerationRequest(model=gen.model_id, condition=CONDITION, count=n, seed=seed,
                                            params=params), n, "the benchmark")
    t0 = time.perf_counter()
    writer = await svc.open_batch(plan, store, "png")
    man = await svc.store(plan, writer)
    return time.perf_counter() - t0, man.batch_id, store


def stored_pixels(store: BatchStore, batch_id: str) -> np.ndarray:
    return np.stack([np.round(img * 255.0).astype(np.int16) for _, img in store.iter_images(batch_id)])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sgemm_gflops(threads: int, n: int = 1024, reps: int = 10) -> float:
    with torch_threads(threads):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        return reps * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9


def forward_gflops(family: str, gen) -> float:
    """GFLOP of one image's forward pass (StyleGAN2) or one UNet row (DDPM), counted on the eager module."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        if family == "stylegan2":
            gen.runner.module(*gen._inputs([CONDITION], [0], 1.0))
            return fc.get_total_flops() / 1e9
        r = gen.resolution
        gen.denoise.module(torch.zeros(1, 1, r, r), torch.tensor([500.0]), torch.tensor([CONDITION.codes()]))
        return fc.get_total_flops() / 1e9


def run_family(family: str, n: int, rounds: int, sweep: bool, tmp: Path, alone_index: int) -> dict:
    params = PARAMS[family]
    vs = variants(family, sweep)
    gens, rows = {}, {}
    for v in vs:
        gen, load_s = load(family, v)
        gens[v.name] = gen
        rows[v.name] = {**asdict(v), "backend_resolved": gen.backend, "micro_batch_resolved": gen.micro_batch,
                        "threads_resolved": v.threads or torch.get_num_threads(), "load_s": load_s,
                        "precision": getattr(gen, "precision", "fp32"), "seconds": [], "images": 0}
        if hasattr(gen, "unet_calls"):
            rows[v.name]["unet_calls_start"] = gen.unet_calls
    out = {"model": MODELS[family], "images_per_round": n, "rounds": rounds,
           "params": gens["today"].resolved_params(params),
           "gflop_per_forward": forward_gflops(family, gens["today"])}
    batches: dict[str, list[tuple[str, BatchStore]]] = {v.name: [] for v in vs}
    for r in range(rounds):
        for v in vs:
            with torch_threads(v.threads):
                dt, bid, store = asyncio.run(stored_batch(gens[v.name], n, 1000 * r, params,
                                                          tmp / f"{family}-{v.name}-{r}"))
            rows[v.name]["seconds"].append(dt)
            rows[v.name]["images"] += n
            batches[v.name].append((bid, store))
            print(f"  {family} round {r + 1}/{rounds} {v.name:>16}: {n / dt:8.3f} img/s", flush=True)
    today = rows["today"]
    base_px = [stored_pixels(s, b) for b, s in batches["today"]]
    for v in vs:
        row = rows[v.name]
        row["images_per_s"] = row["images"] / sum(row["seconds"])
        row["round_images_per_s"] = [n / s for s in row["seconds"]]
        row["vs_today"] = row["images_per_s"] / (today["images"] / sum(today["seconds"]))
        # per round, against today's run of the same round (next to it in time): robust to the load drifting
        row["vs_today_median_round"] = float(np.median([t / s for s, t in zip(row["seconds"], today["seconds"])]))
        px = [stored_pixels(s, b) for b, s in batches[v.name]]
        d8 = np.concatenate([np.abs(a - b).ravel() for a, b in zip(px, base_px)])
        cap, cap0 = gens[v.name].generate.by_seed, gens["today"].generate.by_seed
        row["max_abs_vs_today_float"] = float(max(np.abs(cap[s] - cap0[s]).max() for s in cap0))
        row["max_abs_vs_today_uint8"] = int(d8.max())
        row["frac_uint8_differing_vs_today"] = float((d8 > 0).mean())
        if "unet_calls_start" in row:
            calls = gens[v.name].unet_calls - row.pop("unet_calls_start")
            row["unet_calls_per_image"] = calls / row["images"]
            row["unet_rows_per_image"] = calls * gens[v.name].micro_batch * (2 if out["params"]["guidance"] != 1
                                                                             else 1) / row["images"]
    # determinism of the default on the real model: the same seeds give the same pixels in every round (the
    # rounds use different seeds, so round 1 is repeated once), and image k alone equals image k in the batch
    d = gens["default"]
    first = sorted(d.generate.by_seed)[:min(n, d.micro_batch)]  # one micro-batch is enough (DDPM is slow)
    again = d.generate.inner([CONDITION] * len(first), first, params)
    out["default_repeat_bit_identical"] = bool(all(np.array_equal(again[i], d.generate.by_seed[s])
                                                   for i, s in enumerate(first)))
    k = sorted(d.generate.by_seed)[min(alone_index, n - 1)]
    alone = d.generate.inner([CONDITION], [k], params)[0]
    out["default_alone_equals_in_batch"] = bool(np.array_equal(alone, d.generate.by_seed[k]))
    out["rows"] = [rows[v.name] for v in vs]
    return out


def table(fam: dict) -> str:
    head = ("| variant | backend | micro-batch | threads | img/s | vs today | vs today, median of rounds | "
            "max abs d vs today (float / 8-bit) | load s |\n|---|---|---:|---:|---:|---:|---:|---|---:|")
    lines = [head]
    for r in fam["rows"]:
        lines.append(f"| {r['name']} | {r['backend_resolved']} | {r['micro_batch_resolved']} | {r['threads_resolved']} "
                     f"| {r['images_per_s']:.3f} | {r['vs_today']:.2f}x | {r['vs_today_median_round']:.2f}x "
                     f"| {r['max_abs_vs_today_float']:.1e} / {r['max_abs_vs_today_uint8']} | {r['load_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="stylegan2,ddpm")
    ap.add_argument("--stylegan2-images", type=int, default=32, help="images per variant per round")
    ap.add_argument("--ddpm-images", type=int, default=4, help="images per variant per round")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (StyleGAN2)")
    ap.add_argument("--ddpm-rounds", type=int, default=4, help="interleaved rounds (DDPM)")
    ap.add_argument("--sweep", action="store_true", help="add micro-batch / thread reference rows")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    args = ap.parse_args(argv)

    res: dict = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
                 "cpu": cpu_name(), "cores": os.cpu_count(), "note": args.note,
                 "torch_threads": torch.get_num_threads(), "families": {}}
    try:
        import onnxruntime

        res["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        res["onnxruntime"] = None
    res["sgemm_gflops_start"] = {t: sgemm_gflops(t) for t in (1, 2)}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-inference-") as tmp:
        os.environ["SYNTHRAD_CACHE_DIR"] = str(Path(tmp) / "cache")  # the ONNX export is timed, not reused
        get_settings.cache_clear()
        for fam in args.families.split(","):
            n = args.stylegan2_images if fam == "stylegan2" else args.ddpm_images
            rounds = args.rounds if fam == "stylegan2" else args.ddpm_rounds
            print(f"{fam}: {n} images x {rounds} round(s) per variant", flush=True)
            res["families"][fam] = run_family(fam, n, rounds, args.sweep, Path(tmp), alone_index=5)
    res["sgemm_gflops_end"] = {t: sgemm_gflops(t) for t in (1, 2)}
    for fam, r in res["families"].items():
        print(f"\n### {r['model']} ({fam}), {r['images_per_round']} images x {r['rounds']} round(s), params "
              f"{r['params']}; {r['gflop_per_forward']:.2f} GFLOP per {'image' if fam == 'stylegan2' else 'UNet row'}")
        print(table(r))
        print(f"default: repeat bit-identical {r['default_repeat_bit_identical']}, "
              f"alone == in batch {r['default_alone_equals_in_batch']}")
    print(f"\nsgemm GFLOP/s (1 / 2 threads): start {res['sgemm_gflops_start'][1]:.1f} / "
          f"{res['sgemm_gflops_start'][2]:.1f}, end {res['sgemm_gflops_end'][1]:.1f} / {res['sgemm_gflops_end'][2]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
