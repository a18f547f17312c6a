"""Study design: ``synthrad study create`` — from stored batches and a labelled real folder to a study.

1. Every synthetic image of the batches (each carries its condition) gets a *stratum*: the (finding, state)
   pairs its condition specifies ("pleural_effusion present"); an unconditioned image has the empty stratum.
2. The synthetic images are shuffled (seeded) and ``per_batch`` of each batch go to each mode (pairs, single);
   with both modes the two sets are disjoint.
3. Each synthetic image is matched with a real image of the same stratum — the real labels agree with every
   specified state — drawn without replacement, so no real image appears twice in a study. A stratum without
   enough real images is refused, naming it and the counts.
4. A pair puts its synthetic image left or right at random; the single mode (FIR) shows the synthetic image and
   its matched real image as two separate cases.
5. Likert (optional): per image of a case and per finding of its stratum, "Is <finding> present?" 1–5.
6. Every image is de-identified (:mod:`.images`) and stored under a random id; each reader sees every case in
   its own seeded order.

Everything random comes from one ``numpy`` generator seeded with ``seed``: the same inputs and seed give the
same design (``design_sha256`` over the canonical case list: which images, which side, which order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field, field_validator

from services.common.findings import FINDINGS, HUMAN_NAMES, Condition, FindingState

from .errors import StudyError
from .model import LIKERT_LEVELS

STUDY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
DEFAULT_INSTRUCTIONS = {
    "pair": "Each case shows two chest X-rays: one real, one synthetic. Choose the synthetic one, or Undecided.",
    "single": "Each case shows one chest X-ray, real or synthetic. Say which, or Undecided.",
    "likert": "Then rate, for each image, whether the named finding is present (1 definitely absent … "
              "5 definitely present).",
}


class StudyPlan(BaseModel):
    """What ``synthrad study create`` asks for (its flags are these fields)."""

    study_id: str | None = Field(None, pattern=STUDY_ID_PATTERN, description="study id (default: generated)")
    title: str = Field("Real or synthetic?", min_length=1, max_length=200)
    instructions: str | None = Field(None, max_length=4000, description="shown to readers (default: per mode)")
    batches: list[str] = Field(min_length=1, description="stored batch ids (any models)")
    real_path: str = Field(description="labelled real image folder (NIH labels.csv, Kermany, CheXpert, ...)")
    real_layout: str = Field("auto", description="nih | chexpert | mimic | folder | auto")
    real_name: str | None = Field(None, description="the real set's name in the design (default: folder name)")
    real_views: list[str] | None = Field(default_factory=lambda: ["PA"],
                                         description="view positions real images may have (None: all); a dataset "
                                                     "that records no views keeps every image")
    real_split: str | None = Field(None, description="only real images of this split (train / valid / test; "
                                                     "None: all), e.g. images the generator never saw")
    modes: list[Literal["pair", "single"]] = Field(default_factory=lambda: ["pair"], min_length=1)
    per_batch: int = Field(10, ge=1, le=10_000, description="synthetic images of each batch per mode")
    likert: bool = Field(False, description="ask 'Is <finding> present?' 1-5 for every image")
    allow_revise: bool = Field(False, description="readers may go back and change an answer")
    readers: list[str] = Field(default_factory=lambda: ["reader-1"], min_length=1, max_length=200)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    image_size: int | None = Field(None, ge=32, le=2048, description="shown size (default: largest synthetic)")

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, v):
        return list(dict.fromkeys(v))

    @field_validator("batches")
    @classmethod
    def _unique_batches(cls, v):
        dup = sorted({b for b in v if v.count(b) > 1})
        if dup:  # the same synthetic image in two cases would tell readers it is the synthetic one
            raise ValueError(f"batch {dup[0]} is given twice: give each batch once")
        return v

    @field_validator("readers")
    @classmethod
    def _reader_names(cls, v):
        names = [check_reader_name(n) for n in v]
        if len(set(names)) != len(names):
            raise ValueError("reader names must be unique")
        return names

    @property
    def instructions_text(self) -> str:
        if self.instructions:
            return self.instructions
        parts = [DEFAULT_INSTRUCTIONS[m] for m in self.modes]
        return " ".join(parts + ([DEFAULT_INSTRUCTIONS["likert"]] if self.likert else []))


def check_reader_name(name: str) -> str:
    """A reader's display name: 1-100 printable characters."""
    name = (name or "").strip()
    if not name or len(name) > 100 or any(not c.isprintable() for c in name):
        raise StudyError("a reader name must be 1-100 printable characters")
    return name


@dataclass
class SourceImage:
    """One image before de-identification, with where it came from (the answer key)."""

    source: Literal["real", "synthetic"]
    pixels: np.ndarray | None  # float32 HxW [0, 1]; real images are read only once chosen
    origin: str  # "batch <id> #<index>" or "<real set>/<relative path>"
    condition: Condition
    model_id: str | None = None
    model_hash: str | None = None
    seed: int | None = None
    path: Path | None = None


@dataclass
class PlannedCase:
    kind: Literal["pair", "single"]
    truth: str  # pair: the synthetic side; single: real / synthetic
    source: str  # model id the case is about
    strata: tuple[tuple[str, str], ...]
    images: dict[str, SourceImage]  # slot -> image
    likert: list[dict] = field(default_factory=list)  # [{slot, finding, state, text}]

    def canonical(self) -> dict:
        return {"kind": self.kind, "truth": self.truth, "source": self.source, "strata": [list(s) for s in self.strata],
                "images": {slot: im.origin for slot, im in sorted(self.images.items())}}


def design_document(plan: StudyPlan, cases: Sequence[PlannedCase]) -> dict:
    """What ``design_sha256`` covers: the options that shape the design (not the study's id, title, readers or
    the real folder's location — its name is in every real image's origin) and every case in order."""
    return {"plan": plan.model_dump(mode="json", exclude={"readers", "study_id", "title", "instructions",
                                                          "real_path", "real_name"}),
            "cases": [c.canonical() for c in cases]}


def stratum_of(condition: Condition) -> tuple[tuple[str, str], ...]:
    return tuple((f, s.value) for f, s in condition.states().items() if s != FindingState.UNSPECIFIED)


def stratum_label(stratum: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{HUMAN_NAMES[f]} {s}" for f, s in stratum) or "unconditioned"


def _matches(codes: Sequence[int], stratum: Sequence[tuple[str, str]]) -> bool:
    want = {"present": 1, "absent": 0}
    return all(codes[FINDINGS.index(f)] == want[s] for f, s in stratum)


def likert_questions(stratum: Sequence[tuple[str, str]], slots: Sequence[str]) -> list[dict]:
    where = {"left": " (left image)", "right": " (right image)", "single": ""}
    return [{"slot": slot, "finding": f, "state": s, "text": f"Is {HUMAN_NAMES[f]} present?{where[slot]}"}
            for slot in slots for f, s in stratum]


def plan_cases(plan: StudyPlan, synthetic: dict[str, list[SourceImage]], real: list[SourceImage]) -> list[PlannedCase]:
    """The study's cases in canonical order (pairs first, then single cases), all randomness from ``plan.seed``.

    ``synthetic``: batch id -> its images (in batch order); ``real``: the labelled real images (pixels may be
    None: only matched ones are read)."""
    rng = np.random.default_rng(plan.seed)
    chosen: dict[str, list[SourceImage]] = {m: [] for m in plan.modes}
    for batch_id in plan.batches:  # the order the batches were given in
        images = synthetic[batch_id]
        need = plan.per_batch * len(plan.modes)
        if len(images) < need:
            raise StudyError(f"batch {batch_id} has {len(images)} images; {len(plan.modes)} mode(s) x per_batch "
                             f"{plan.per_batch} needs {need}: lower --per-batch or generate a larger batch")
        order = rng.permutation(len(images))
        for k, mode in enumerate(plan.modes):
            chosen[mode] += [images[i] for i in order[k * plan.per_batch:(k + 1) * plan.per_batch]]

    real_order = [int(i) for i in rng.permutation(len(real))]
    codes = [r.condition.codes() for r in real]
    used: set[int] = set()
    candidates: dict[tuple, list[int]] = {}  # stratum -> its matching real images, in real_order (made once)
    cursor: dict[tuple, int] = {}  # how far each list has been consumed

    def match(img: SourceImage) -> SourceImage:
        stratum = stratum_of(img.condition)
        if stratum not in candidates:
            candidates[stratum] = [i for i in real_order if _matches(codes[i], stratum)]
        pool, at = candidates[stratum], cursor.get(stratum, 0)
        while at < len(pool) and pool[at] in used:  # taken by another stratum it also matches
            at += 1
        cursor[stratum] = at + 1
        if at < len(pool):
            used.add(pool[at])
            return real[pool[at]]
        have = len(pool)
        raise StudyError(f"not enough real images for stratum {stratum_label(stratum)!r}: the real set has {have}, "
                         f"the study needs more (lower --per-batch, or use a larger real folder)")

    cases: list[PlannedCase] = []
    for mode in plan.modes:
        for img in chosen[mode]:
            partner, stratum = match(img), stratum_of(img.condition)
            source = img.model_id or "unknown"
            if mode == "pair":
                side = "left" if rng.integers(2) == 0 else "right"
                other = "right" if side == "left" else "left"
                case = PlannedCase("pair", side, source, stratum, {side: img, other: partner})
                if plan.likert:
                    case.likert = likert_questions(stratum, ("left", "right"))
                cases.append(case)
            else:
                for im, truth in ((img, "synthetic"), (partner, "real")):
                    case = PlannedCase("single", truth, source, stratum, {"single": im})
                    if plan.likert:
                        case.likert = likert_questions(stratum, ("single",))
                    cases.append(case)
    return cases


def reader_order(kinds: Sequence[str], seed: int, reader_index: int) -> list[int]:
    """The case ordinals (``kinds[i]`` is case i's kind) in the order reader ``reader_index`` sees them: one
    block per kind (all pairs, then all single images: the answer keys differ between the kinds), each block in
    an order seeded per reader."""
    rng = np.random.default_rng([seed, 1 + reader_index])
    out: list[int] = []
    for kind in ("pair", "single"):
        block = [i for i, k in enumerate(kinds) if k == kind]
        out += [block[int(j)] for j in rng.permutation(len(block))]
    return out


def new_study_id() -> str:
    import secrets

    return f"study-{secrets.token_hex(4)}"


def check_study_id(study_id: str) -> str:
    if not re.fullmatch(STUDY_ID_PATTERN, study_id or ""):
        raise StudyError(f"study id {study_id[:60]!r} is not valid: use 1-40 lower-case letters, digits and '-'")
    return study_id


# ---- loading the inputs ----------------------------------------------------------------------------------------

def load_synthetic(batch_ids: Sequence[str], store_url: str | None = None) -> dict[str, list[SourceImage]]:
    """The images of stored batches (each file checked against its manifest by the store)."""
    from services.common.config import get_settings
    from services.common.store import BatchStore

    store = BatchStore(store_url or get_settings().resolved_store_url)
    out: dict[str, list[SourceImage]] = {}
    for batch_id in dict.fromkeys(batch_ids):
        manifest = store.get(batch_id)
        if not manifest.synthetic:
            raise StudyError(f"batch {batch_id} is not marked synthetic")
        out[batch_id] = [SourceImage("synthetic", img, f"batch {batch_id} #{rec.index}", rec.condition,
                                     manifest.model_id, manifest.model_hash, int(rec.seed))
                         for rec, img in store.iter_images(batch_id)]
    return out


def load_real(path: str, layout: str = "auto", name: str | None = None, views: Sequence[str] | None = ("PA",),
              split: str | None = None) -> list[SourceImage]:
    """The labelled real images of a folder (pixels read later, only for matched images): of ``views`` when the
    dataset records views (a dataset without any keeps every image), of ``split`` when given."""
    from services.common.datasets import load_records
    from services.common.datasets.loading import guess_layout
    from services.common.datasets.records import DatasetError

    root = Path(path).expanduser()
    try:
        if layout == "auto":
            layout = guess_layout(root) or "folder"
        records = load_records(root, layout, views=None, split=split)
    except DatasetError as e:
        raise StudyError(str(e)) from None
    if views is not None and any(r.view for r in records):
        wanted = {v.upper() for v in views}
        records = [r for r in records if (r.view or "").upper() in wanted]
    if not records:
        raise StudyError(f"no real images in {root.name} with views {', '.join(views or ['any'])}"
                         + (f" in split {split}" if split else "") + ": change --views / --split")
    label = name or root.name
    return [SourceImage("real", None, f"{label}/{r.path.relative_to(root).as_posix()}", r.condition(), path=r.path)
            for r in records]


def read_pixels(img: SourceImage) -> np.ndarray:
    if img.pixels is None:
        from services.common.codecs.files import read_image_file

        img.pixels = read_image_file(img.path)
    return img.pixels


ProgressFn = Callable[[int, int], None]

__all__ = ["LIKERT_LEVELS", "PlannedCase", "SourceImage", "StudyPlan", "check_reader_name", "check_study_id",
           "likert_questions",
           "load_real", "load_synthetic", "new_study_id", "plan_cases", "read_pixels", "reader_order",
           "stratum_label", "stratum_of"]
