"""Quality figure of a trained model for its card: generated images vs **held-out real images** at equal set
sizes, with real training images vs the same held-out images beside them as the floor (issue 11).

* held-out set: the patient-disjoint ``test`` split (80/20 by hashed patient id,
  :mod:`services.common.datasets.splits`); ``n`` images drawn with a fixed seed, or all of them when the split
  has fewer (every set is then cut to that size, and the figure says so);
* generated set: one image per held-out image, conditioned on that image's labels (so the conditions follow the
  held-out label distribution exactly), seeds ``10,000,000 + i``;
* floor: as many real images of the patient ``train`` split (no patient in both) vs the same held-out images;
* all real images are loaded at the model's resolution (``XrayDataset(records, resolution)``), so every set is
  compared at one resolution (the Inception path then resizes all of them to 299 px alike);
* measures per extractor: Fréchet distance (``FID`` only on the standard Inception weights, else
  ``FD_<extractor>``: :mod:`services.metrics.naming`), KID, improved precision / recall (k = 3, Kynkäänniemi et
  al. 2019) — all by :func:`services.metrics.api.score` on features extracted once per set;
* ``targets``: issue 11's quality targets for this family and data set, met or not.

    python -m services.generator.train.quality --model stylegan2-cxr64 --data ../shared/data/nih-chestxray14-64 \
        --layout nih --n 200 --device cuda --json quality.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[3]
#: the shared NIH 64 px data beside the repository (the default of the finalize programs)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nih-chestxray14-64"
FORMAT = "synthrad-quality/2"
SPLIT_DESCRIPTION = "patient-disjoint 80/20 by hashed patient id"
HELDOUT_SPLIT, FLOOR_SPLIT = "test", "train"
EXTRACTORS = ("inception", "cxr-encoder")
MEASURES = ("fid", "kid", "ipr")
SEED_OFFSET = 10_000_000  # generation seeds: SEED_OFFSET + i
DEFAULT_N = 200


# ---- targets (issue 11) ---------------------------------------------------------------------------------------
def dataset_kind(data: str | Path, layout: str, model_id: str = "") -> str | None:
    """``"nih"``, ``"kermany"`` or None (no target is set for other data)."""
    if layout == "nih":
        return "nih"
    root = Path(data)
    if ("kermany" in str(root).lower() or "kermany" in model_id.lower()
            or ((root / "NORMAL").is_dir() and (root / "PNEUMONIA").is_dir())):
        return "kermany"
    return None


def target_specs(family: str | None, dataset: str | None, resolution: int | None) -> list[dict]:
    """Issue 11's targets for a model: StyleGAN2 on NIH 64 px — FID ≤ 2× the real floor, precision ≥ 0.4,
    recall ≥ 0.3; any Kermany model — precision ≥ 0.5. Precision / recall are the Inception-feature ones."""
    if dataset == "nih" and family == "stylegan2" and int(resolution or 0) == 64:
        return [{"target": "FID ≤ 2× real floor", "metric": "FID", "extractor": "inception", "op": "≤",
                 "of_floor": 2.0},
                {"target": "precision ≥ 0.4", "metric": "precision", "extractor": "inception", "op": "≥",
                 "threshold": 0.4},
                {"target": "recall ≥ 0.3", "metric": "recall", "extractor": "inception", "op": "≥", "threshold": 0.3}]
    if dataset == "kermany":
        return [{"target": "precision ≥ 0.5", "metric": "precision", "extractor": "inception", "op": "≥",
                 "threshold": 0.5}]
    return []


def check_targets(specs: Sequence[dict], extractors: dict[str, dict]) -> list[dict]:
    """Each spec with ``value``, ``threshold`` (a floor multiple resolved against the floor's value) and
    ``met``: True / False, or None when the number is missing (extractor failed, value undefined)."""
    out = []
    for spec in specs:
        t = dict(spec)
        block = extractors.get(spec["extractor"]) or {}
        value = (block.get("generated") or {}).get(spec["metric"])
        threshold = spec.get("threshold")
        if "of_floor" in spec:
            floor = (block.get("floor") or {}).get(spec["metric"])
            threshold = None if floor is None else spec["of_floor"] * floor
        t["value"], t["threshold"] = value, threshold
        if value is None or threshold is None:
            t["met"] = None
        else:
            t["met"] = bool(value <= threshold) if spec["op"] == "≤" else bool(value >= threshold)
        out.append(t)
    return out


def all_met(targets: Sequence[dict]) -> bool | None:
    """True when every target is met, False when one is not, None when there are none or one was not measured
    (and none failed)."""
    if not targets:
        return None
    if any(t["met"] is False for t in targets):
        return False
    return None if any(t["met"] is None for t in targets) else True


# ---- sets -----------------------------------------------------------------------------------------------------
def pick(records: Sequence, n: int, seed: int) -> list:
    """``n`` records drawn without replacement (fixed seed, file order kept), or all of them if fewer."""
    import numpy as np

    records = list(records)
    if len(records) <= n:
        return records
    idx = np.sort(np.random.default_rng(seed).choice(len(records), n, replace=False))
    return [records[i] for i in idx]


def load_images(records: Sequence, resolution: int, cache_dir=None):
    """``(N, R, R)`` float32 in [0, 1] at ``resolution`` (the training preprocessing: resize + centre crop)."""
    import numpy as np

    from services.common.datasets import XrayDataset

    ds = XrayDataset(records, resolution, cache_dir=cache_dir)
    return np.stack([ds.image_uint8(i) for i in range(len(ds))]).astype(np.float32) / 255.0


def _views(views) -> Sequence[str] | None:
    if views is None or views == "all" or views == ["all"]:
        return None
    if isinstance(views, str):
        return tuple(v.strip() for v in views.split(",") if v.strip())
    return tuple(views)


def _patients(records) -> set[str]:
    from services.common.datasets.splits import patient_key

    return {patient_key(r) for r in records}


def _extractor(name: str, device: str):
    from services.metrics import defaults
    from services.metrics.extractors import get_extractor

    opts: dict[str, Any] = {"device": device}
    if name == defaults.EXTRACTOR:  # as services.metrics.api.score builds it
        opts.update(weights=None, expected_sha256=None, dtype=defaults.DTYPE)
    return get_extractor(name, **opts)


def _compact(result) -> tuple[dict, dict]:
    values, cis = {}, {}
    for s in result.scores:
        values[s.name] = None if s.value is None or s.value != s.value else float(s.value)  # NaN -> None
        if s.ci_low is not None and s.ci_high is not None:
            cis[s.name] = [s.ci_low, s.ci_high]
        elif s.std is not None:
            cis[s.name] = {"std": s.std}
    return values, cis


def score_sets(name: str, device: str, heldout, generated, floor, batch_size: int | None = None,
               seed: int = 0) -> dict:
    """One extractor's block: features of the three image stacks (once each), generated vs held-out and floor
    vs held-out by :func:`services.metrics.api.score`, and the Fréchet-distance ratio to the floor."""
    from services.metrics.api import score
    from services.metrics.naming import score_name

    ex = _extractor(name, device)
    f_held, f_gen, f_floor = (ex.extract(list(x), batch_size=batch_size) for x in (heldout, generated, floor))
    block: dict[str, Any] = {"extractor": name, "stamp": ex.stamp.to_dict(), "measures": list(MEASURES)}
    warnings: list[str] = []
    for side, feats in (("generated", f_gen), ("floor", f_floor)):
        r = score(f_held, feats, MEASURES, extractor=name, cache=False, seed=seed)
        block[side], block.setdefault("ci", {})[side] = _compact(r)
        warnings += r.warnings
    fd = score_name("fid", name)
    g, f = block["generated"].get(fd), block["floor"].get(fd)
    block["ratios"] = {f"{fd} / floor": (g / f if g is not None and f else None)}
    block["warnings"] = list(dict.fromkeys(warnings))
    return block


# ---- the figure -----------------------------------------------------------------------------------------------
def quality(model_id: str, n: int = DEFAULT_N, device: str = "cpu", data: str | Path = DEFAULT_DATA,
            layout: str = "nih", views: Sequence[str] | str | None = None, backend: str = "eager", *,
            extractors: Sequence[str] = EXTRACTORS, seed: int = 0, batch: int = 32, cache_dir=None,
            generator=None) -> dict:
    """The quality figure of ``model_id`` (see the module docstring). ``views``: None / "all" = every view;
    ``generator``: an already loaded LoadedGenerator to use instead of loading ``model_id`` from the registry.
    An extractor that fails is reported as ``{"error": ...}`` (the others are kept). JSON-able."""
    import numpy as np

    from services.common.datasets import load_records
    from services.common.findings import Condition
    from services.generator.registry import load_generator, resolve

    t0 = time.time()
    if generator is None:
        desc, _ = resolve(model_id)
        family, resolution = desc.get("family"), int(desc["resolution"])
    else:
        family, resolution = generator.family, int(generator.resolution)
    vw = _views(views)
    held_all = load_records(data, layout, views=vw, split=HELDOUT_SPLIT, split_by="patient")
    train_all = load_records(data, layout, views=vw, split=FLOOR_SPLIT, split_by="patient")
    n_eff = min(n, len(held_all), len(train_all))
    notes = []
    if n_eff < n:
        short, split = (("held-out", HELDOUT_SPLIT) if len(held_all) <= len(train_all) else ("training", FLOOR_SPLIT))
        notes.append(f"only {n_eff} {short} images (patient split {split!r}) for {n} requested: all of them are "
                     f"used, and the generated, held-out and floor sets are {n_eff} images each")
    held = pick(held_all, n_eff, seed)
    floor = pick(train_all, n_eff, seed + 1)
    shared = _patients(held) & _patients(floor)
    if shared:  # cannot happen with a patient split; a broken split must not yield a number
        raise RuntimeError(f"held-out and floor sets share {len(shared)} patients: the split is not patient-disjoint")
    x_held = load_images(held, resolution, cache_dir)
    x_floor = load_images(floor, resolution, cache_dir)

    g = generator if generator is not None else load_generator(model_id, backend, device)
    conds = [Condition.from_codes(r.codes) for r in held]
    seeds = list(range(SEED_OFFSET, SEED_OFFSET + n_eff))
    x_gen = np.concatenate([np.asarray(g.generate(conds[i:i + batch], seeds[i:i + batch]), np.float32)
                            for i in range(0, n_eff, batch)])
    if x_gen.shape[1:] != x_held.shape[1:]:
        raise RuntimeError(f"generated images are {x_gen.shape[1:]}, real ones {x_held.shape[1:]}: compare at one "
                           "resolution")

    blocks: dict[str, dict] = {}
    for name in extractors:
        try:
            blocks[name] = score_sets(name, device, x_held, x_gen, x_floor, seed=seed)
        except Exception as e:  # noqa: BLE001 - one extractor failing must not lose the other
            blocks[name] = {"extractor": name, "error": repr(e)[:300]}
    dataset = dataset_kind(data, layout, model_id)
    targets = check_targets(target_specs(family, dataset, resolution), blocks)
    return {
        "format": FORMAT, "model_id": model_id, "family": family, "resolution": resolution, "backend": getattr(g, "backend", backend),
        "data": Path(data).name, "layout": layout, "views": list(vw) if vw else "all", "dataset": dataset,
        "split": {"by": "patient", "description": SPLIT_DESCRIPTION, "heldout": HELDOUT_SPLIT, "floor": FLOOR_SPLIT,
                  "heldout_available": len(held_all), "train_available": len(train_all),
                  "heldout_patients": len(_patients(held)), "floor_patients": len(_patients(floor)),
                  "shared_patients": 0},
        "n_requested": n, "n": n_eff, "n_generated": n_eff, "n_heldout": n_eff, "n_floor": n_eff,
        "conditions": "each generated image is conditioned on the labels of one held-out image",
        "seeds": [SEED_OFFSET, SEED_OFFSET + n_eff - 1],
        "notes": notes,
        "extractors": blocks,
        "targets": targets, "targets_met": all_met(targets),
        "seconds": round(time.time() - t0, 1),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered model id")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="data set root (default: the NIH 64 px data)")
    ap.add_argument("--layout", default="nih", help="nih | chexpert | mimic | folder (Kermany: folder)")
    ap.add_argument("--views", default="all", help="comma-separated view positions, or 'all' (default)")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="images per set (fewer if the held-out split is smaller)")
    ap.add_argument("--extractors", default=",".join(EXTRACTORS), help="comma-separated feature extractors")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the figure here")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    q = quality(a.model, a.n, a.device, a.data, a.layout, a.views, a.backend,
                extractors=tuple(e.strip() for e in a.extractors.split(",") if e.strip()))
    print(json.dumps(q, indent=2, default=str)[:3000])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(q, indent=2, default=str))
    return q


if __name__ == "__main__":
    main()
