"""Variety (after Nan et al.): lossless (PNG) compressed size of a set's per-class mean image.

A varied set averages to a smooth, featureless mean that compresses well (small); a collapsed set (many
near-identical images) keeps a sharp mean that compresses poorly (large). Report bytes and bits per pixel;
compare sets of the same image size and class only.
"""

from __future__ import annotations

import io

import numpy as np

from services.metrics.registry import MEAN_IMAGES, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score


def png_size(mean_image: np.ndarray) -> int:
    """Bytes of the 8-bit PNG (zlib level 9) of an image in [0, 1]."""
    from PIL import Image

    a = np.clip(np.rint(np.asarray(mean_image, np.float64) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=9)
    return len(buf.getvalue())


class MeanImages:
    """Running per-class mean images (float64). Images resized (bilinear) to the first image's size."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None

    def add(self, img: np.ndarray, label: str) -> None:
        a = np.asarray(img, np.float64)
        if a.ndim == 3:
            a = a.mean(axis=2)
        if self.shape is None:
            self.shape = a.shape
        elif a.shape != self.shape:
            from PIL import Image

            a = np.asarray(
                Image.fromarray(a.astype(np.float32), mode="F").resize(self.shape[::-1], Image.BILINEAR), np.float64
            )
        for key in (label, "all") if label != "all" else ("all",):
            if key in self.sums:
                self.sums[key] += a
                self.counts[key] += 1
            else:
                self.sums[key] = a.copy()
                self.counts[key] = 1

    def means(self) -> dict[str, np.ndarray]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def variety(means: dict[str, np.ndarray], counts: dict[str, int] | None = None) -> dict[str, dict]:
    out = {}
    for k, m in sorted(means.items()):
        size = png_size(m)
        out[k] = {"png_bytes": size, "bits_per_pixel": 8.0 * size / m.size, "n": (counts or {}).get(k)}
    return out


def _compute(inp: MeasureInput) -> Outcome:
    out = {"real": variety(inp.real.means, inp.real.mean_counts),
           "synthetic": variety(inp.synthetic.means, inp.synthetic.mean_counts),
           "note": "PNG bytes of the per-class mean image: smaller = more varied set"}
    scores = [Score(metric="variety", name=f"variety_png_bytes_{side}", value=float(out[side]["all"]["png_bytes"]),
                    params={"class": "all"}) for side in ("real", "synthetic") if "all" in out[side]]
    return Outcome(scores, {"variety": out})


register_measure(Measure(
    name="variety", inputs=frozenset({MEAN_IMAGES}), compute=_compute, details=("variety",),
    summary="variety: PNG size of each class's mean image (smaller = more varied)",
))
