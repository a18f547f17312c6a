"""Quality figure of a trained model for its card: FID/KID (Inception) and FD/KID on the CXR encoder of
generated images vs the NIH valid reference, with real training images vs the same reference as the floor.

    python -m services.generator.train.quality --model stylegan2-cxr64 --data ../shared/data/nih-chestxray14-64 \
        --n 1000 --device cuda --json quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: the shared NIH 64 px data beside the repository (the default of the finalize programs)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nih-chestxray14-64"
REFERENCE = "nih-cxr64-valid"


def quality(model_id: str, n: int, device: str, data: str | Path = DEFAULT_DATA, backend: str = "eager") -> dict:
    """Scores of ``n`` images of ``model_id`` (conditions drawn from the real training label distribution, seeds
    from 10,000,000) and of the real training split, against :data:`REFERENCE`; an extractor that fails is
    reported as ``{"error": ...}``."""
    import numpy as np

    from services.common.findings import Condition
    from services.generator.registry import load_generator
    from services.metrics.api import score
    from services.metrics.conditioning import load_real

    xtr, ctr = load_real(str(data), "nih", ("PA", "AP"), "train")
    g = load_generator(model_id, backend, device)
    idx = np.random.default_rng(0).integers(0, len(ctr), n)
    conds = [Condition.from_codes(ctr[i]) for i in idx]
    fake = g.generate(conds, list(range(10_000_000, 10_000_000 + n)))
    out: dict = {"n_generated": n, "reference": REFERENCE}
    for extractor in ("inception", "cxr-encoder"):
        try:
            r_fake = score(REFERENCE, fake, ("fid", "kid"), extractor=extractor, device=device,
                           kid_subset_size=min(500, n), cache=False).model_dump()
            r_real = score(REFERENCE, xtr, ("fid", "kid"), extractor=extractor, device=device,
                           kid_subset_size=min(500, len(xtr)), cache=False).model_dump()
            out[extractor] = {"generated": r_fake.get("scores"), "real_train": r_real.get("scores")}
        except Exception as e:  # noqa: BLE001 - one extractor failing must not lose the other
            out[extractor] = {"error": repr(e)[:300]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered model id")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="NIH 64 px root")
    ap.add_argument("--n", type=int, default=600, help="generated images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the figure here")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    q = quality(a.model, a.n, a.device, a.data, a.backend)
    print(json.dumps(q, indent=2, default=str)[:3000])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(q, indent=2, default=str))
    return q


if __name__ == "__main__":
    main()
