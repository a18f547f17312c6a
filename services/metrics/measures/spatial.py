"""Interpretable per-image spatial features (after Fan et al.) and a real-vs-synthetic comparison.

Per image (greyscale = channel mean for RGB; intensities scaled to [0, 255] float):
  * ``brenner``      — mean of (I(x+2, y) − I(x, y))² (horizontal; Brenner focus measure)
  * ``tenengrad``    — mean of Gx² + Gy² with 3×3 Sobel kernels
  * ``laplacian_var``— variance of the 3×3 Laplacian response
  * GLCM (scikit-image ``graycomatrix`` on 8-bit, distance 1, angles 0/45/90/135°, symmetric, normalised;
    each property averaged over the angles): ``glcm_asm`` (angular second moment), ``glcm_contrast``,
    ``glcm_entropy`` (−Σ p ln p), ``glcm_idm`` (inverse difference moment = skimage "homogeneity")
  * ``colourfulness`` — Hasler & Süsstrunk 2003 on RGB (0 for greyscale images)

Sharpness and GLCM values depend on resolution: compare sets at the same image size (the comparison warns).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from services.metrics.registry import SPATIAL, Measure, MeasureInput, Outcome, register_measure

SPATIAL_FEATURES: tuple[str, ...] = (
    "brenner",
    "tenengrad",
    "laplacian_var",
    "glcm_asm",
    "glcm_contrast",
    "glcm_entropy",
    "glcm_idm",
    "colourfulness",
)
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk colourfulness of an RGB image in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def image_features(img: np.ndarray) -> np.ndarray:
    """The ``SPATIAL_FEATURES`` vector (float64) of one image (float [0, 1], (H, W) or (H, W, 3))."""
    from skimage.feature import graycomatrix, graycoprops

    a = np.asarray(img, dtype=np.float64)
    colour = a.ndim == 3
    grey = (a.mean(axis=2) if colour else a) * 255.0
    brenner = float(np.mean((grey[:, 2:] - grey[:, :-2]) ** 2)) if grey.shape[1] > 2 else 0.0
    gx = ndimage.sobel(grey, axis=1, mode="reflect")
    gy = ndimage.sobel(grey, axis=0, mode="reflect")
    tenengrad = float(np.mean(gx * gx + gy * gy))
    lap_var = float(ndimage.laplace(grey, mode="reflect").var())
    u8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    p = graycomatrix(u8, distances=[1], angles=list(_ANGLES), levels=256, symmetric=True, normed=True)
    asm = float(graycoprops(p, "ASM").mean())
    contrast = float(graycoprops(p, "contrast").mean())
    idm = float(graycoprops(p, "homogeneity").mean())
    pp = p[:, :, 0, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(pp > 0, pp * np.log(pp), 0.0).sum(axis=(0, 1))
    entropy = float(ent.mean())
    col = colourfulness(a * 255.0) if colour else 0.0
    return np.array([brenner, tenengrad, lap_var, asm, contrast, entropy, idm, col], dtype=np.float64)


def spatial_features(images: Iterable[np.ndarray]) -> np.ndarray:
    rows = [image_features(im) for im in images]
    return np.stack(rows) if rows else np.zeros((0, len(SPATIAL_FEATURES)))


def compare_spatial(real: np.ndarray, synthetic: np.ndarray, names: Sequence[str] = SPATIAL_FEATURES) -> list[dict]:
    """One row per feature: means, stds, standardised mean difference, two-sample KS statistic and p-value."""
    from scipy.stats import ks_2samp

    rows = []
    for j, name in enumerate(names):
        a, b = real[:, j], synthetic[:, j]
        if np.all(a == a[0]) and np.all(b == b[0]) and a[0] == b[0]:
            ks, p = 0.0, 1.0
        else:
            res = ks_2samp(a, b)
            ks, p = float(res.statistic), float(res.pvalue)
        pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2) if len(a) > 1 and len(b) > 1 else 0.0
        rows.append(
            {
                "feature": name,
                "real_mean": float(a.mean()),
                "real_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                "synthetic_mean": float(b.mean()),
                "synthetic_std": float(b.std(ddof=1)) if len(b) > 1 else 0.0,
                "smd": float((b.mean() - a.mean()) / pooled) if pooled > 0 else 0.0,
                "ks_statistic": ks,
                "ks_pvalue": p,
            }
        )
    return rows


def undefined_spatial_rows(real: np.ndarray, synthetic: np.ndarray, names: Sequence[str] = SPATIAL_FEATURES) -> dict[str, str]:
    """Spatial features with no meaning for these two sets → reason (left out of tables and reports).

    * ``colourfulness`` when both sets are greyscale (it is 0 for every greyscale image: a constant row, p = 1).
    * any feature that is one identical constant in both sets (no distribution to compare)."""
    out: dict[str, str] = {}
    for j, name in enumerate(names):
        a, b = np.asarray(real)[:, j], np.asarray(synthetic)[:, j]
        if not (len(a) and len(b)):
            continue
        if name == "colourfulness" and not a.any() and not b.any():
            out[name] = "both sets are greyscale (colourfulness is 0 for greyscale images)"
        elif np.all(a == a[0]) and np.all(b == a[0]):
            out[name] = f"constant {float(a[0]):.4g} in both sets"
    return out


def _compute(inp: MeasureInput) -> Outcome:
    real, synthetic = inp.real.spatial, inp.synthetic.spatial
    omitted = undefined_spatial_rows(real, synthetic, SPATIAL_FEATURES)
    rows = [row for row in compare_spatial(real, synthetic, SPATIAL_FEATURES) if row["feature"] not in omitted]
    return Outcome(details={"spatial": rows, "spatial_omitted": omitted or None})


register_measure(Measure(
    name="spatial", inputs=frozenset({SPATIAL}), compute=_compute, details=("spatial", "spatial_omitted"),
    summary="interpretable spatial features, real vs synthetic table (means, SMD, KS test)",
))
