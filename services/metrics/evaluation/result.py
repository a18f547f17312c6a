"""What every evaluation returns: a JSON-able :class:`EvaluationResult` of tables, headline numbers and figures.

The CLI prints its tables, the HTML report (``evaluation/report.py``) renders them with the figures, REST and gRPC
return it as JSON. Every number is traceable: ``provenance`` names the extractor(s), the classifier (with its
weights' sha256), the seeds and the set sizes the numbers were computed with.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

VERSION = "synthrad-evaluation/1"


class Table(BaseModel):
    title: str
    columns: list[str]
    rows: list[list[Any]]  # cells: str | int | float | None (None prints as "n/a")
    note: str = ""

    def markdown(self, digits: int = 3) -> str:
        def cell(v: Any) -> str:
            if v is None:
                return "n/a"
            if isinstance(v, bool):
                return "yes" if v else "no"
            if isinstance(v, float):
                return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.4g}"
            return str(v)

        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


class Figure(BaseModel):
    title: str
    png_base64: str = Field(description="the figure as a PNG, base64")
    caption: str = ""

    @classmethod
    def from_matplotlib(cls, fig, title: str, caption: str = "") -> "Figure":
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return cls(title=title, png_base64=base64.b64encode(buf.getvalue()).decode(), caption=caption)

    @classmethod
    def from_image_grid(cls, images, title: str, caption: str = "", cols: int = 8) -> "Figure":
        """A grid of greyscale images (n, h, w) float [0, 1] (e.g. nearest-neighbour pairs, side by side)."""
        import numpy as np
        from PIL import Image

        imgs = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
        n, h, w = imgs.shape[:3]
        cols = max(1, min(cols, n))
        rows = (n + cols - 1) // cols
        grid = np.ones((rows * (h + 2), cols * (w + 2)), np.float32)
        for i in range(n):
            r, c = divmod(i, cols)
            grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = imgs[i] if imgs[i].ndim == 2 else imgs[i].mean(-1)
        buf = io.BytesIO()
        Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
        return cls(title=title, png_base64=base64.b64encode(buf.getvalue()).decode(), caption=caption)


class Provenance(BaseModel):
    """What the numbers were computed with (every number says its extractor, classifier, seeds and set sizes)."""

    extractors: dict[str, str] = Field(default_factory=dict, description="extractor name -> weights sha256")
    classifier: dict[str, Any] | None = Field(None, description="architecture, weights sha256, training data, or "
                                                                "the training recipe when trained per seed")
    seeds: list[int] = Field(default_factory=list)
    set_sizes: dict[str, int] = Field(default_factory=dict, description="e.g. real_train, real_test, synthetic")
    data: dict[str, Any] = Field(default_factory=dict, description="real data: dataset, layout, split rule")
    options: dict[str, Any] = Field(default_factory=dict, description="the evaluation's resolved options")


class Subject(BaseModel):
    """What was evaluated: a stored batch (or a folder / arrays) of one model."""

    description: str
    batch_id: str | None = None
    model_id: str | None = None
    model_hash: str | None = None
    n: int = 0


class EvaluationResult(BaseModel):
    version: str = VERSION
    kind: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    subject: Subject
    provenance: Provenance = Field(default_factory=Provenance)
    headline: dict[str, float | int | str | bool | None] = Field(
        default_factory=dict, description="the few numbers a reader wants first (also what REST/gRPC summarise)")
    tables: list[Table] = Field(default_factory=list)
    figures: list[Figure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict, description="kind-specific JSON (per-image values, ...)")
    seconds: float = 0.0

    def markdown(self) -> str:
        head = [f"## {self.kind}: {self.subject.description}", ""]
        if self.headline:
            head += [", ".join(f"{k} = {_fmt(v)}" for k, v in self.headline.items()), ""]
        body = [t.markdown() + "\n" for t in self.tables]
        warn = [f"- warning: {w}" for w in self.warnings]
        return "\n".join(head + body + warn)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)
