"""The one vocabulary of findings and the one condition type.

Every layer (REST, gRPC, CLI, models, metrics, datasets) speaks in these terms:

* ``FINDINGS`` — the four findings a condition can constrain, in a fixed order
  (that order is the order of model inputs and label vectors).
* ``FindingState`` — present / absent / unspecified for each finding.
* ``Condition`` — a frozen pydantic model with one state per finding.  "No finding"
  is the condition in which all four findings are absent.

Model code uses :meth:`Condition.codes` (0 absent, 1 present, 2 unspecified) so that an
"unspecified" state is a learnable input (classifier-free guidance drops to it).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, model_validator

FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "lung_opacity",
    "pleural_effusion",
    "enlarged_cardiac_silhouette",
)
NO_FINDING = "no_finding"

#: Alternative names accepted wherever a finding name is accepted (CLI, REST, gRPC, CSV mapping).
FINDING_ALIASES: dict[str, str] = {
    "cardiomegaly": "enlarged_cardiac_silhouette",
    "effusion": "pleural_effusion",
    "opacity": "lung_opacity",
    "airspace_opacity": "lung_opacity",
}

HUMAN_NAMES: dict[str, str] = {
    "atelectasis": "atelectasis",
    "lung_opacity": "lung opacity",
    "pleural_effusion": "pleural effusion",
    "enlarged_cardiac_silhouette": "enlarged cardiac silhouette",
}


class ConditionError(ValueError):
    """A condition or finding name that cannot be understood (maps to HTTP 422 / INVALID_ARGUMENT)."""


class FindingState(str, Enum):
    ABSENT = "absent"
    PRESENT = "present"
    UNSPECIFIED = "unspecified"

    @property
    def code(self) -> int:
        return _STATE_CODES[self]


_KEY_LETTERS = {"atelectasis": "a", "lung_opacity": "o", "pleural_effusion": "e", "enlarged_cardiac_silhouette": "c"}
_STATE_CODES = {FindingState.ABSENT: 0, FindingState.PRESENT: 1, FindingState.UNSPECIFIED: 2}
_CODE_STATES = {v: k for k, v in _STATE_CODES.items()}
UNSPECIFIED_CODE = 2


def canonical_finding(name: str) -> str:
    """Map a user-given finding name (any case, spaces or dashes, aliases) to the vocabulary."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = FINDING_ALIASES.get(key, key)
    if key not in FINDINGS and key != NO_FINDING:
        raise ConditionError(
            f"unknown finding {name!r}; known findings: {', '.join(FINDINGS)}, {NO_FINDING} "
            f"(aliases: {', '.join(sorted(FINDING_ALIASES))})"
        )
    return key


def _coerce_state(value: Any, finding: str) -> FindingState:
    if isinstance(value, FindingState):
        return value
    if value is None:
        return FindingState.UNSPECIFIED
    if isinstance(value, bool):
        return FindingState.PRESENT if value else FindingState.ABSENT
    if isinstance(value, int) and value in _CODE_STATES:
        return _CODE_STATES[value]
    if isinstance(value, str):
        v = value.strip().lower()
        table = {
            "present": FindingState.PRESENT, "positive": FindingState.PRESENT, "yes": FindingState.PRESENT,
            "true": FindingState.PRESENT, "1": FindingState.PRESENT,
            "absent": FindingState.ABSENT, "negative": FindingState.ABSENT, "no": FindingState.ABSENT,
            "false": FindingState.ABSENT, "0": FindingState.ABSENT,
            "unspecified": FindingState.UNSPECIFIED, "unknown": FindingState.UNSPECIFIED, "any": FindingState.UNSPECIFIED,
            "": FindingState.UNSPECIFIED,
        }
        if v in table:
            return table[v]
    raise ConditionError(
        f"invalid state {value!r} for finding {finding!r}; use present, absent or unspecified"
    )


class Condition(BaseModel):
    """Per-finding states. Construct with keyword states, :meth:`from_findings`, or the prompt parser."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    atelectasis: FindingState = FindingState.UNSPECIFIED
    lung_opacity: FindingState = FindingState.UNSPECIFIED
    pleural_effusion: FindingState = FindingState.UNSPECIFIED
    enlarged_cardiac_silhouette: FindingState = FindingState.UNSPECIFIED

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        if isinstance(data, Condition):
            return data.model_dump()
        if not isinstance(data, Mapping):
            raise ConditionError(f"a condition must be a mapping of finding -> state, got {type(data).__name__}")
        out: dict[str, FindingState] = {}
        no_finding = False
        for raw_key, value in data.items():
            key = canonical_finding(str(raw_key))
            if key == NO_FINDING:
                no_finding = bool(value) if not isinstance(value, str) else _coerce_state(value, key) == FindingState.PRESENT
                continue
            state = _coerce_state(value, key)
            if key in out and out[key] != state:
                raise ConditionError(f"finding {key!r} given twice with different states")
            out[key] = state
        if no_finding:
            clash = [k for k, s in out.items() if s == FindingState.PRESENT]
            if clash:
                raise ConditionError(f"no_finding contradicts present finding(s): {', '.join(clash)}")
            for f in FINDINGS:
                out.setdefault(f, FindingState.ABSENT)
        return out

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_findings(cls, present: Iterable[str] = (), absent: Iterable[str] = ()) -> "Condition":
        states: dict[str, FindingState] = {}
        for name in present:
            key = canonical_finding(name)
            if key == NO_FINDING:
                raise ConditionError("no_finding cannot be 'present' alongside a finding list; use Condition.no_finding()")
            states[key] = FindingState.PRESENT
        for name in absent:
            key = canonical_finding(name)
            if states.get(key) == FindingState.PRESENT:
                raise ConditionError(f"finding {key!r} is both present and absent")
            states[key] = FindingState.ABSENT
        return cls(**states)

    @classmethod
    def no_finding(cls) -> "Condition":
        return cls(**{f: FindingState.ABSENT for f in FINDINGS})

    @classmethod
    def unconditional(cls) -> "Condition":
        return cls()

    @classmethod
    def from_codes(cls, codes: Iterable[int]) -> "Condition":
        codes = list(codes)
        if len(codes) != len(FINDINGS):
            raise ConditionError(f"expected {len(FINDINGS)} codes, got {len(codes)}")
        return cls(**{f: _CODE_STATES[int(c)] for f, c in zip(FINDINGS, codes)})

    # ---- views --------------------------------------------------------------------------
    def states(self) -> dict[str, FindingState]:
        return {f: getattr(self, f) for f in FINDINGS}

    def codes(self) -> list[int]:
        """0 absent, 1 present, 2 unspecified, in ``FINDINGS`` order (model input)."""
        return [getattr(self, f).code for f in FINDINGS]

    def present(self) -> list[str]:
        return [f for f in FINDINGS if getattr(self, f) == FindingState.PRESENT]

    def absent(self) -> list[str]:
        return [f for f in FINDINGS if getattr(self, f) == FindingState.ABSENT]

    @property
    def is_no_finding(self) -> bool:
        return all(getattr(self, f) == FindingState.ABSENT for f in FINDINGS)

    def key(self) -> str:
        """Short canonical string, stable across versions: e.g. ``"a0.o?.e1.c0"``."""
        sym = {FindingState.ABSENT: "0", FindingState.PRESENT: "1", FindingState.UNSPECIFIED: "?"}
        return ".".join(f"{_KEY_LETTERS[f]}{sym[getattr(self, f)]}" for f in FINDINGS)

    def to_json_dict(self) -> dict[str, str]:
        """Compact JSON form: only specified findings (empty dict = unconditional)."""
        return {f: s.value for f, s in self.states().items() if s != FindingState.UNSPECIFIED}

    def describe(self) -> str:
        """Human-readable text, e.g. ``"pleural effusion; no enlarged cardiac silhouette"``."""
        if self.is_no_finding:
            return "no finding"
        parts = [HUMAN_NAMES[f] for f in self.present()] + [f"no {HUMAN_NAMES[f]}" for f in self.absent()]
        return "; ".join(parts) if parts else "unconditional"

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.describe()
