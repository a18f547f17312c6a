"""Write the model card (markdown) of an exported DDPM from its descriptor, the conditional-agreement JSON
(``services.generator.evaluate_conditioning``) and optionally the GPU benchmark JSON.

    python -m services.generator.models.ddpm.card --descriptor services/generator/weights/ddpm-cxr64.json \
        --conditioning runs/ddpm/conditioning.json --bench runs/bench_diffusion_gpu.json \
        --grid ddpm-cxr64-grid.png --out services/generator/weights/ddpm-cxr64.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABEL_MAPPING = """| our finding | NIH ChestX-ray14 label(s) |
|---|---|
| atelectasis | `Atelectasis` |
| lung_opacity | stand-in: `Infiltration` or `Consolidation` or `Pneumonia` (NIH has no lung-opacity label; the noisiest of the four) |
| pleural_effusion | `Effusion` |
| enlarged_cardiac_silhouette | `Cardiomegaly` |

NIH labels every image for all its findings, so each of ours is present or absent in the training data;
"unspecified" is learned only through condition dropout."""


def _f(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def render(desc: dict, conditioning: dict | None = None, bench: dict | None = None, grid: str | None = None,
           notes: str | None = None) -> str:
    tr = desc.get("training", {})
    cfg = desc.get("config", {})
    unet = cfg.get("unet", {})
    sched = cfg.get("schedule", {})
    dflt = cfg.get("defaults", {})
    minutes = tr.get("train_seconds", 0) / 60
    lines = [
        f"# {desc['model_id']} — class-conditional pixel diffusion, {desc['resolution']}×{desc['resolution']}",
        "",
        "Synthetic chest X-rays conditioned on four findings (present / absent / unspecified each). Research and",
        "software-testing use only — not for diagnosis; every stored image carries a synthetic-data marker.",
        "",
        "## Model",
        "",
        f"- Family `ddpm`; diffusers `UNet2DModel` (blocks {unet.get('block_out_channels')}, "
        f"{unet.get('layers_per_block')} ResNet layers per block, self-attention at "
        f"{desc['resolution'] // 4}×{desc['resolution'] // 4}), {tr.get('parameters', 0) / 1e6:.2f} M parameters, "
        "EMA weights stored in fp16 safetensors.",
        "- Condition: a factored embedding — one learned vector per (finding, state) pair (4 × 3), summed and passed",
        "  through a 2-layer MLP, added to the timestep embedding (`class_embed_type=\"identity\"`). All four",
        "  findings \"unspecified\" is the classifier-free-guidance null condition.",
        f"- Noise schedule: {sched.get('num_train_timesteps')} steps, `{sched.get('beta_schedule')}`, "
        f"{sched.get('prediction_type')} prediction.",
        f"- Sampling defaults: `{dflt.get('sampler')}` (DPM-Solver++(2M) with dynamic thresholding), "
        f"{dflt.get('steps')} steps, guidance {dflt.get('guidance')}. Samplers `ddpm`, `ddim`, `dpmpp`; steps and "
        "guidance per request; a fresh scheduler per request; per-image noise from the seed (image i depends only on",
        "  its seed, condition and the parameters — bit-identical whatever else is in the request).",
        "",
        "## Data and label mapping",
        "",
        f"- {tr.get('data')} (layout `{tr.get('layout')}`), split `{tr.get('split')}`, views `{tr.get('views')}` "
        f"(PA and AP: with {tr.get('images')} training images every view counts), preprocessed to "
        f"{desc['resolution']} px.",
        "",
        LABEL_MAPPING,
        "",
        "## Training",
        "",
        f"- {tr.get('steps')} optimizer steps, batch {tr.get('batch')}, {tr.get('images_seen')} images seen "
        f"(~{tr.get('images_seen', 0) / max(tr.get('images', 1), 1):.0f} epochs); AdamW lr {tr.get('lr')} with warm-up, "
        f"grad-clip 1, EMA {tr.get('ema_decay')}.",
        f"- Condition dropout: whole condition {tr.get('p_uncond')}, each finding {tr.get('p_drop_finding')}; random "
        "translations of ±1/16 of the side (no flips: anatomy is lateralised).",
        f"- {minutes:.1f} min of training on {tr.get('hardware')} ({tr.get('device')}, torch {tr.get('torch')}).",
        "- Reproduce: `synthrad train diffusion --data ../shared/data/nih-chestxray14-64 --layout nih "
        f"--resolution {desc['resolution']} --out runs/ddpm --batch {tr.get('batch')} --max-minutes {max(1, round(minutes))}` (see `scripts/gpu/diffusion.sh`).",
        "",
    ]
    if grid:
        lines += ["## Samples", "",
                  "Rows: unconditional, no finding, then each finding present with the other three absent; the same 8",
                  f"seeds in every row (default sampler). ![samples]({grid})", ""]
    if conditioning:
        from services.generator.evaluate_conditioning import format_table

        lines += ["## Conditional agreement", "",
                  "A small CNN trained on the real training split's labels scores generated images conditioned \"finding",
                  "present\" vs \"finding absent\" (other findings unspecified). The real column is the same classifier on",
                  "real held-out (`valid`) images — the ceiling this classifier allows.", "",
                  format_table(conditioning), ""]
    if bench:
        rows = [r for r in bench.get("rows", []) if (r["backend"], r["sampler"], r["steps"]) in
                {("eager", "ddpm", 1000), ("eager", "ddim", 50), ("eager", "dpmpp", 20), ("compile", "dpmpp", 20),
                 ("compile", "dpmpp", 10), ("onnx", "dpmpp", 20)}]
        if rows:
            lines += ["## Speed", "", f"{bench.get('gpu') or bench.get('device')}, batch {bench.get('batch')} with guidance "
                      f"(see benchmarks/RESULTS.md for the full table):", "",
                      "| sampler | steps | backend | images/s | vs 1000-step DDPM |", "|---|---:|---|---:|---:|"]
            lines += [f"| {r['sampler']} | {r['steps']} | {r['backend']} | {r['images_per_s']:.1f} | {r['vs_ddpm1000']:.0f}× |"
                      for r in rows]
            lines.append("")
    lines += ["## Limitations", "",
              f"- {desc['resolution']} px only; trained on a few hundred images, so diversity is limited and near-copies of",
              "  training images are possible; NIH labels are text-mined and noisy (lung_opacity especially).",
              "- The conditional-agreement classifier is itself weak on real images (see the real column).", ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    lines += [f"sha256 of the weights: `{desc.get('sha256')}`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptor", required=True)
    ap.add_argument("--conditioning", default=None)
    ap.add_argument("--bench", default=None)
    ap.add_argument("--grid", default=None, help="grid PNG path as referenced from the card")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    desc = json.loads(Path(a.descriptor).read_text())
    cond = json.loads(Path(a.conditioning).read_text()) if a.conditioning else None
    bench = json.loads(Path(a.bench).read_text()) if a.bench else None
    Path(a.out).write_text(render(desc, cond, bench, a.grid, a.notes))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
