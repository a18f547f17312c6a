"""Ship a trained run: copy its weights, descriptor and sample grid into ``services/generator/weights/``,
measure (or read) its conditional agreement and quality figure, and write its model card
(:mod:`services.generator.cards`); for StyleGAN2 also ``benchmarks/RESULTS-stylegan2.md``.

    python -m services.generator.train.finalize --from $OUT                    # a model folder of an unpacked GPU window
    python -m services.generator.train.finalize --from runs/sg2/export --eval-n 100   # a CPU run's export folder
    python -m services.generator.train.finalize --from $OUT/ddpm --model-id ddpm-cxr64 --bench $OUT/bench_diffusion_gpu.json
    python -m services.generator.train.finalize --from runs/k128/export --model-id stylegan2-kermany128 \
        --data ../shared/data/kermany-pneumonia-224/train --layout folder --views all

Reads from --from (a trainer's export folder): ``ID.safetensors``, ``ID.json``, the training state
``ID.train.safetensors`` (shipped too, so ``--resume-from ID`` works), the sample grid (``ID-samples.png`` or
``ID-grid.png``) and, when present, ``<family>_conditioning.json`` or ``conditioning.json``,
``<family>_quality.json`` or ``quality.json`` (used only when it is a held-out figure of the current format;
an older one is recomputed), and (StyleGAN2) ``bench_stylegan2_gpu.json``, ``bench_stylegan2_f256_gpu.json``.

Data, layout and views default to what the descriptor's ``training`` section records (else the shared NIH
64 px data, layout ``nih``, all views). Conditional agreement and the quality figure use the patient-disjoint
split (``--split-by patient``: train / held-out ``test``, 80/20 by hashed patient id).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import time
from pathlib import Path

from .quality import DEFAULT_DATA, DEFAULT_N, EXTRACTORS, FORMAT, ROOT, quality

WEIGHTS = ROOT / "services" / "generator" / "weights"
RESULTS_STYLEGAN2 = ROOT / "benchmarks" / "RESULTS-stylegan2.md"
SHARED_DATA = DEFAULT_DATA.parent


def _load(p: Path | None):
    return json.loads(p.read_text()) if p and p.exists() else None


def _first(src: Path, *names: str) -> Path | None:
    return next((src / n for n in names if (src / n).exists()), None)


def ship(src: Path, model_id: str, weights_dir: Path) -> dict:
    """Copy the run's weights, training state and sample grid into ``weights_dir`` and write its descriptor
    there (card, samples and alias filled in; the ``training_state`` entry kept); returns the descriptor."""
    desc = json.loads((src / f"{model_id}.json").read_text())
    weights_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / desc["weights"], weights_dir / desc["weights"])
    state = desc.get("training_state")
    if state:
        if not (src / state["file"]).exists():
            raise FileNotFoundError(f"{src / state['file']}: the training state the descriptor lists is missing")
        shutil.copyfile(src / state["file"], weights_dir / state["file"])
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


def _local_data(recorded: str) -> Path | None:
    """The recorded training data folder on this machine: the path itself, or the longest of its trailing parts
    found under the shared data folder (a GPU machine records its own absolute path)."""
    path = Path(recorded)
    if path.is_dir():
        return path
    parts = [q for q in path.parts if q not in (path.anchor, "")]
    for i in range(len(parts)):
        candidate = SHARED_DATA.joinpath(*parts[i:])
        if candidate.is_dir() and (len(parts) - i > 1 or candidate.name != "train"):
            return candidate
    return None


def eval_data(desc: dict, data: str | None, layout: str | None, views: str | None) -> tuple[str, str, object]:
    """(data, layout, views) to evaluate on: the arguments, else what the run's descriptor records, else the
    shared NIH 64 px data / ``nih`` / all views. ``views``: a comma list or "all" (None = all)."""
    tr = desc.get("training") or {}
    layout = layout or tr.get("layout") or "nih"
    if data is None:
        recorded = tr.get("data")
        found = _local_data(recorded) if recorded else None
        if found is not None:
            data = str(found)
        elif layout == "nih":
            data = str(DEFAULT_DATA)
        else:
            raise SystemExit(f"--data is needed: the run was trained on {recorded!r} (layout {layout}), which is "
                             f"not found here nor under {SHARED_DATA}")
    if views is None:
        views = tr.get("views") or "all"
    if isinstance(views, str):
        views = None if views.strip().lower() == "all" else tuple(v.strip() for v in views.split(",") if v.strip())
    elif views is not None:
        views = tuple(views)
    return data, layout, views


def load_shipped(desc: dict, weights_dir: Path, backend: str, device: str):
    """The shipped model loaded from ``weights_dir`` itself (not looked up by id: a registry folder earlier in
    the search order may hold a model with the same id)."""
    from services.common.config import resolve_device
    from services.generator import registry

    weights = weights_dir / desc["weights"]
    if desc.get("sha256") and registry.weights_hash(weights) != desc["sha256"]:
        raise registry.GeneratorError(f"{weights} does not match the sha256 in its descriptor")
    mod, fn = registry.FAMILIES[desc["family"]].split(":")
    return getattr(importlib.import_module(mod), fn)(desc, weights, backend, resolve_device(device))


def results_stylegan2(benches: dict) -> str:
    from services.generator.models.stylegan2.card import throughput_table

    lines = ["# StyleGAN2 generator benchmarks", "",
             "`python benchmarks/bench_generator.py --device cpu|cuda [--arch f256] --json FILE`; ratios are vs eager "
             "fp32 measured in the same run. Anchor (issue 3, H100, config-f 256px, batch 64): eager fp32 ≈ 370 img/s, "
             "fp16 + channels_last + torch.compile ≈ 2200 img/s (5.9×).", ""]
    for title, b in benches.items():
        lines += [f"## {title}", "", throughput_table(b).markdown() if b else f"_{title}: not measured._", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="folder with the run's exported files")
    ap.add_argument("--model-id", default="stylegan2-cxr64")
    ap.add_argument("--data", default=None, help="data root for conditioning / quality (default: the run's "
                    "training data if found, else the shared NIH 64 px data)")
    ap.add_argument("--layout", default=None, help="nih | chexpert | mimic | folder (default: the run's)")
    ap.add_argument("--views", default=None, help="comma-separated views or 'all' (default: the run's)")
    ap.add_argument("--split-by", default="patient", choices=("patient", "recorded"),
                    help="conditioning's train / held-out split (quality always uses the patient split)")
    ap.add_argument("--eval-n", type=int, default=200, help="images per condition if conditioning must be measured")
    ap.add_argument("--eval-epochs", type=int, default=40, help="epochs of the conditioning classifier")
    ap.add_argument("--quality-n", type=int, default=DEFAULT_N, help="images per quality set (default %(default)s)")
    ap.add_argument("--quality-extractors", default=",".join(EXTRACTORS),
                    help="feature extractors of the quality figure (default %(default)s)")
    ap.add_argument("--no-quality", action="store_true", help="do not compute a missing quality figure")
    ap.add_argument("--no-conditioning", action="store_true",
                    help="do not measure a missing conditional agreement (the card says 'not measured'; say why "
                         "in --notes)")
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
    run_desc = json.loads((src / f"{mid}.json").read_text())
    data, layout, views = eval_data(run_desc, a.data, a.layout, a.views)
    desc = ship(src, mid, weights_dir)
    family = desc["family"]
    registry._loaded.clear()  # the shipped files changed under this process
    g = None
    cond = _load(_first(src, f"{family}_conditioning.json", "conditioning.json"))
    if cond is None and not a.no_conditioning:
        from services.metrics.conditioning import evaluate_conditioning

        t0 = time.time()
        g = load_shipped(desc, weights_dir, "eager", a.device)
        cond = evaluate_conditioning(g, data, layout, views, a.eval_n, device=a.device, split_by=a.split_by,
                                     epochs=a.eval_epochs)
        print(f"conditioning measured in {time.time() - t0:.0f}s")
    qual = _load(_first(src, f"{family}_quality.json", "quality.json"))
    if qual is not None and qual.get("format") != FORMAT and not a.no_quality:
        print("the run's quality figure is not a held-out one of the current format: recomputing it")
        qual = None
    if qual is None and not a.no_quality:
        t0 = time.time()
        g = g or load_shipped(desc, weights_dir, "eager", a.device)
        qual = quality(mid, a.quality_n, a.device, data, layout, views, generator=g,
                       extractors=tuple(e.strip() for e in a.quality_extractors.split(",") if e.strip()))
        print(f"quality measured in {time.time() - t0:.0f}s")
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
    return {"descriptor": desc, "conditioning": cond, "quality": qual, "written": [str(p) for p in written]}


if __name__ == "__main__":
    main()
