"""Smoke check of an exported model: it loads through its family's loader, generates, and image i does not
depend on the rest of the batch.

    python -m services.generator.train.check_export --descriptor $OUT/ddpm/ddpm-cxr64.json --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def check_export(descriptor: str | Path, device: str = "cpu", backend: str = "eager", n: int = 8,
                 steps: int | None = 20) -> dict:
    """Generate ``n`` images ("pleural effusion" present) and the first 3 again alone; returns the figures."""
    import importlib

    import numpy as np

    from services.common.findings import Condition
    from services.generator.base import GenerationParams
    from services.generator.registry import FAMILIES

    path = Path(descriptor)
    desc = json.loads(path.read_text())
    module, fn = FAMILIES[desc["family"]].split(":")
    gen = getattr(importlib.import_module(module), fn)(desc, path.parent / desc["weights"], backend, device)
    params = GenerationParams(steps=steps) if steps and "steps" in gen.uses_params else None
    conds = [Condition.from_findings(["pleural_effusion"])] * n
    t0 = time.time()
    a = gen.generate(conds, list(range(n)), params)
    seconds = time.time() - t0
    b = gen.generate(conds[:3], [0, 1, 2], params)
    return {"model_id": gen.model_id, "backend": gen.backend, "device": str(gen.device), "shape": list(a.shape),
            "mean": float(a.mean()), "seconds": round(seconds, 2), "batch_invariant": bool(np.array_equal(a[:3], b))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptor", required=True, help="the exported descriptor JSON (weights beside it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="sampler steps (diffusion families)")
    a = ap.parse_args(argv)
    res = check_export(a.descriptor, a.device, a.backend, a.n, a.steps)
    print("generate ok", json.dumps(res))
    return res


if __name__ == "__main__":
    main()
