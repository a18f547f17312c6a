"""Ship a trained StyleGAN2 run: copy weights + descriptor + sample grid into services/generator/weights/,
measure (or read) conditional agreement and a quality figure vs held-out real images, and write the model
card ``stylegan2-cxr64.md`` and ``benchmarks/RESULTS-stylegan2.md``.

    python scripts/gpu/stylegan2_finalize.py --from $OUT          # files written by scripts/gpu/stylegan2.sh
    python scripts/gpu/stylegan2_finalize.py --from runs/sg2/export --eval-n 100   # a CPU run's export folder

Reads from --from: stylegan2-cxr64.{safetensors,json}, stylegan2-cxr64-samples.png and, when present,
stylegan2_conditioning.json, bench_stylegan2_gpu.json, bench_stylegan2_f256_gpu.json, and a CPU benchmark
JSON given with --cpu-bench.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MID = "stylegan2-cxr64"
WEIGHTS = ROOT / "services" / "generator" / "weights"
DATA = ROOT.parent / "shared" / "data" / "nih-chestxray14-64"


def _load(p: Path):
    return json.loads(p.read_text()) if p and p.exists() else None


def quality(n: int, device: str, data: Path = DATA) -> dict | None:
    """FID (Inception) and FD on the CXR encoder of generated images vs the NIH valid reference, with real
    train images vs the same reference as the floor."""
    try:
        import numpy as np

        from services.common.findings import Condition
        from services.generator.evaluate_conditioning import load_real
        from services.generator.registry import load_generator
        from services.metrics.api import score
    except Exception as e:  # pragma: no cover
        print(f"quality: metrics unavailable ({e})")
        return None
    xtr, ctr = load_real(str(data), "nih", ("PA", "AP"), "train")
    g = load_generator(MID, "eager", device)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ctr), n)  # conditions drawn from the real label distribution
    conds = [Condition.from_codes(ctr[i]) for i in idx]
    fake = g.generate(conds, list(range(10_000_000, 10_000_000 + n)))
    out = {"n_generated": n, "reference": "nih-cxr64-valid"}
    for extractor in ("inception", "cxr-encoder"):
        try:
            r_fake = score("nih-cxr64-valid", fake, ("fid", "kid"), extractor=extractor, device=device,
                           kid_subset_size=min(500, n), cache=False).model_dump()
            r_real = score("nih-cxr64-valid", xtr, ("fid", "kid"), extractor=extractor, device=device,
                           kid_subset_size=min(500, len(xtr)), cache=False).model_dump()
            out[extractor] = {"generated": r_fake.get("scores"), "real_train": r_real.get("scores")}
        except Exception as e:
            out[extractor] = {"error": repr(e)[:300]}
    return out


def _fmt_scores(s) -> str:
    if not s:
        return "n/a"
    if isinstance(s, dict) and "error" in s:
        return f"error: {s['error']}"
    try:
        parts = []
        for item in (s if isinstance(s, list) else [s]):
            parts.append(f"{item.get('name')} = {item.get('value'):.4g}")
        return ", ".join(parts)
    except Exception:
        return json.dumps(s)[:300]


def bench_table(b: dict | None, title: str) -> str:
    if not b:
        return f"_{title}: not measured._\n"
    from importlib import util

    spec = util.spec_from_file_location("bench_generator", ROOT / "benchmarks" / "bench_generator.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.table(b["results"], b["meta"]) + "\n"


def card(desc: dict, cond: dict | None, qual: dict | None, benches: dict) -> str:
    from services.generator.evaluate_conditioning import format_table

    t = desc.get("training", {})
    short = (t.get("kimg") or 0) < 100
    lines = [
        f"# {MID} — conditional StyleGAN2, 64×64 chest X-rays",
        "",
    ] + ([f"> **Short training**: {t.get('kimg')} kimg ({t.get('device', '?')}). The images are coarse chest "
          "radiographs; a longer run (`scripts/gpu/stylegan2.sh` with a larger budget) improves them.", ""]
         if short else []) + [
        "**Synthetic images only.** Every image this model produces is marked as synthetic (PNG text chunk / DICOM "
        "ImageComments / manifest). Not for diagnosis.",
        "",
        f"![samples]({desc.get('samples', MID + '-samples.png')})",
        "",
        "Rows: no finding; atelectasis; lung opacity; pleural effusion; enlarged cardiac silhouette (each *present* "
        "with the other three *absent*); unconditional. Columns: seeds 0–7 (psi = 1).",
        "",
        "## Model",
        f"- Architecture: StyleGAN2 (skip generator, residual discriminator with minibatch-stddev, projection "
        f"conditioning), pure torch ops; {desc.get('params_G', 0) / 1e6:.2f} M generator parameters; "
        f"config `{json.dumps(desc.get('config', {}))}`.",
        "- Condition: 4 findings × {absent, present, unspecified} one-hot → learned embedding (sum of one vector per "
        "finding state) concatenated with z in the mapping network. Training replaced each finding's state by "
        f"*unspecified* with probability {t.get('p_uncond')}, so unspecified findings follow the data distribution.",
        "- Truncation: `truncation` psi per request (default 1.0 = none) toward the **per-condition mean w** "
        "(2048 fixed z, cached per condition), not the global w_avg.",
        "- Determinism: image i is drawn from its own seed (z, then every per-layer noise map); on CPU each "
        "image is computed alone, so pixels are bit-identical whatever else is in the request.",
        "",
        "## Data",
        f"- NIH ChestX-ray14, 64×64 subset at `{t.get('data')}`: split `{t.get('split')}`, views {t.get('views')}, "
        f"{t.get('num_images')} images (PA and AP both used: the subset has only 386 PA training images).",
        "- Label mapping: atelectasis ← Atelectasis; pleural_effusion ← Effusion; enlarged_cardiac_silhouette ← "
        "Cardiomegaly; **lung_opacity ← Infiltration | Consolidation | Pneumonia**. We chose this NIH stand-in over "
        "the Kermany pneumonia set because the Kermany images are paediatric (ages 1–5), a different anatomy, scanner "
        "population and image processing; mixing them would teach the model \"child\" instead of \"opacity\". The NIH "
        "labels are adult, same domain, and co-occur with the other findings as in practice; they are NLP-mined "
        "labels and noisy.",
        "- No horizontal flips in augmentation (anatomy is lateralised).",
        "",
        "## Training",
        f"- {t.get('steps')} steps, {t.get('kimg')} kimg at batch {t.get('batch')}, "
        f"{(t.get('train_seconds') or 0) / 60:.1f} min on {t.get('device')} (torch {t.get('torch')}).",
        f"- Non-saturating logistic loss, lazy R1 every 16 steps (gamma {t.get('gamma'):.4g}), EMA generator "
        f"(half-life {t.get('ema_kimg')} kimg), style mixing {t.get('style_mixing')}, Adam lr {t.get('lr_g')} "
        f"betas (0, 0.99), ADA-style augmentation (translation, cutout, brightness, contrast; final p = "
        f"{t.get('aug_p_final')}).",
        f"- Command: `synthrad train stylegan2 --data ../shared/data/nih-chestxray14-64 --layout nih --views PA,AP "
        f"--resolution 64 --batch {t.get('batch')} --max-minutes N --out RUN` (see scripts/gpu/stylegan2.sh).",
        "",
        "## Conditional agreement",
        "A small CNN trained on the real NIH training labels (multi-label, 4 findings) scores images generated "
        "with *finding present* vs *finding absent* (others unspecified); the same classifier on real held-out "
        "(valid split) images is the reference. See `services/generator/evaluate_conditioning.py`.",
        "",
        format_table(cond) if cond else "_not measured_",
        "",
        "## Quality vs held-out real images",
    ]
    if qual:
        lines += [f"{qual['n_generated']} generated images (conditions drawn from the real training label "
                  f"distribution) vs the `{qual['reference']}` reference; real training images vs the same reference "
                  "give the floor.", ""]
        for ex in ("inception", "cxr-encoder"):
            q = qual.get(ex) or {}
            if "error" in q:
                lines.append(f"- {ex}: {q['error']}")
            else:
                lines.append(f"- {ex} features — generated: {_fmt_scores(q.get('generated'))}; "
                             f"real train: {_fmt_scores(q.get('real_train'))}")
    else:
        lines.append("_not measured_")
    lines += ["", "## Throughput", ""]
    for title, b in benches.items():
        lines += [f"### {title}", "", bench_table(b, title)]
    lines += ["## Limitations",
              "- 64×64 only; trained briefly on ~600 images: anatomy is coarse, fine findings are not resolvable.",
              "- NIH labels are text-mined and noisy; lung opacity is a proxy (see above).",
              "- Conditional agreement is bounded by the small classifier (see the real held-out column).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", default=None)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--quality-only", action="store_true",
                    help="only compute the quality figure for the registered model and write it to --json")
    ap.add_argument("--json", default=None)
    ap.add_argument("--eval-n", type=int, default=200, help="images per condition if conditioning must be measured")
    ap.add_argument("--quality-n", type=int, default=600)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--cpu-bench", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quality_only:
        q = quality(a.quality_n, a.device, Path(a.data))
        print(json.dumps(q, indent=2, default=str)[:3000])
        if a.json:
            Path(a.json).write_text(json.dumps(q, indent=2, default=str))
        return
    if not a.src:
        ap.error("--from is required")
    src = Path(a.src)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for name in (f"{MID}.safetensors", f"{MID}-samples.png"):
        shutil.copyfile(src / name, WEIGHTS / name)
    desc = json.loads((src / f"{MID}.json").read_text())
    desc["card"] = f"{MID}.md"
    desc["samples"] = f"{MID}-samples.png"
    desc.setdefault("aliases", ["stylegan2"])
    if desc.get("training", {}).get("data"):
        desc["training"]["data"] = "nih-chestxray14-64"
    (WEIGHTS / f"{MID}.json").write_text(json.dumps(desc, indent=2) + "\n")
    from services.generator import registry

    registry._loaded.clear()
    cond = _load(src / "stylegan2_conditioning.json")
    if cond is None:
        from services.generator.evaluate_conditioning import evaluate_conditioning

        t0 = time.time()
        g = registry.load_generator(MID, "eager", a.device)
        cond = evaluate_conditioning(g, a.data, "nih", ("PA", "AP"), a.eval_n, device=a.device)
        print(f"conditioning measured in {time.time() - t0:.0f}s")
    (WEIGHTS.parent.parent.parent / "benchmarks").mkdir(exist_ok=True)
    qual = _load(src / "stylegan2_quality.json")
    if qual is None and not a.no_quality:
        qual = quality(a.quality_n, a.device, Path(a.data))
    benches = {"GPU, shipped 64px architecture": _load(src / "bench_stylegan2_gpu.json"),
               "GPU, config-f-shaped 256px (random weights, anchor shape)": _load(src / "bench_stylegan2_f256_gpu.json"),
               "CPU (this machine)": _load(Path(a.cpu_bench)) if a.cpu_bench else None}
    text = card(desc, cond, qual, benches)
    (WEIGHTS / f"{MID}.md").write_text(text)
    res = ["# StyleGAN2 generator benchmarks", "",
           "`python benchmarks/bench_generator.py --device cpu|cuda [--arch f256] --json FILE`; ratios are vs eager "
           "fp32 measured in the same run. Anchor (issue 3, H100, config-f 256px, batch 64): eager fp32 ≈ 370 img/s, "
           "fp16 + channels_last + torch.compile ≈ 2200 img/s (5.9×).", ""]
    for title, b in benches.items():
        res += [f"## {title}", "", bench_table(b, title)]
    (ROOT / "benchmarks" / "RESULTS-stylegan2.md").write_text("\n".join(res))
    print(json.dumps({"conditioning": cond, "quality": qual}, indent=2, default=str)[:4000])
    print(f"wrote {WEIGHTS / (MID + '.md')} and benchmarks/RESULTS-stylegan2.md")


if __name__ == "__main__":
    main()
