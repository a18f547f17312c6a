"""Bias inheritance probe: burned-in markers and text (laterality letters "R" / "L", labels) in real vs synthetic
images, and the ``crop_border`` control of the published experiment.

A generator trained on radiographs that carry burned-in markers reproduces them: in the published bias-control
experiment a GAN painted the letter "R" onto its normals, which inflated feature-extraction utility (the classifier
keyed on the letter) until the marker region was cropped. This kind measures how often synthetic and real images
carry such marks — overall and per condition state — so that a marker/class association the generator inherited
shows before a utility number is trusted; ``utility --crop-border F`` then re-runs utility without the region
(:func:`services.metrics.evaluation.inputs.crop_border`; the table here says which ``F`` removes the marks found).

The detector (:func:`detect_markers`, scikit-image) looks for small, bright, glyph-like blobs in the border band:

1. a white top-hat (square footprint ``footprint`` × side, at least 5 px) keeps bright structures whose strokes are
   narrower than the footprint — letters, digits, small markers — and drops the slowly varying anatomy;
2. the top-hat is thresholded at several levels (``LEVELS``) so a glyph that touches nearby bright structure at a
   low level stands alone at a higher one; connected components (8-connectivity) at every level are candidates;
3. a candidate must lie in the border band (its box inside the outer ``border`` fraction of one edge: exactly what
   ``crop_border(border)`` removes), not be cut by the image edge (collimation and border artefacts are), be
   glyph-sized (3 px to a quarter of the side high, 4 px to 2 % of the image in area, aspect 1:3 to 4:1), not
   elongated (inertia axes ratio ≤ 3: rib edges, wires and collimation lines are) and sharp (a 3×3 top-hat keeps
   ≥ 30 % of its peak: printed strokes, not the soft brightening where two ribs cross);
4. its score is its local contrast in the top-hat: the mean of its brightest half minus the median of a ring around
   it, minus half the ring's standard deviation (a blob on busy anatomy must stand out further). An image has a
   marker when its best candidate scores ≥ ``threshold``; text when ≥ 2 such glyphs sit side by side on one line
   (letters that touch make one glyph: a word printed without gaps counts as a marker, not as text).

Real rates come from ``options.data`` or, for the shipped models, from ``bias_rates.json`` (the counts measured on
each model's training set with the default detector settings; rebuilt by the maintainers' program
``python -m services.metrics.evaluation.bias --build-rates``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, Field

from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, crop_border, load_real, resize
from services.metrics.evaluation.progress import ProgressFn, Steps
from services.metrics.evaluation.registry import Evaluation, register_evaluation
from services.metrics.evaluation.result import EvaluationResult, Figure, Provenance, Subject, Table
from services.metrics.evaluation.stats import wilson_interval

DETECTOR = "tophat-glyph/1"
DEFAULT_BORDER = 0.2
DEFAULT_THRESHOLD = 0.2
DEFAULT_FOOTPRINT = 0.06
#: top-hat levels (intensity on [0, 1]) at which candidates are cut out
LEVELS = (0.05, 0.1, 0.2, 0.35)
MAX_ELONGATION = 3.0
#: a glyph's peak in the 3x3 top-hat / its peak in the detector's top-hat, at least
MIN_SHARPNESS = 0.3
RATES_FILE = Path(__file__).resolve().parent / "bias_rates.json"
STATES = {0: "absent", 1: "present", 2: "unspecified"}


# ---- the detector -----------------------------------------------------------------------------------------------------
@dataclass
class MarkerDetection:
    """One image's verdict: its best glyph candidate (``bbox`` = (y0, x0, y1, x1), end-exclusive, pixels)."""

    has_marker: bool
    score: float  # the best candidate's local contrast (0 when there is none)
    bbox: tuple[int, int, int, int] | None
    has_text: bool = False  # >= 2 marker glyphs side by side on one line
    glyphs: int = 0  # marker glyphs (score >= threshold) found in the band

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox) if self.bbox else None
        return d


def _footprint_px(side: int, footprint: float) -> int:
    return max(5, int(round(footprint * side)) | 1)


def _band_fraction(bbox: Sequence[int], h: int, w: int) -> float:
    """The smallest ``crop_border`` fraction that cuts this box away (it lies within that fraction of one edge)."""
    y0, x0, y1, x1 = bbox
    return float(min(y1 / h, x1 / w, 1 - y0 / h, 1 - x0 / w))


def _candidates(img: np.ndarray, border: float, footprint: float) -> list[tuple[float, tuple[int, int, int, int]]]:
    """(score, bbox) of every glyph-like component of ``img``'s top-hat in the border band, at every level."""
    from scipy import ndimage as ndi
    from skimage.morphology import footprint_rectangle, white_tophat

    h, w = img.shape
    s = min(h, w)
    k = _footprint_px(s, footprint)
    th = white_tophat(img, footprint_rectangle((k, k), decomposition="separable"))
    fine = white_tophat(img, footprint_rectangle((3, 3)))  # what survives of strokes 1-2 px wide
    b = int(np.ceil(border * s))
    band = np.zeros((h, w), bool)
    if b > 0:
        band[:b] = band[-b:] = True
        band[:, :b] = band[:, -b:] = True
    eight = np.ones((3, 3), bool)
    out: list[tuple[float, tuple[int, int, int, int]]] = []
    seen: set[tuple[int, int, int, int]] = set()
    for level in LEVELS:
        lab, n = ndi.label((th > level) & band, structure=eight)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        for idx, sl in enumerate(ndi.find_objects(lab), start=1):
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            box = (y0, x0, y1, x1)
            hh, ww, area = y1 - y0, x1 - x0, int(areas[idx])
            if box in seen or hh < 3 or area < 4 or area > 0.02 * h * w or hh > 0.25 * s or ww > 0.25 * s:
                continue
            if y0 == 0 or x0 == 0 or y1 == h or x1 == w:  # cut by the image edge: collimation / border, not a glyph
                continue
            if _band_fraction(box, h, w) > border or not (1 / 3 <= hh / max(ww, 1) <= 4):
                continue
            m_full = lab[sl] == idx
            ys, xs = np.nonzero(m_full)
            cov = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True)
            lo, hi = np.linalg.eigvalsh(cov)
            if 4 * np.sqrt(max(hi, 0.0)) > MAX_ELONGATION * max(4 * np.sqrt(max(lo, 0.0)), 0.5):
                continue  # a line (rib edge, wire), not a glyph
            pad = max(2, (hh + 1) // 2)
            Y0, X0, Y1, X1 = max(0, y0 - pad), max(0, x0 - pad), min(h, y1 + pad), min(w, x1 + pad)
            win = th[Y0:Y1, X0:X1]
            m = np.zeros(win.shape, bool)
            m[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = m_full
            ring = win[~ndi.binary_dilation(m, structure=eight)]
            if ring.size < 4:
                continue
            peak = float(th[sl][m_full].max())
            if float(fine[sl][m_full].max()) < MIN_SHARPNESS * peak:
                continue  # a soft blob (rib crossing, bone end), not printed strokes
            vals = np.sort(win[m])[::-1]
            top = float(vals[:max(1, len(vals) // 2)].mean())
            score = top - float(np.median(ring)) - 0.5 * float(np.std(ring))
            seen.add(box)
            out.append((score, box))
    return out


def _is_text(glyphs: list[tuple[int, int, int, int]]) -> bool:
    """Two non-overlapping glyph boxes of similar height side by side on one line (at most a glyph height apart)."""
    for i, a in enumerate(glyphs):
        for b in glyphs[i + 1:]:
            ha, hb = a[2] - a[0], b[2] - b[0]
            if max(ha, hb) > 2 * min(ha, hb):
                continue
            cy_a, cy_b = (a[0] + a[2]) / 2, (b[0] + b[2]) / 2
            if abs(cy_a - cy_b) > 0.5 * max(ha, hb):
                continue
            left, right = (a, b) if a[1] <= b[1] else (b, a)
            gap = right[1] - left[3]
            if 0 <= gap <= max(ha, hb) or (gap < 0 and not _overlap(a, b)):
                return True
    return False


def _overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def detect_markers(images: np.ndarray, border: float = DEFAULT_BORDER, threshold: float = DEFAULT_THRESHOLD,
                   footprint: float = DEFAULT_FOOTPRINT, progress=None) -> list[MarkerDetection]:
    """Burned-in markers / text of every image of ``images`` ((n, h, w) or (h, w) float on [0, 1]); see the
    module docstring. ``progress(k)`` is called with the number of images done since the last call."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4:
        x = x.mean(-1)
    if not 0.0 < border < 0.5:
        raise MetricsError(f"border must be in (0, 0.5), got {border}")
    out: list[MarkerDetection] = []
    for i, img in enumerate(np.clip(x, 0.0, 1.0)):
        cands = _candidates(img, border, footprint)
        if not cands:
            out.append(MarkerDetection(False, 0.0, None))
        else:
            score, bbox = max(cands, key=lambda c: c[0])
            glyphs = _distinct([c[1] for c in cands if c[0] >= threshold])
            out.append(MarkerDetection(bool(score >= threshold), float(round(score, 5)), bbox,
                                       _is_text(glyphs), len(glyphs)))
        if progress is not None and (i + 1) % 64 == 0:
            progress(64)
    if progress is not None and len(x) % 64:
        progress(len(x) % 64)
    return out


def _distinct(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """One box per glyph: a box nested in (or overlapping) one already kept is the same glyph at another level."""
    kept: list[tuple[int, int, int, int]] = []
    for b in sorted(boxes, key=lambda b: -((b[2] - b[0]) * (b[3] - b[1]))):
        if not any(_overlap(b, k) for k in kept):
            kept.append(b)
    return kept


def removal_fraction(detection: MarkerDetection, shape: tuple[int, int]) -> float | None:
    """The smallest ``crop_border`` fraction that cuts ``detection``'s marker away (None: no marker)."""
    if not detection.has_marker or detection.bbox is None:
        return None
    return _band_fraction(detection.bbox, *shape)


def paint_marker(image: np.ndarray, text: str = "R", size: float = 0.12, corner: str = "top-left",
                 margin: float = 0.04, value: float = 1.0) -> np.ndarray:
    """``image`` ((h, w) float [0, 1]) with ``text`` burned in: DejaVu Sans Bold (matplotlib's), cap height
    ``size`` × height, ``margin`` × side from the ``corner`` (top-left | top-right | bottom-left | bottom-right),
    rendered at 4× and area-downsampled (anti-aliased like a scanned letter), intensity ``value``."""
    from PIL import Image, ImageDraw

    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    ss = 4
    H, W = h * ss, w * ss
    font = _font(max(4, int(round(size * H / 0.72))))
    mask = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(mask)
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    mx, my = int(margin * W), int(margin * H)
    if corner not in ("top-left", "top-right", "bottom-left", "bottom-right"):
        raise ValueError(f"corner must be top-left, top-right, bottom-left or bottom-right, got {corner!r}")
    x = (mx if corner.endswith("left") else W - mx - (r - l)) - l
    y = (my if corner.startswith("top") else H - my - (b - t)) - t
    draw.text((x, y), text, fill=255, font=font)
    a = np.asarray(mask.resize((w, h), Image.BOX), np.float32) / 255.0
    return img * (1 - a) + float(value) * a


def _font(px: int):
    from PIL import ImageFont

    try:
        import matplotlib

        path = Path(matplotlib.__file__).resolve().parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        return ImageFont.truetype(str(path), px)
    except (ImportError, OSError):
        return ImageFont.load_default(size=px)


def painted_check(images: np.ndarray, size: float = 0.12, border: float = DEFAULT_BORDER,
                  threshold: float = DEFAULT_THRESHOLD, footprint: float = DEFAULT_FOOTPRINT) -> dict[str, float]:
    """The detector's check on real images: "R" / "L" alternately painted (:func:`paint_marker`, bright, top-left /
    top-right corner, cap height ``size``) vs the same images unpainted. ``painted_found``: the detector finds a
    marker overlapping the painted letter; ``painted`` / ``unpainted``: images with any marker."""
    x = np.asarray(images, dtype=np.float32)
    painted = np.stack([paint_marker(im, "RL"[i % 2], size, ("top-left", "top-right")[i % 2])
                        for i, im in enumerate(x)]) if len(x) else x
    d0 = detect_markers(x, border, threshold, footprint)
    d1 = detect_markers(painted, border, threshold, footprint)
    found = []
    for im, p, d in zip(x, painted, d1):
        letter = np.abs(p - im) > 0.05
        cands = [c for c in _candidates(np.clip(p, 0, 1), border, footprint) if c[0] >= threshold]
        found.append(any(letter[c[1][0]:c[1][2], c[1][1]:c[1][3]].sum() > 0.5 * letter.sum() for c in cands))
    n = max(1, len(x))
    return {"n": len(x), "unpainted": sum(d.has_marker for d in d0) / n, "painted": sum(d.has_marker for d in d1) / n,
            "painted_found": sum(found) / n}


# ---- counts and tests -------------------------------------------------------------------------------------------------
def _counts(dets: list[MarkerDetection], codes: np.ndarray) -> dict[str, dict[str, int]]:
    """``{"overall": {n, markers, text}, "<finding>=<state>": {...}}`` (strata with at least one image)."""
    m = np.array([d.has_marker for d in dets], bool)
    t = np.array([d.has_text for d in dets], bool)
    out = {"overall": {"n": int(len(m)), "markers": int(m.sum()), "text": int(t.sum())}}
    codes = np.asarray(codes).reshape(len(m), len(FINDINGS)) if len(m) else np.zeros((0, len(FINDINGS)), int)
    for j, f in enumerate(FINDINGS):
        for code, state in STATES.items():
            sel = codes[:, j] == code
            if sel.any():
                out[f"{f}={state}"] = {"n": int(sel.sum()), "markers": int(m[sel].sum()), "text": int(t[sel].sum())}
    return out


def _fisher(k1: int, n1: int, k2: int, n2: int) -> float | None:
    from scipy.stats import fisher_exact

    if n1 == 0 or n2 == 0:
        return None
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided").pvalue)


def _rate(k: int | None, n: int | None) -> float | None:
    return None if not n or k is None else k / n


# ---- the evaluation ---------------------------------------------------------------------------------------------------
class BiasOptions(BaseModel):
    data: DataSpec | None = Field(None, description="the real side: a labelled dataset (its training split is "
                                                    "scanned, like the generator's training set). Default: the "
                                                    "shipped rates of the model's training set (bias_rates.json)")
    border: float = Field(DEFAULT_BORDER, gt=0.0, lt=0.5, description="border band scanned for markers, as a "
                                                                      "fraction of the side from every edge")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, le=1.0, description="local contrast (top-hat, on [0, 1] "
                                                                            "intensities) a glyph needs to count")
    footprint: float = Field(DEFAULT_FOOTPRINT, gt=0.0, le=0.25, description="top-hat footprint as a fraction of "
                                                                             "the side (strokes narrower than it "
                                                                             "count; at least 5 px)")
    crop_border: float | None = Field(None, ge=0.0, lt=0.5, description="also scan both sides after "
                                                                        "crop_border(F), the utility control "
                                                                        "(default: the suggested fraction)")
    real_split: str = Field("train", pattern="^(train|test|all)$", description="split of data scanned: train | test "
                                                                                "| all")
    max_real: int | None = Field(None, ge=1, description="scan at most this many real images (evenly spaced)")
    gallery: int = Field(24, ge=0, le=96, description="detected synthetic markers shown (image + zoom)")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0, description="level of the Wilson CIs")


def _settings(opts: BiasOptions) -> dict[str, Any]:
    return {"detector": DETECTOR, "border": opts.border, "threshold": opts.threshold, "footprint": opts.footprint}


def shipped_rates(model_id: str | None) -> dict | None:
    """The shipped real counts of ``model_id``'s training set (``bias_rates.json``), or None."""
    if not model_id or not RATES_FILE.is_file():
        return None
    data = json.loads(RATES_FILE.read_text())
    models = data.get("models", {})
    if model_id not in models:
        try:
            from services.generator.registry import canonical_model_id

            model_id = canonical_model_id(model_id)
        except Exception:  # noqa: BLE001 - an unknown id simply has no shipped rates
            return None
    entry = models.get(model_id)
    if entry is None:
        return None
    return {**entry, "settings": data.get("settings", {}), "model_id": model_id}


def _real_side(syn: SyntheticSet, opts: BiasOptions, warnings: list[str], steps: Steps):
    """(images, codes, detections) of scanned real data (None each with shipped counts), the counts (None: no real
    side) and a description of the source."""
    size = int(syn.images.shape[-1])
    if opts.data is not None:
        splits = ("train", "test") if opts.real_split == "all" else (opts.real_split,)
        real = load_real(opts.data, size, splits=splits)
        x = np.concatenate([real.train_images, real.test_images]) if opts.real_split == "all" else (
            real.train_images if opts.real_split == "train" else real.test_images)
        c = np.concatenate([real.train_codes, real.test_codes]) if opts.real_split == "all" else (
            real.train_codes if opts.real_split == "train" else real.test_codes)
        if opts.max_real and len(x) > opts.max_real:
            keep = np.linspace(0, len(x) - 1, opts.max_real).round().astype(int)
            x, c = x[keep], c[keep]
        steps.step("real data")
        dets = detect_markers(x, opts.border, opts.threshold, opts.footprint, progress=lambda k: steps.step("real", k))
        desc = {"source": "data", "dataset": opts.data.display, "layout": opts.data.layout,
                "split_by": opts.data.split_by, "split": opts.real_split, "views": opts.data.views, "resolution": size}
        return x, c, dets, _counts(dets, c), desc
    shipped = shipped_rates(syn.model_id)
    steps.step("real data")
    if shipped is None:
        warnings.append("no real side: pass data (a labelled dataset) to compare; "
                        + (f"model {syn.model_id!r} has no shipped rates" if syn.model_id
                           else "the batch names no model"))
        return None, None, None, None, {"source": None}
    if shipped.get("settings") != _settings(opts):
        warnings.append(f"the shipped real rates of {shipped['model_id']} were measured with {shipped.get('settings')}"
                        f", not this run's {_settings(opts)}; pass data to measure the real side with these settings")
        return None, None, None, None, {"source": "shipped (settings differ: not used)",
                                        "model_id": shipped["model_id"]}
    if int(shipped.get("resolution", size)) != size:
        warnings.append(f"the shipped real rates were measured at {shipped['resolution']} px, the batch is {size} px")
    return None, None, None, shipped["counts"], {"source": "shipped", "file": RATES_FILE.name,
                                           **{k: v for k, v in shipped.items() if k not in ("counts", "settings")}}


def run(synthetic: SyntheticSet, options: BiasOptions, progress: ProgressFn) -> EvaluationResult:
    syn, opts = synthetic, options
    if syn.n == 0:
        raise MetricsError("bias needs at least one synthetic image")
    warnings: list[str] = []
    n_real_guess = (opts.max_real or 1000) if opts.data is not None else 0
    steps = Steps(syn.n * (2 if opts.crop_border != 0 else 1) + 2 * n_real_guess + 4, progress)
    syn_dets = detect_markers(syn.images, opts.border, opts.threshold, opts.footprint,
                              progress=lambda k: steps.step("synthetic", k))
    real_x, real_c, real_dets, real_counts, real_desc = _real_side(syn, opts, warnings, steps)
    syn_counts = _counts(syn_dets, syn.codes)

    shape = syn.images.shape[-2:]
    fractions = [removal_fraction(d, shape) for d in syn_dets]
    if real_dets is not None:
        fractions += [removal_fraction(d, real_x.shape[-2:]) for d in real_dets]
    found = sorted(f for f in fractions if f is not None)
    suggested = float(min(0.49, np.ceil(np.quantile(found, 0.95) * 100) / 100)) if found else None
    crop = opts.crop_border if opts.crop_border is not None else suggested

    tables = [_rates_table(syn_counts, real_counts, opts, real_desc)]
    shortcut = _shortcut_table(syn_counts, real_counts)
    if shortcut.rows:
        tables.append(shortcut)
    after: dict[str, Any] = {}
    if crop:
        syn_after = detect_markers(crop_border(syn.images, crop), opts.border, opts.threshold, opts.footprint,
                                   progress=lambda k: steps.step("synthetic, cropped", k))
        after["synthetic"] = _counts(syn_after, syn.codes)["overall"]
        if real_x is not None:
            after["real"] = _counts(detect_markers(crop_border(real_x, crop), opts.border, opts.threshold,
                                                   opts.footprint), real_c)["overall"]
        tables.append(_crop_table(crop, syn_counts, real_counts, after, opts, suggested))
    steps.step("tables")

    figures = []
    order = [i for i in np.argsort([-d.score for d in syn_dets], kind="stable") if syn_dets[i].has_marker]
    if opts.gallery and order:
        tiles = []
        for i in order[:opts.gallery]:
            tiles += _tiles(syn.images[i], syn_dets[i].bbox)
        figures.append(Figure.from_image_grid(np.stack(tiles), "Burned-in markers found in synthetic images",
                                              f"{min(len(order), opts.gallery)} of {len(order)} synthetic images "
                                              "with a marker, highest contrast first; each: the image with the "
                                              "marker boxed, then the marker zoomed", cols=8))
    if real_x is not None and opts.gallery:
        rorder = [i for i in np.argsort([-d.score for d in real_dets], kind="stable") if real_dets[i].has_marker]
        if rorder:
            tiles = []
            for i in rorder[:max(8, opts.gallery // 3)]:
                tiles += _tiles(real_x[i], real_dets[i].bbox)
            figures.append(Figure.from_image_grid(np.stack(tiles), "Burned-in markers found in real images",
                                                  f"{len(rorder)} real images with a marker; the highest-contrast "
                                                  "ones, boxed and zoomed", cols=8))
    steps.step("gallery")

    so = syn_counts["overall"]
    ro = real_counts["overall"] if real_counts else None
    headline: dict[str, Any] = {
        "synthetic_marker_rate": so["markers"] / so["n"],
        "real_marker_rate": _rate(ro["markers"], ro["n"]) if ro else None,
        "marker_rate_diff": (so["markers"] / so["n"] - ro["markers"] / ro["n"]) if ro and ro["n"] else None,
        "marker_p_value": _fisher(so["markers"], so["n"], ro["markers"], ro["n"]) if ro else None,
        "synthetic_text_rate": so["text"] / so["n"],
        "real_text_rate": _rate(ro["text"], ro["n"]) if ro else None,
        "suggested_crop_border": suggested,
    }
    if after:
        headline["synthetic_marker_rate_cropped"] = after["synthetic"]["markers"] / max(1, after["synthetic"]["n"])
    details = {
        "settings": _settings(opts), "real": real_desc, "suggested_crop_border": suggested, "crop_border": crop,
        "counts": {"synthetic": syn_counts, "real": real_counts}, "after_crop": after,
        "synthetic_markers": [{"index": int(i), "seed": int(syn.seeds[i]) if i < len(syn.seeds) else int(i),
                               **syn_dets[i].to_dict()} for i in order],
    }
    prov = Provenance(seeds=[int(v) for v in syn.seeds],
                      set_sizes={"synthetic": syn.n, **({"real": ro["n"]} if ro else {})},
                      data=real_desc, options=opts.model_dump(mode="json"),
                      extractors={"marker detector": f"{DETECTOR} (scikit-image white top-hat + connected "
                                                     "components; no weights)"})
    return EvaluationResult(kind="bias", subject=Subject(description=syn.description, batch_id=syn.batch_id,
                                                         model_id=syn.model_id, model_hash=syn.model_hash, n=syn.n),
                            provenance=prov, headline=headline, tables=tables, figures=figures, warnings=warnings,
                            details=details)


def _stratum_label(key: str) -> tuple[str, str]:
    if key == "overall":
        return "all images", ""
    f, state = key.split("=")
    return f, state


def _rates_table(syn: dict, real: dict | None, opts: BiasOptions, real_desc: dict) -> Table:
    rows = []
    order = ["overall"] + [f"{f}={state}" for f in FINDINGS for state in STATES.values()]
    for key in [k for k in order if k in syn or k in (real or {})]:
        s = syn.get(key, {"n": 0, "markers": 0, "text": 0})
        r = (real or {}).get(key)
        if key != "overall" and _redundant(key, syn, real):
            continue
        f, state = _stratum_label(key)
        s_lo, s_hi = wilson_interval(s["markers"], s["n"], opts.ci_level)
        r_lo, r_hi = wilson_interval(r["markers"], r["n"], opts.ci_level) if r else (None, None)
        rows.append([f, state, s["n"], _rate(s["markers"], s["n"]), s_lo, s_hi, _rate(s["text"], s["n"]),
                     r["n"] if r else None, _rate(r["markers"], r["n"]) if r else None, r_lo, r_hi,
                     _rate(r["text"], r["n"]) if r else None,
                     _fisher(s["markers"], s["n"], r["markers"], r["n"]) if r else None])
    src = real_desc.get("source")
    where = (f"real: {real_desc.get('dataset')} ({real_desc.get('split')} split)" if src == "data"
             else f"real: the shipped counts of {real_desc.get('model_id')}'s training set ({real_desc.get('data')})"
             if src == "shipped" else "no real side")
    return Table(title="Burned-in markers: synthetic vs real",
                 columns=["finding", "state", "synthetic n", "synthetic marker rate", "CI low", "CI high",
                          "synthetic text rate", "real n", "real marker rate", "CI low", "CI high", "real text rate",
                          "p (Fisher)"],
                 rows=rows,
                 note=f"Marker: a glyph-like blob of local contrast ≥ {opts.threshold:g} in the outer "
                      f"{opts.border:g} of the side; text: ≥ 2 such glyphs on one line. Synthetic states are the requested "
                      f"conditions, real ones the labels. {opts.ci_level:.0%} Wilson CIs; two-sided Fisher exact test "
                      f"of the marker rates. {where}.")


def _redundant(key: str, syn: dict, real: dict | None) -> bool:
    """A stratum that holds every image on both sides repeats the overall row."""
    for side in (syn, real):
        if side is None:
            continue
        if key in side and side[key]["n"] != side["overall"]["n"]:
            return False
        if key not in side and side["overall"]["n"]:
            return False
    return True


def _shortcut_table(syn: dict, real: dict | None) -> Table:
    """Within each side, the marker rate of images with vs without a finding: an association is a shortcut a
    classifier can learn (the published case: "R" on the normals)."""
    rows = []
    for f in FINDINGS:
        row: list[Any] = [f]
        any_side = False
        for side in (syn, real):
            p, a = (side or {}).get(f"{f}=present"), (side or {}).get(f"{f}=absent")
            if p and a:
                any_side = True
                row += [_rate(p["markers"], p["n"]), _rate(a["markers"], a["n"]),
                        _fisher(p["markers"], p["n"], a["markers"], a["n"])]
            else:
                row += [None, None, None]
        if any_side:
            rows.append(row)
    return Table(title="Marker rate by finding (a marker/label association is a shortcut)",
                 columns=["finding", "synthetic: present", "synthetic: absent", "p (Fisher)", "real: present",
                          "real: absent", "p (Fisher)"],
                 rows=rows,
                 note="Marker rate of the images where the finding is present vs absent, on each side; a synthetic "
                      "association the real data has too is inherited, one it lacks is the generator's own.")


def _crop_table(crop: float, syn: dict, real: dict | None, after: dict, opts: BiasOptions,
                suggested: float | None) -> Table:
    rows = [["synthetic", syn["overall"]["n"], _rate(syn["overall"]["markers"], syn["overall"]["n"]),
             _rate(after["synthetic"]["markers"], after["synthetic"]["n"])]]
    if real is not None:
        rows.append(["real", real["overall"]["n"], _rate(real["overall"]["markers"], real["overall"]["n"]),
                     _rate(after["real"]["markers"], after["real"]["n"]) if "real" in after else None])
    how = "asked for" if opts.crop_border is not None else "suggested: removes 95 % of the markers found"
    return Table(title=f"The crop_border control (F = {crop:g})",
                 columns=["side", "n", "marker rate", f"after crop_border({crop:g})"], rows=rows,
                 note=f"crop_border cuts F of the side from every edge and resizes back (what `utility --crop-border "
                      f"{crop:g}` trains and tests on); F {how}"
                      + (f"; suggested F = {suggested:g}" if suggested is not None and opts.crop_border is not None
                         else "") + ("" if "real" in after or real is None
                                     else ". Real after-crop rates need data (the shipped counts are uncropped)") + ".")


def _tiles(img: np.ndarray, bbox) -> list[np.ndarray]:
    """The image with the box drawn around the marker, and the marker region zoomed to the image size."""
    h, w = img.shape
    boxed = img.copy()
    y0, x0, y1, x1 = bbox
    ya, yb, xa, xb = max(0, y0 - 1), min(h - 1, y1), max(0, x0 - 1), min(w - 1, x1)
    boxed[ya, xa:xb + 1] = boxed[yb, xa:xb + 1] = 1.0
    boxed[ya:yb + 1, xa] = boxed[ya:yb + 1, xb] = 1.0
    side = max(y1 - y0, x1 - x0) * 2 + 4
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top, left = int(np.clip(cy - side // 2, 0, max(0, h - side))), int(np.clip(cx - side // 2, 0, max(0, w - side)))
    zoom = img[top:top + side, left:left + side]
    return [boxed, resize(zoom[None], h)[0] if zoom.shape[0] == zoom.shape[1] else resize(img[None], h)[0]]


register_evaluation(Evaluation(kind="bias", options=BiasOptions, run=run,
                               summary="burned-in markers / text (laterality letters, labels) in synthetic vs real "
                                       "images, per condition, and the crop_border control"))


# ---- the maintainers' program: the shipped real rates ----------------------------------------------------------------
#: the shipped models' training data, by the descriptors' ``training.data`` name → folder under the data root
DATA_FOLDERS = {"nih-chestxray14-64": "nih-chestxray14-64", "train": "kermany-pneumonia-224/train"}


def training_spec(descriptor: dict, data_root: Path) -> DataSpec:
    """The :class:`DataSpec` of a shipped model's training set, from its descriptor's ``training`` block."""
    tr = descriptor.get("training") or {}
    name = tr.get("data")
    if name not in DATA_FOLDERS:
        raise MetricsError(f"model {descriptor.get('model_id')}: unknown training data {name!r}")
    views = tr.get("views")
    views = None if views in (None, "all") else list(views)
    split_by = tr.get("split_by") or ("recorded" if tr.get("layout") == "nih" else "patient")
    return DataSpec(path=str(data_root / DATA_FOLDERS[name]), layout=tr.get("layout", "auto"), views=views,
                    split_by=split_by, name=Path(DATA_FOLDERS[name]).parts[0])


def build_rates(data_root: Path, models: Sequence[str] | None = None, out: Path = RATES_FILE,
                log=print) -> dict:
    """Scan each shipped model's training set with the default detector and write the counts to ``out``."""
    from services.generator.registry import WEIGHTS_DIR

    opts = BiasOptions()
    result: dict[str, Any] = {"version": 1, "settings": _settings(opts), "models": {}}
    done: dict[tuple[str, int], dict] = {}
    for f in sorted(WEIGHTS_DIR.glob("*.json")):
        desc = json.loads(f.read_text())
        mid = desc.get("model_id")
        if not mid or (models and mid not in models) or not desc.get("training"):
            continue
        spec = training_spec(desc, data_root)
        res = int(desc["resolution"])
        key = (spec.model_dump_json(), res)
        if key not in done:  # two models of one training set at one size: scanned once
            real = load_real(spec, res, splits=("train",))
            dets = detect_markers(real.train_images, opts.border, opts.threshold, opts.footprint)
            done[key] = _counts(dets, real.train_codes)
        counts = done[key]
        result["models"][mid] = {"data": spec.display, "layout": spec.layout, "views": spec.views,
                                 "split_by": spec.split_by, "split": "train", "resolution": res, "counts": counts}
        o = counts["overall"]
        log(f"{mid}: {spec.display} train ({spec.split_by}), {o['n']} images at {res} px: markers "
            f"{o['markers'] / o['n']:.3f}, text {o['text'] / o['n']:.3f}")
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.metrics.evaluation.bias", description=__doc__.split("\n")[0])
    ap.add_argument("--build-rates", action="store_true", help=f"write {RATES_FILE.name}")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[3].parent / "shared" / "data"),
                    help="folder holding the training datasets (default: ../shared/data beside the repository)")
    ap.add_argument("--models", nargs="*", help="only these shipped models (default: all)")
    ap.add_argument("--check", action="store_true", help="print the detector's painted-letter check on the NIH "
                                                         "64 px training images (and the Kermany ones at 128 px)")
    ap.add_argument("--out", default=str(RATES_FILE))
    args = ap.parse_args(argv)
    if not (args.build_rates or args.check):
        ap.print_help()
        return 2
    import torch

    torch.set_num_threads(1)
    root = Path(args.data_root)
    if args.check:
        for name, res, size, spec in (
                ("nih-chestxray14-64", 64, 0.12, DataSpec(path=str(root / DATA_FOLDERS["nih-chestxray14-64"]),
                                                          layout="nih", views=["PA", "AP"], split_by="recorded")),
                ("kermany-pneumonia-224", 128, 0.08, DataSpec(path=str(root / DATA_FOLDERS["train"]),
                                                              layout="folder", split_by="patient"))):
            x = load_real(spec, res, splits=("train",)).train_images
            print(f"{name} train at {res} px, letter {size:g} of the side:", painted_check(x, size))
    if args.build_rates:
        build_rates(root, args.models, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
