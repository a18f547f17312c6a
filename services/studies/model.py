"""The typed objects of a reader study, shared by design, database, statistics, report and API.

A study has *cases*. A **pair** case shows one real and one synthetic image side by side ("which one is
synthetic?": left / right / undecided); a **single** case shows one image ("real or synthetic?": real /
synthetic / undecided) — the fake-identification (FIR) mode. Every case belongs to a *stratum*: the
(finding, state) pairs its synthetic image was generated for, which its real image matches (empty: an
unconditioned image, matched with any real one). A case may carry Likert questions: "Is <finding> present?",
1 (definitely absent) … 5 (definitely present), one per image and finding of the stratum.

The answer key (which side is synthetic, where each image came from) lives only in the database and in
:class:`AnswerRow`, which the owner's statistics read; nothing a reader receives contains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CaseKind = Literal["pair", "single"]
#: the answers a reader can give, per case kind
CHOICES: dict[str, tuple[str, ...]] = {
    "pair": ("left", "right", "undecided"),
    "single": ("real", "synthetic", "undecided"),
}
#: the image slots of a case, per kind
SLOTS: dict[str, tuple[str, ...]] = {"pair": ("left", "right"), "single": ("single",)}
LIKERT_LEVELS = (1, 2, 3, 4, 5)
LIKERT_LABELS = {1: "definitely absent", 2: "probably absent", 3: "unsure", 4: "probably present",
                 5: "definitely present"}
UNDECIDED = "undecided"
REAL = "real"


@dataclass(frozen=True)
class LikertRow:
    """One Likert rating of one image for one finding."""

    slot: str  # left / right / single
    image_source: str  # "real" or "synthetic"
    model_id: str | None  # the generator of a synthetic image; None for a real image
    finding: str  # a FINDINGS name
    state: str  # the state the image should show: present / absent (requested or labelled)
    rating: int  # 1..5


@dataclass(frozen=True)
class AnswerRow:
    """One reader's answer to one case, joined with the case's truth: the input of :mod:`.stats`.

    ``truth`` is the correct choice: for a pair, the side of the synthetic image ("left"/"right"); for a single
    case, "real" or "synthetic". ``source`` is the generator (model id) the case is about: the synthetic image's
    model, or for a real single image, the model whose images it was matched with. ``strata`` are the case's
    (finding, state) pairs; () for an unconditioned case."""

    reader_id: str
    case_id: str
    kind: CaseKind
    choice: str
    truth: str
    source: str
    strata: tuple[tuple[str, str], ...] = ()
    likert: tuple[LikertRow, ...] = ()
    answered_at: str = ""

    @property
    def decided(self) -> bool:
        return self.choice != UNDECIDED

    @property
    def correct(self) -> bool:
        return self.choice == self.truth


@dataclass(frozen=True)
class Reader:
    id: str
    name: str


@dataclass(frozen=True)
class ImageView:
    """What a reader gets of one image of a case: its slot and an opaque id (no source, no file name)."""

    slot: str
    image_id: str


@dataclass(frozen=True)
class LikertQuestion:
    slot: str
    finding: str  # FINDINGS name
    text: str  # "Is pleural effusion present?"


@dataclass(frozen=True)
class CaseView:
    """One case as a reader sees it (no answer key)."""

    case_id: str
    position: int  # 0-based in this reader's order
    total: int
    kind: CaseKind
    images: tuple[ImageView, ...]
    choices: tuple[str, ...]
    likert: tuple[LikertQuestion, ...] = ()
    answer: dict | None = None  # this reader's stored answer when the case is revisited


@dataclass
class StudyInfo:
    """A study's public description (what readers and owners both see)."""

    id: str
    title: str
    instructions: str
    allow_revise: bool
    likert: bool
    modes: tuple[str, ...]
    n_cases: int
    image_size: int
    created: str
    seed: int
    readers: list[Reader] = field(default_factory=list)
    design_sha256: str = ""  # over the design (options, cases, sides, image origins): checked on every read


__all__ = ["AnswerRow", "CHOICES", "CaseKind", "CaseView", "ImageView", "LIKERT_LABELS", "LIKERT_LEVELS",
           "LikertQuestion", "LikertRow", "REAL", "Reader", "SLOTS", "StudyInfo", "UNDECIDED"]
