"""Ship a trained run: copy its weights, descriptor and sample grid into ``services/generator/weights/``,
measure (or read) its conditional agreement and quality figure, and write its model card
(:mod:`services.generator.cards`); for StyleGAN2 also ``benchmarks/RESULTS-stylegan2.md``.

    python -m services.generator.train.finalize --from $OUT                    # what scripts/gpu/stylegan2.sh wrote
    python -m services.generator.train.finalize --from runs/sg2/export --eval-n 100   # a CPU run's export folder
    python -m services.generator.train.finalize --from $OUT/ddpm --model-id ddpm-cxr64 --bench $OUT/bench_diffusion_gpu.json

Reads from --from: ``ID.safetensors``, ``ID.json``, the sample grid (``ID-samples.png`` or ``ID-grid.png``) and,
when present, ``<family>_conditioning.json`` or ``conditioning.json``, ``<family>_quality.json`` or
``quality.json``, and (StyleGAN2) ``bench_stylegan2_gpu.json``, ``bench_stylegan2_f256_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .quality import DEFAULT_DATA, ROOT, quality

WEIGHTS = ROOT / "services" / "generator" / "weights"
RESULTS_STYLEGAN2 = ROOT / "benchmarks" / "RESULTS-stylegan2.md"


def _load(p: Path | None):
    return json.loads(p.read_text()) if p and p.exists() else None


def _first(src: Path, *names: str) -> Path | None:
    return next((src / n for n in names if (src / n).exists()), None)


def ship(src: Path, model_id: str, weights_dir: Path) -> dict:
    """Copy the run's weights + sample grid into ``weights_dir`` and write its descriptor there (card, samples
    and alias filled in); returns the descriptor."""
    desc = json.loads((src / f"{model_id}.json").read_text())
    weights_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / desc["weights"], weights_dir / desc["weights"])
    grid = _first(src, desc.get("samples") or f"{model_id}-samples.png", f"{model_id}-grid.png")
    if grid is not None:
        shutil.copyfile(grid, weights_dir / grid.name)
        desc["samples"] = grid.name
    desc["card"] = f"{model_id}.md"
    if not desc.get("aliases") and model_id == f"{desc['family']}-cxr64":
        desc["aliases"] = [desc["family"]]
    if desc.get("training", {}).get("data"):
        desc["training"]["data"] = Path(desc["training"]["data"]).name
    (weights_dir / f"{model_id}.json").write_text(json.dumps(desc, indent=2) + "\n")
    return desc


def results_stylegan2(benches: dict) -> str:
    from services.generator.models.stylegan2.card import throughput_table

    lines = ["# StyleGAN2 generator benchmarks", "",
             "`python benchmarks/bench_generator.py --device cpu|cuda [--arch f256] --json FILE`; ratios are vs eager "
             "fp32 measured in the same run. Anchor (issue 3, H100, config-f 256px, batch 64): eager fp32 ≈ 370 img/s, "
             "fp16 + channels_last + torch.compile ≈ 2200 img/s (5.9×).", ""]
    for title, b in benches.items():
        lines += [f"## {title}", "", throughput_table(b).markdown() if b else f"_{title}: not measured._", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="folder with the run's exported files")
    ap.add_argument("--model-id", default="stylegan2-cxr64")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="NIH 64 px root (conditioning / quality)")
    ap.add_argument("--eval-n", type=int, default=200, help="images per condition if conditioning must be measured")
    ap.add_argument("--quality-n", type=int, default=600)
    ap.add_argument("--no-quality", action="store_true", help="do not compute a missing quality figure")
    ap.add_argument("--bench", action="append", default=[], metavar="[TITLE=]FILE", help="more benchmark JSON")
    ap.add_argument("--cpu-bench", default=None, help="StyleGAN2 CPU benchmark JSON (bench_generator.py)")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--weights-dir", default=str(WEIGHTS), help="where the model is shipped (default: %(default)s)")
    ap.add_argument("--results", default=str(RESULTS_STYLEGAN2),
                    help="StyleGAN2 benchmark summary to write (default: %(default)s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    import torch

    from services.generator import cards, registry

    if a.threads:
        torch.set_num_threads(a.threads)
    src, mid, weights_dir = Path(a.src), a.model_id, Path(a.weights_dir)
    desc = ship(src, mid, weights_dir)
    family = desc["family"]
    registry._loaded.clear()  # the shipped files changed under this process
    cond = _load(_first(src, f"{family}_conditioning.json", "conditioning.json"))
    if cond is None:
        from services.metrics.conditioning import evaluate_conditioning

        t0 = time.time()
        g = registry.load_generator(mid, "eager", a.device)
        cond = evaluate_conditioning(g, a.data, "nih", ("PA", "AP"), a.eval_n, device=a.device)
        print(f"conditioning measured in {time.time() - t0:.0f}s")
    qual = _load(_first(src, f"{family}_quality.json", "quality.json"))
    if qual is None and not a.no_quality:
        qual = quality(mid, a.quality_n, a.device, a.data)
    benches: dict = {}
    if family == "stylegan2":
        from services.generator.models.stylegan2.card import GPU_BENCHES

        benches = {title: _load(src / name) for title, name in GPU_BENCHES.items()}
        benches["CPU (this machine)"] = _load(Path(a.cpu_bench)) if a.cpu_bench else None
    for spec in a.bench:
        title, _, path = spec.rpartition("=")
        benches[title] = _load(Path(path))
    card = cards.describe(desc, conditioning=cond, quality=qual, benchmarks=benches, samples=desc.get("samples"),
                          notes=a.notes)
    (weights_dir / f"{mid}.md").write_text(cards.render(card))
    written = [weights_dir / f"{mid}.md"]
    if family == "stylegan2":
        Path(a.results).write_text(results_stylegan2(benches))
        written.append(Path(a.results))
    print(json.dumps({"conditioning": cond, "quality": qual}, indent=2, default=str)[:4000])
    print("wrote " + " and ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
