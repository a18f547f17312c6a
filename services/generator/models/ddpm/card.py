"""What the card of an exported DDPM says (rendered by :mod:`services.generator.cards`), and the speed
table of ``benchmarks/bench_diffusion.py`` results."""

from __future__ import annotations

from typing import Any, Mapping

from services.generator.cards import NIH_LABEL_MAPPING, Benchmark, ModelCard, Table, grid_caption

#: (backend, sampler, steps) rows of the benchmark shown on the card
CARD_ROWS = {("eager", "ddpm", 1000), ("eager", "ddim", 50), ("eager", "dpmpp", 20), ("compile", "dpmpp", 20),
             ("compile", "dpmpp", 10), ("onnx", "dpmpp", 20)}


def speed_table(bench: dict) -> Table | None:
    """``bench_diffusion.py`` JSON -> images/s of the card's sampler x steps x backend rows."""
    rows = [r for r in bench.get("rows", []) if (r["backend"], r["sampler"], r["steps"]) in CARD_ROWS]
    if not rows:
        return None
    return Table(["sampler", "steps", "backend", "images/s", "vs 1000-step DDPM"],
                 [[r["sampler"], r["steps"], r["backend"], f"{r['images_per_s']:.1f}", f"{r['vs_ddpm1000']:.0f}×"]
                  for r in rows], ["l", "r", "l", "r", "r"],
                 caption=f"{bench.get('gpu') or bench.get('device')}, batch {bench.get('batch')} with guidance "
                         "(see benchmarks/RESULTS.md for the full table):")


def describe(desc: dict, *, conditioning: dict | None = None, quality: dict | None = None,
             benchmarks: Mapping[str, dict | None] | None = None, samples: str | None = None,
             notes: str | None = None) -> ModelCard:
    tr: dict[str, Any] = desc.get("training", {})
    cfg = desc.get("config", {})
    unet, sched, dflt = cfg.get("unet", {}), cfg.get("schedule", {}), cfg.get("defaults", {})
    res = desc["resolution"]
    minutes = tr.get("train_seconds", 0) / 60
    benches = [Benchmark(title, speed_table(b)) for title, b in (benchmarks or {}).items() if b and speed_table(b)]
    return ModelCard(
        model_id=desc["model_id"], family="ddpm", headline=f"class-conditional pixel diffusion, {res}×{res}",
        samples=samples or desc.get("samples"),
        samples_caption=grid_caption("the same 8 seeds in every row (default sampler)"),
        model=[
            f"Family `ddpm`; diffusers `UNet2DModel` (blocks {unet.get('block_out_channels')}, "
            f"{unet.get('layers_per_block')} ResNet layers per block, self-attention at {res // 4}×{res // 4}), "
            f"{tr.get('parameters', 0) / 1e6:.2f} M parameters, EMA weights stored in fp16 safetensors.",
            "Condition: a factored embedding — one learned vector per (finding, state) pair (4 × 3), summed and "
            "passed through a 2-layer MLP, added to the timestep embedding (`class_embed_type=\"identity\"`). All "
            "four findings \"unspecified\" is the classifier-free-guidance null condition.",
            f"Noise schedule: {sched.get('num_train_timesteps')} steps, `{sched.get('beta_schedule')}`, "
            f"{sched.get('prediction_type')} prediction.",
            f"Sampling defaults: `{dflt.get('sampler')}` (DPM-Solver++(2M) with dynamic thresholding), "
            f"{dflt.get('steps')} steps, guidance {dflt.get('guidance')}. Samplers `ddpm`, `ddim`, `dpmpp`; steps and "
            "guidance per request; a fresh scheduler per request; per-image noise from the seed (image i depends "
            "only on its seed, condition and the parameters — bit-identical whatever else is in the request).",
        ],
        data=[f"{tr.get('data')} (layout `{tr.get('layout')}`), split `{tr.get('split')}`, views `{tr.get('views')}` "
              f"(PA and AP: with {tr.get('images')} training images every view counts), preprocessed to {res} px."],
        label_mapping=NIH_LABEL_MAPPING if tr.get("layout", "nih") == "nih" else None,
        label_note=("NIH labels every image for all its findings, so each of ours is present or absent in the "
                    "training data; \"unspecified\" is learned only through condition dropout."
                    if tr.get("layout", "nih") == "nih" else
                    "Kermany folders: NORMAL → no finding (all four absent), PNEUMONIA → lung opacity present, the "
                    "other findings unspecified; patients from the file names, split patient-disjoint."),
        training=[
            f"{tr.get('steps')} optimizer steps, batch {tr.get('batch')}, {tr.get('images_seen')} images seen "
            f"(~{tr.get('images_seen', 0) / max(tr.get('images', 1), 1):.0f} epochs); AdamW lr {tr.get('lr')} with "
            f"warm-up, grad-clip 1, EMA {tr.get('ema_decay')}.",
            f"Condition dropout: whole condition {tr.get('p_uncond')}, each finding {tr.get('p_drop_finding')}; "
            "random translations of ±1/16 of the side (no flips: anatomy is lateralised).",
            f"{minutes:.1f} min of training on {tr.get('hardware')} ({tr.get('device')}, torch {tr.get('torch')}).",
            f"Reproduce: `synthrad train diffusion --data ../shared/data/"
            f"{'nih-chestxray14-64 --layout nih' if tr.get('layout', 'nih') == 'nih' else 'kermany-pneumonia-224/train --layout folder --views all'} "
            f"--resolution {res} --out runs/ddpm --batch {tr.get('batch')} --max-minutes {max(1, round(minutes))}` "
            "(see `scripts/gpu/window.sh`).",
        ],
        conditioning=conditioning, quality=quality, benchmarks=benches,
        limitations=[
            f"{res} px only; trained on a few hundred images, so diversity is limited and near-copies of training "
            "images are possible; NIH labels are text-mined and noisy (lung_opacity especially).",
            "The conditional-agreement classifier is itself weak on real images (see the real column).",
        ],
        notes=notes, sha256=desc.get("sha256"))
