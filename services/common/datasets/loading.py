"""``load_records``: one entry point over the layouts, with view and split filters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from ..logging import get_logger
from .chexpert import load_chexpert
from .folder import load_folder
from .mimic import load_mimic
from .nih import load_nih
from .records import DatasetError, Record, check_uncertain, normalise_split
from .splits import check_split_by, patient_split

LAYOUTS = ("nih", "chexpert", "mimic", "folder")
log = get_logger("datasets")


def guess_layout(root: Path) -> str | None:
    """The layout a folder looks like, from its label files (None when nothing matches)."""
    root = Path(root)
    if any(root.glob("Data_Entry_2017*.csv*")):
        return "nih"
    if (root / "labels.csv").exists():
        head = (root / "labels.csv").open().readline()
        return "nih" if "finding_labels" in head else "folder"
    if (root / "train.csv").exists() or (root / "valid.csv").exists():
        return "chexpert"
    if any(root.glob("*metadata.csv*")) and any(root.glob("*chexpert.csv*")):
        return "mimic"
    if any(root.glob("*.csv")) or any(p.is_dir() for p in root.iterdir()):
        return "folder"
    return None


def _parse_views(views) -> set[str] | None:
    if views is None:
        return None
    if isinstance(views, str):
        views = views.split(",")
    views = {v.strip().upper() for v in views if v.strip()}
    return None if not views or "ALL" in views else views


def load_records(path: str | Path, layout: str, views: Iterable[str] | str | None = ("PA",),
                 split: str | None = None, uncertain: str = "ignore", split_by: str = "recorded") -> list[Record]:
    """Records of a dataset folder. ``views``: kept view positions (None / "all" = every view; images
    without a recorded view are only kept then); ``split``: train / valid / test; ``uncertain``: policy for
    uncertain (-1) labels — ignore (unspecified), positive, negative; ``split_by``: "recorded" (the dataset's
    own splits) or "patient" (patient-disjoint train / test by a hash of the patient id, :mod:`.splits`)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; pass the dataset folder that holds the label table")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    check_uncertain(uncertain)
    check_split_by(split_by)
    try:
        if layout == "nih":
            recs, missing = load_nih(root)
        elif layout == "chexpert":
            recs, missing = load_chexpert(root, uncertain)
        elif layout == "mimic":
            recs, missing = load_mimic(root, uncertain)
        else:
            recs, missing = load_folder(root, uncertain)
    except DatasetError as e:
        guess = guess_layout(root)
        hint = f" This folder looks like layout {guess!r}: try --layout {guess}." if guess and guess != layout else ""
        raise DatasetError(f"{str(e).rstrip('.')}.{hint}") from None
    if missing:
        log.warning("images listed but not on disk were skipped", extra={"missing": missing, "root": str(root)})
    if split_by == "patient":
        recs = patient_split(recs)
    everything, wanted = recs, _parse_views(views)
    if wanted is not None:
        recs = [r for r in recs if r.view in wanted]
    if split is not None:
        known = sorted({r.split for r in everything if r.split})
        if everything and normalise_split(split) not in known:
            raise DatasetError(
                f"unknown split {split!r} (known: {', '.join(known) if known else 'none; this dataset records no splits'})"
            )
        recs = [r for r in recs if r.split == normalise_split(split)]
    if everything and not recs:
        def counts(attr: str) -> str:
            return ", ".join(f"{k} {n}" for k, n in Counter(getattr(r, attr) or "unknown" for r in everything).most_common())

        raise DatasetError(
            f"none of the {len(everything)} images in {root} match views {','.join(sorted(wanted)) if wanted else 'all'}"
            f"{f' and split {split!r}' if split else ''} (views present: {counts('view')}; splits: {counts('split')}); "
            "pass views='all' (--views all) or another view / split"
        )
    return recs
