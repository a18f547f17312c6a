"""What the card of a trained StyleGAN2 says (rendered by :mod:`services.generator.cards`), and the
throughput table of ``benchmarks/bench_generator.py`` results."""

from __future__ import annotations

import json
from typing import Any, Mapping

from services.generator.cards import NIH_LABEL_MAPPING, Benchmark, ModelCard, Table, grid_caption

#: Benchmark files ``scripts/gpu/stylegan2_bench.sh`` writes (card sub-heading -> file name).
GPU_BENCHES = {"GPU, shipped 64px architecture": "bench_stylegan2_gpu.json",
               "GPU, config-f-shaped 256px (random weights, anchor shape)": "bench_stylegan2_f256_gpu.json"}


def throughput_table(bench: dict) -> Table:
    """``bench_generator.py`` JSON (``{"meta", "results"}``) -> images/s per variant x batch."""
    meta, rows = bench["meta"], []
    for r in bench["results"]:
        if "img_s" in r:
            rows.append([r["variant"], r["batch"], r["precision"], f"{r['img_s']:.1f}",
                         f"{r.get('ratio_vs_eager_fp32', float('nan')):.2f}x"])
        else:
            rows.append([r["variant"], r["batch"], "—", "skipped: " + r["skipped"] if "skipped" in r else "error", ""])
    caption = (f"Generator throughput — {meta['arch']} ({meta['resolution']}px, {meta['params_G'] / 1e6:.1f}M params) "
               f"on {meta['device_name']} ({meta['device']}), torch {meta['torch']}")
    return Table(["variant", "batch", "precision", "img/s", "vs eager fp32"], rows, ["l", "r", "l", "r", "r"], caption)


def _data_folder(t: dict) -> str:
    data = str(t.get("data") or "nih-chestxray14-64")
    return "kermany-pneumonia-224/train" if "kermany" in data else "nih-chestxray14-64"


def data_lines(t: dict, res: int) -> list[str]:
    """The card's data section for the dataset the model was trained on (NIH 64 px or the Kermany folder)."""
    views = t.get("views")
    split = f"split `{t.get('split')}` ({'patient-disjoint' if t.get('split_by') == 'patient' else 'as recorded'})"
    if t.get("layout", "nih") != "nih":
        return [
            f"Kermany paediatric chest X-rays (Kermany et al., Cell 2018, CC BY 4.0; 224 px JPEGs resized to {res} px): "
            f"{split}, {t.get('num_images')} images.",
            "Label mapping: folder NORMAL → no finding (all four absent); PNEUMONIA → lung opacity present, the "
            "other findings unspecified (bacterial and viral pneumonia together). Patients from the file names.",
            "No horizontal flips in augmentation (anatomy is lateralised).",
        ]
    return [
        f"NIH ChestX-ray14, {res}×{res} subset at `{t.get('data')}`: {split}, views {views}, "
        f"{t.get('num_images')} images (PA and AP both used: the subset has only 386 PA training images).",
        "Label mapping (table): **lung_opacity ← Infiltration | Consolidation | Pneumonia**. We chose this NIH "
        "stand-in over the Kermany pneumonia set because the Kermany images are paediatric (ages 1–5), a "
        "different anatomy, scanner population and image processing; mixing them would teach the model "
        "\"child\" instead of \"opacity\". The NIH labels are adult, same domain, and co-occur with the other "
        "findings as in practice; they are NLP-mined labels and noisy.",
        "No horizontal flips in augmentation (anatomy is lateralised).",
    ]


def describe(desc: dict, *, conditioning: dict | None = None, quality: dict | None = None,
             benchmarks: Mapping[str, dict | None] | None = None, samples: str | None = None,
             notes: str | None = None) -> ModelCard:
    t: dict[str, Any] = desc.get("training", {})
    res = desc["resolution"]
    short = (t.get("kimg") or 0) < 100
    views = t.get("views")
    return ModelCard(
        model_id=desc["model_id"], family="stylegan2", headline=f"conditional StyleGAN2, {res}×{res} chest X-rays",
        notice=(f"**Short training**: {t.get('kimg')} kimg ({(t.get('train_seconds') or 0) / 60:.1f} min on "
                f"{t.get('device', '?')}). The images are far from real chest "
                "radiographs; a GPU window (`scripts/gpu/window.sh`, continuing the shipped training state) improves them.")
        if short else None,
        samples=samples or desc.get("samples") or f"{desc['model_id']}-samples.png",
        samples_caption=grid_caption("seeds 0–7 (psi = 1)"),
        model=[
            f"Architecture: StyleGAN2 (skip generator, residual discriminator with minibatch-stddev, projection "
            f"conditioning), pure torch ops; {desc.get('params_G', 0) / 1e6:.2f} M generator parameters; "
            f"config `{json.dumps(desc.get('config', {}))}`.",
            "Condition: 4 findings × {absent, present, unspecified} one-hot → learned embedding (sum of one vector "
            "per finding state) concatenated with z in the mapping network. Training replaced each finding's state "
            f"by *unspecified* with probability {t.get('p_uncond')}, so unspecified findings follow the data "
            "distribution.",
            "Truncation: `truncation` psi per request (default 1.0 = none) toward the **per-condition mean w** "
            "(2048 fixed z, cached per condition), not the global w_avg.",
            "Determinism: image i is drawn from its own seed (z, then every per-layer noise map); every forward "
            "pass has a fixed number of images (the last chunk padded), so pixels are bit-identical whatever "
            "else is in the request.",
        ],
        data=data_lines(t, res),
        label_mapping=NIH_LABEL_MAPPING if t.get("layout", "nih") == "nih" else None,
        training=[
            f"{t.get('steps')} steps, {t.get('kimg')} kimg at batch {t.get('batch')}, "
            f"{(t.get('train_seconds') or 0) / 60:.1f} min on {t.get('device')} (torch {t.get('torch')}).",
            f"Non-saturating logistic loss, lazy R1 every 16 steps (gamma {t.get('gamma') or 0:.4g}), EMA generator "
            f"(half-life {t.get('ema_kimg')} kimg), style mixing {t.get('style_mixing')}, Adam lr {t.get('lr_g')} "
            f"betas (0, 0.99), ADA-style augmentation (translation, cutout, brightness, contrast; final p = "
            f"{t.get('aug_p_final')}).",
            f"Command: `synthrad train stylegan2 --data ../shared/data/{_data_folder(t)} --layout {t.get('layout', 'nih')} "
            f"--views {'all' if views in (None, 'all') else ','.join(views)} --resolution {res} --batch {t.get('batch')} "
            f"--max-minutes N --out RUN`; continue it with `--resume-from {desc['model_id']}` (docs/training.md).",
        ],
        conditioning=conditioning, quality=quality,
        benchmarks=[Benchmark(title, throughput_table(b) if b else None) for title, b in (benchmarks or {}).items()],
        limitations=[
            f"{res}×{res} only; trained briefly on ~{t.get('num_images') or 600} images: anatomy is coarse, fine "
            "findings are not resolvable.",
            ("NIH labels are text-mined and noisy; lung opacity is a proxy (see above)." if t.get("layout", "nih") == "nih"
             else "Kermany labels are per folder (normal / pneumonia): only lung opacity is conditioned meaningfully; "
                  "the other findings were never labelled (unspecified) in training."),
            "Conditional agreement is bounded by the small classifier (see the real held-out column).",
        ],
        notes=notes, sha256=desc.get("sha256"))
