"""Free-text prompt -> :class:`Condition`, with synonyms and NegEx-style negation.

Text is split into sentences (``. ; ! ? newline``) and clauses (commas and terms such as
"but", "however"). A negation cue ("no", "without", "negative for", "free of", "clear of",
"resolved", ...) negates every finding after it in its clause; a trailing cue ("... has
resolved", "... is absent") negates the findings before it. "no X, Y or Z" negates all three.

Hedged mentions ("possible X", "probable X", "cannot exclude X", "X?", "X is not excluded") are uncertain
and refused: the prompt must say present or absent. Known radiology findings outside our vocabulary
(pneumothorax, nodule, ...) are refused when mentioned as present, and ignored when negated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .findings import FINDINGS, HUMAN_NAMES, NO_FINDING, Condition, ConditionError, FindingState


class PromptError(ConditionError):
    """The prompt names no known finding, or contradicts itself. ``.understood`` lists what was parsed."""

    def __init__(self, message: str, understood: list[str] | None = None):
        super().__init__(message)
        self.understood = list(understood or [])


# (pattern, finding or NO_FINDING or None to ignore, fixed state or None = decided by negation)
_P, _A = FindingState.PRESENT, FindingState.ABSENT
_OTHERWISE = "otherwise_normal"
_HEART = r"(?:heart|cardiac silhouette|cardiomediastinal silhouette|cardiac size|heart size|cardiac shadow)"
_UNSUPPORTED = "unsupported:"  # prefix of findings we recognise but do not model
_UNSUPPORTED_TERMS: list[tuple[str, str]] = [
    (r"pneumothora(?:x|ces)", "pneumothorax"),
    (r"(?:pulmonary |lung )?nodules?", "nodule"),
    (r"(?:lung |pulmonary |mediastinal |hilar )?mass(?:es)?", "mass"),
    (r"(?:pulmonary |interstitial |alveolar )?o?edema", "edema"),
    (r"emphysema|emphysematous(?: changes?)?", "emphysema"),
    (r"(?:pulmonary |interstitial )?fibrosis|fibrotic changes?", "fibrosis"),
    (r"(?:rib |clavicular |vertebral )?fractures?", "fracture"),
    (r"(?:hiatal |hiatus |diaphragmatic )?hernias?", "hernia"),
    (r"pleural thickening", "pleural thickening"),
    (r"pneumoperitoneum|free (?:intraperitoneal |subdiaphragmatic |sub diaphragmatic )?air", "pneumoperitoneum"),
    (r"support devices?|(?:endotracheal|et|nasogastric|ng|chest|feeding) tubes?|central (?:venous )?(?:lines?|catheters?)"
     r"|picc(?: lines?)?|pacemakers?", "support devices"),
]
_TERMS: list[tuple[str, str | None, FindingState | None]] = [
    # "X, otherwise normal": findings not named are absent
    (r"otherwise (?:normal|unremarkable|clear|negative)", _OTHERWISE, _P),
    # no-finding phrases (their own negation is part of the phrase)
    (r"no (?:acute )?(?:cardiopulmonary|cardiothoracic|intrathoracic|thoracic) (?:process|abnormalit(?:y|ies)|disease|findings?|pathology)", NO_FINDING, _P),
    (r"no acute (?:findings?|abnormalit(?:y|ies)|disease|process)", NO_FINDING, _P),
    (r"no (?:radiographic )?(?:findings?|abnormalit(?:y|ies))", NO_FINDING, _P),
    (r"normal (?:chest )?(?:radiograph|x ?ray|xray|cxr|film|study|exam(?:ination)?|image|chest)", NO_FINDING, _P),
    (r"unremarkable (?:chest )?(?:radiograph|x ?ray|xray|cxr|film|study|exam(?:ination)?|chest)", NO_FINDING, _P),
    (r"(?:no[ _]finding|normal|healthy|unremarkable)", NO_FINDING, _P),
    # terms that look like ours but are not (masked so they are not misread)
    (r"pericardial effusion", None, None),
    (r"no (?:interval |significant )?(?:change|increase|decrease|worsening|improvement)(?: in| of)?", None, None),
    (r"not only", None, None),
    # enlarged cardiac silhouette
    (rf"{_HEART} (?:is |appears |remains )?(?:normal|within normal limits|not enlarged|unremarkable)(?: in size)?", "enlarged_cardiac_silhouette", _A),
    (r"normal (?:heart size|heart|cardiac size|cardiac silhouette|cardiomediastinal silhouette|size heart)", "enlarged_cardiac_silhouette", _A),
    (rf"{_HEART} (?:is |appears |remains )?(?:mildly |moderately |severely |markedly )?enlarged", "enlarged_cardiac_silhouette", None),
    (r"enlarged (?:cardiac|cardiomediastinal|heart) (?:silhouette|shadow|size)|enlarged (?:heart|cardiomediastinum)", "enlarged_cardiac_silhouette", None),
    (r"cardiomegaly|cardiac enlargement|enlargement of the (?:heart|cardiac silhouette)", "enlarged_cardiac_silhouette", None),
    # pleural effusion
    (r"(?:pleural )?effusions?|pleural fluid|hydrothorax|blunt(?:ing|ed) (?:of )?(?:the )?costophrenic angles?", "pleural_effusion", None),
    # atelectasis
    (r"atelectas[ie]s|atelectatic(?: changes?)?|(?:lobar |segmental |lung )?collapse|volume loss", "atelectasis", None),
    # lung opacity (consolidation / infiltrate / pneumonia stand in)
    (r"lungs? (?:are |is )?clear(?! of)", "lung_opacity", _A),
    (r"(?:lung |airspace |air space |pulmonary |parenchymal |alveolar )?opacit(?:y|ies)|opacification",
     "lung_opacity", None),
    (r"air ?space (?:disease|process)|consolidat(?:ion|ions|ive(?: changes?)?)|infiltrat(?:e|es|ion|ions)|pneumonias?|ground glass",
     "lung_opacity", None),
]
_TERMS += [(p, _UNSUPPORTED + name, None) for p, name in _UNSUPPORTED_TERMS]
_TERM_RES = [(re.compile(rf"\b(?:{p})\b"), f, s) for p, f, s in _TERMS]

# Hedges make a mention uncertain (neither present nor absent). They are matched, and blanked out, before
# the negation cues, so "cannot rule out" / "not excluded" are hedges rather than negations.
_HEDGE_WORDS = r"possible|possibly|probable|probably|likely|unlikely|questionable|suspected|equivocal|presumed"
_PRE_HEDGES = re.compile(  # hedge the findings after them in the clause
    rf"\b(?:{_HEDGE_WORDS}|question of|suspicious for|suspicion of|concern(?:ing)? for|"
    r"may (?:be|represent|reflect|indicate)|might (?:be|represent)|could (?:be|represent)|"
    r"(?:cannot|can't|can not) (?:exclude|rule out)|differential (?:includes|diagnosis)|versus|vs)\b"
)
_POST_HEDGES = re.compile(  # hedge the findings before them in the clause
    rf"\b(?:(?:is|are|remains?|seems?|appears?)(?: to be)? (?:{_HEDGE_WORDS})|(?:{_HEDGE_WORDS})\s*\??\s*$|(?:{_HEDGE_WORDS}) (?:present|seen|identified)|"
    r"(?:is |are )?not (?:be )?(?:excluded|ruled out)|(?:cannot|can't|can not) be (?:excluded|ruled out)|"
    r"may be present|versus|vs)\b|\?"
)

_PRE_CUES = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|resolved|resolution of|absence of|absent|"
    r"neither|nor|denies|rules? out|ruled out|no evidence of|no signs? of)\b"
)
_POST_CUES = re.compile(
    r"\b(?:(?:has |have )?resolved|(?:is |are )?absent|(?:is |are )?(?:not|no longer) (?:seen|present|identified|visuali[sz]ed|evident)|"
    r"(?:is |are |was |were )?ruled out|(?:has |have )?cleared|gone)\b"
)
# Structured-report answers after a finding: "Effusion: none", "Cardiomegaly - negative" ("-" is a space by
# now), "Opacity: no", "Atelectasis: absent". A bare "no" only counts after a colon ("effusion and no
# cardiomegaly" negates cardiomegaly, not effusion); "negative for X" is a forward cue for X, not an answer.
_POST_ANSWERS = re.compile(r":\s*(?:no|none|negative|absent)\b|\b(?:none|negative)\b(?!\s+for\b)")
_SENTENCES = re.compile(r"[.;!\n]+|(?<=\?)")  # a "?" stays with its sentence (it hedges what precedes it)
_CLAUSE_BREAK = re.compile(r",|\b(?:but|however|although|though|yet|except|apart from|aside from|whereas|while)\b")
_OR = re.compile(r"\b(?:or|nor)\b")


@dataclass
class _Hit:
    finding: str
    state: FindingState
    text: str
    uncertain: bool = False


def _normalise(text: str) -> str:
    text = text.lower().replace("_", " ").replace("-", " ")
    text = re.sub(r"(?:(?<=\s)|^)\?(?=\w)", "questionable ", text)  # "?effusion": radiology shorthand for a query
    return re.sub(r"[ \t]+", " ", text)


def _find_terms(clause: str) -> tuple[list[tuple[int, int, str | None, FindingState | None]], str]:
    """Longest-first, non-overlapping term matches; returns hits and the clause with hits blanked out."""
    cands = []
    for rx, finding, state in _TERM_RES:
        for m in rx.finditer(clause):
            cands.append((m.start(), m.end(), finding, state))
    cands.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
    taken: list[tuple[int, int, str | None, FindingState | None]] = []
    for c in cands:
        if all(c[1] <= t[0] or c[0] >= t[1] for t in taken):
            taken.append(c)
    taken.sort()
    masked = list(clause)
    for s, e, _, _ in taken:
        masked[s:e] = "#" * (e - s)
    return taken, "".join(masked)


def _parse_clause(clause: str, inherited_negation: bool) -> tuple[list[_Hit], bool]:
    """Hits in one clause, and whether the clause opened with a forward negation cue."""
    terms, masked = _find_terms(clause)
    pre_hedges, post_hedges = list(_PRE_HEDGES.finditer(masked)), list(_POST_HEDGES.finditer(masked))
    hedge_pre, hedge_post = [m.end() for m in pre_hedges], [m.start() for m in post_hedges]
    for m in pre_hedges + post_hedges:  # hedges are not negations ("cannot rule out", "not excluded")
        masked = masked[:m.start()] + "~" * (m.end() - m.start()) + masked[m.end():]
    pre = [m.end() for m in _PRE_CUES.finditer(masked)]
    post = [m.start() for m in _POST_CUES.finditer(masked)] + [m.start() for m in _POST_ANSWERS.finditer(masked)]
    hits = []
    for start, end, finding, fixed in terms:
        if finding is None:
            continue
        if fixed is not None:
            state = fixed
        else:
            negated = inherited_negation or any(p <= start for p in pre) or any(p >= end for p in post)
            state = _A if negated else _P
        uncertain = any(p <= start for p in hedge_pre) or any(p >= end for p in hedge_post)
        hits.append(_Hit(finding, state, clause.strip(), uncertain))
    opens_negated = bool(pre) and bool(terms) and min(pre) <= terms[0][0]
    return hits, opens_negated


def _parse_sentence(sentence: str) -> list[_Hit]:
    clauses = [c.strip() for c in _CLAUSE_BREAK.split(sentence)]
    clauses = [c for c in clauses if c]
    hits: list[_Hit] = []
    i = 0
    while i < len(clauses):
        found, negated = _parse_clause(clauses[i], False)
        hits += found
        # "no X, Y or Z": carry the negation over comma segments up to the one holding "or"/"nor".
        if negated:
            for j in range(i + 1, len(clauses)):
                if _PRE_CUES.search(_find_terms(clauses[j])[1]):
                    break
                if _OR.search(clauses[j]):
                    for k in range(i + 1, j + 1):
                        hits += _parse_clause(clauses[k], True)[0]
                    i = j
                    break
        i += 1
    return hits


def vocabulary() -> str:
    """Short human description of the accepted terms (used in error messages and help)."""
    return (
        "findings: atelectasis (collapse, volume loss); lung opacity (opacity, airspace disease, consolidation, "
        "infiltrate, pneumonia); pleural effusion (effusion, pleural fluid); enlarged cardiac silhouette "
        "(cardiomegaly, enlarged heart); no finding (normal chest radiograph, no acute cardiopulmonary process). "
        "Negation: no, not, without, negative for, free of, clear of, resolved, absent, 'X: none', "
        "'X - negative'. "
        "Say whether each finding is present or absent: hedged mentions (possible, probable, likely, "
        "questionable, cannot exclude, '?') are refused as uncertain. Other findings (pneumothorax, nodule, "
        "mass, edema, ...) are not supported, except negated ('no pneumothorax'). "
        "Example: 'Large right pleural effusion. No cardiomegaly.'"
    )


def _describe(hits: list[_Hit]) -> list[str]:
    out = []
    for h in hits:
        what = {NO_FINDING: "no finding (all findings absent)", _OTHERWISE: "findings not named are absent"}.get(
            h.finding, f"{HUMAN_NAMES.get(h.finding)} {h.state.value}")
        out.append(f"{what} (from {h.text!r})")
    return out


def parse_prompt(text: str) -> Condition:
    """Turn free text into a condition; findings the text does not mention stay unspecified."""
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"empty prompt; describe the image using the known terms — {vocabulary()}")
    hits: list[_Hit] = []
    for sentence in _SENTENCES.split(_normalise(text)):
        hits += _parse_sentence(sentence)
    unsupported = [h for h in hits if h.finding.startswith(_UNSUPPORTED)]
    hits = [h for h in hits if not h.finding.startswith(_UNSUPPORTED)]
    named = list(dict.fromkeys(h.finding[len(_UNSUPPORTED):] for h in unsupported if h.state == _P or h.uncertain))
    if named:
        raise PromptError(
            f"unsupported finding{'s' if len(named) > 1 else ''} in {text!r}: {', '.join(named)} "
            f"(from {'; '.join(dict.fromkeys(repr(h.text) for h in unsupported if h.state == _P or h.uncertain))}). "
            f"Supported findings: {', '.join(HUMAN_NAMES[f] for f in FINDINGS)} (or a normal study); remove "
            f"{'them' if len(named) > 1 else 'it'} or state {'them' if len(named) > 1 else 'it'} as absent "
            f"(e.g. 'no {named[0]}'); known terms — {vocabulary()}",
            _describe(hits),
        )
    uncertain = [h for h in hits if h.uncertain]
    if uncertain:
        names = {NO_FINDING: "a normal study", _OTHERWISE: "the rest being normal"}
        what = list(dict.fromkeys(f"{names.get(h.finding, HUMAN_NAMES.get(h.finding))} (from {h.text!r})" for h in uncertain))
        raise PromptError(
            f"uncertain mention in {text!r}: {'; '.join(what)} is hedged (possible / probable / cannot exclude / '?'). "
            "The generator needs each finding stated as present or absent: drop the hedge ('pleural effusion') "
            f"or negate it ('no pleural effusion'); known terms — {vocabulary()}",
            _describe([h for h in hits if not h.uncertain]),
        )
    understood = _describe(hits)
    if not hits:
        raise PromptError(f"no finding recognised in {text!r} (understood: nothing); known terms — {vocabulary()}")
    states: dict[str, FindingState] = {}
    clashes = []
    for h in hits:
        if h.finding in (NO_FINDING, _OTHERWISE):
            continue
        if states.get(h.finding, h.state) != h.state:
            clashes.append(f"{HUMAN_NAMES[h.finding]} is both present and absent")
        states[h.finding] = h.state
    if any(h.finding == NO_FINDING for h in hits):
        clashes += [f"{HUMAN_NAMES[f]} is present in a study called normal" for f, s in states.items() if s == _P]
        states = {f: states.get(f, _A) for f in FINDINGS}
    if any(h.finding == _OTHERWISE for h in hits):
        states = {f: states.get(f, _A) for f in FINDINGS}
    if clashes:
        raise PromptError(
            f"contradictory prompt {text!r}: {'; '.join(dict.fromkeys(clashes))}. Understood: {'; '.join(understood)}. "
            f"Remove one of the clashing statements; known terms — {vocabulary()}",
            understood,
        )
    return Condition(**states)
