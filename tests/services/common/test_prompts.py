import pytest

from services.common.findings import Condition, ConditionError, FindingState
from services.common.prompts import PromptError, parse_prompt

P, A, U = FindingState.PRESENT, FindingState.ABSENT, FindingState.UNSPECIFIED


def states(text):
    return parse_prompt(text).states()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No pleural effusion", {"pleural_effusion": A}),
        ("Large right-sided pleural effusion. Cardiomegaly.", {"pleural_effusion": P, "enlarged_cardiac_silhouette": P}),
        ("without enlarged cardiac silhouette", {"enlarged_cardiac_silhouette": A}),
        ("bibasilar atelectasis", {"atelectasis": P}),
        ("patchy airspace opacity", {"lung_opacity": P}),
        ("pleural effusion, no cardiomegaly", {"pleural_effusion": P, "enlarged_cardiac_silhouette": A}),
        ("effusion", {"pleural_effusion": P}),
        ("consolidation", {"lung_opacity": P}),
        ("infiltrate", {"lung_opacity": P}),
        ("Pneumonia", {"lung_opacity": P}),
        ("no effusion, atelectasis or consolidation", {"pleural_effusion": A, "atelectasis": A, "lung_opacity": A}),
        ("no effusion or cardiomegaly", {"pleural_effusion": A, "enlarged_cardiac_silhouette": A}),
        ("no effusion, cardiomegaly", {"pleural_effusion": A, "enlarged_cardiac_silhouette": P}),
        ("no effusion but cardiomegaly", {"pleural_effusion": A, "enlarged_cardiac_silhouette": P}),
        ("negative for pneumonia", {"lung_opacity": A}),
        ("free of effusion", {"pleural_effusion": A}),
        ("lungs clear of consolidation", {"lung_opacity": A}),
        ("resolved atelectasis", {"atelectasis": A}),
        ("Pleural effusion has resolved. Heart size is normal.", {"pleural_effusion": A, "enlarged_cardiac_silhouette": A}),
        ("heart is not enlarged", {"enlarged_cardiac_silhouette": A}),
        ("atelectasis, effusion; cardiomegaly", {"atelectasis": P, "pleural_effusion": P, "enlarged_cardiac_silhouette": P}),
        ("pleural_effusion, enlarged_cardiac_silhouette", {"pleural_effusion": P, "enlarged_cardiac_silhouette": P}),
        ("No change in the small left effusion", {"pleural_effusion": P}),
        ("small pericardial effusion; atelectasis", {"atelectasis": P}),
    ],
)
def test_examples(text, expected):
    got = states(text)
    want = {f: expected.get(f, U) for f in got}
    assert got == want


@pytest.mark.parametrize("text", ["normal chest radiograph", "no acute cardiopulmonary process", "Normal.", "no_finding"])
def test_no_finding(text):
    assert parse_prompt(text) == Condition.no_finding()


def test_no_finding_with_explicit_absence_is_fine():
    assert parse_prompt("Normal chest x-ray. No effusion.") == Condition.no_finding()


def test_unknown_text_lists_vocabulary():
    with pytest.raises(PromptError) as e:
        parse_prompt("banana")
    msg = str(e.value)
    assert "banana" in msg and "pleural effusion" in msg and "cardiomegaly" in msg
    assert e.value.understood == []
    assert isinstance(e.value, ConditionError)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty(text):
    with pytest.raises(PromptError):
        parse_prompt(text)


def test_contradiction_lists_what_was_understood():
    with pytest.raises(PromptError) as e:
        parse_prompt("pleural effusion. no pleural effusion")
    assert "both present and absent" in str(e.value)
    assert any("present" in u for u in e.value.understood) and any("absent" in u for u in e.value.understood)


def test_normal_with_present_finding_is_contradictory():
    with pytest.raises(PromptError, match="normal"):
        parse_prompt("normal chest radiograph with cardiomegaly")


def test_otherwise_normal_makes_unnamed_findings_absent():
    got = states("Small left effusion, otherwise normal.")
    assert got == {"atelectasis": A, "lung_opacity": A, "pleural_effusion": P, "enlarged_cardiac_silhouette": A}


# ---- findings outside the vocabulary ----------------------------------------------------
def refusal(text: str) -> str:
    """The message of the PromptError that ``text`` raises."""
    with pytest.raises(PromptError) as e:
        parse_prompt(text)
    return str(e.value)


# (text, the finding the refusal names, why it is refused): a finding outside the vocabulary stated present
# ("unsupported"), or a hedged mention of any finding ("uncertain")
REFUSED = [
    ("effusion and pneumothorax", "pneumothorax", "unsupported"),
    ("Right upper lobe nodule. No effusion.", "nodule", "unsupported"),
    ("mediastinal mass", "mass", "unsupported"),
    ("pulmonary edema with cardiomegaly", "edema", "unsupported"),
    ("emphysema", "emphysema", "unsupported"),
    ("pulmonary fibrosis", "fibrosis", "unsupported"),
    ("left rib fracture", "fracture", "unsupported"),
    ("hiatal hernia", "hernia", "unsupported"),
    ("pleural thickening", "pleural thickening", "unsupported"),
    ("pneumoperitoneum", "pneumoperitoneum", "unsupported"),
    ("support devices in place, atelectasis", "support devices", "unsupported"),
    ("possible effusion", "pleural effusion", "uncertain"),
    ("probable atelectasis", "atelectasis", "uncertain"),
    ("cannot exclude cardiomegaly", "enlarged cardiac silhouette", "uncertain"),
    ("cannot rule out pneumonia", "lung opacity", "uncertain"),
    ("effusion?", "pleural effusion", "uncertain"),
    ("?effusion", "pleural effusion", "uncertain"),
    ("questionable opacity", "lung opacity", "uncertain"),
    ("effusion cannot be excluded", "pleural effusion", "uncertain"),
    ("effusion is not excluded", "pleural effusion", "uncertain"),
    ("consolidation is likely", "lung opacity", "uncertain"),
    ("No cardiomegaly. Possible small effusion.", "pleural effusion", "uncertain"),
]


def refused(why: str) -> list[tuple[str, str]]:
    return [(text, name) for text, name, w in REFUSED if w == why]


@pytest.mark.parametrize("text, name", refused("unsupported"))
def test_unsupported_present_finding_is_refused(text, name):
    msg = refusal(text)
    assert name in msg and "unsupported" in msg
    assert "Supported findings: atelectasis, lung opacity, pleural effusion, enlarged cardiac silhouette" in msg


def test_several_unsupported_findings_are_all_named():
    with pytest.raises(PromptError, match="pneumothorax, nodule"):
        parse_prompt("pneumothorax and a nodule")


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax. Small left effusion.", {"pleural_effusion": P}),
    ("effusion without pneumothorax", {"pleural_effusion": P}),
    ("no pneumothorax or effusion", {"pleural_effusion": A}),
    ("Pneumothorax has resolved. Cardiomegaly.", {"enlarged_cardiac_silhouette": P}),
    ("No acute cardiopulmonary process. No pneumothorax.", {f: A for f in ("atelectasis", "lung_opacity",
                                                                         "pleural_effusion", "enlarged_cardiac_silhouette")}),
])
def test_negated_unsupported_finding_is_ignored(text, expected):
    got = states(text)
    assert got == {f: expected.get(f, U) for f in got}


# ---- hedged (uncertain) mentions ----------------------------------------------------------
@pytest.mark.parametrize("text, name", refused("uncertain"))  # the hedged cases of REFUSED
def test_hedged_mention_is_refused_as_uncertain(text, name):
    msg = refusal(text)
    assert "uncertain" in msg and name in msg and "present or absent" in msg


def test_hedge_applies_only_to_its_own_finding():
    with pytest.raises(PromptError) as e:
        parse_prompt("effusion and possible atelectasis")
    assert "atelectasis (from" in str(e.value) and "pleural effusion (from" not in str(e.value).split("known terms")[0]
    assert any("pleural effusion present" in u for u in e.value.understood)


@pytest.mark.parametrize("text, expected", [
    ("no effusion", {"pleural_effusion": A}),
    ("without cardiomegaly", {"enlarged_cardiac_silhouette": A}),
    ("Is the effusion resolved. Effusion has resolved", {"pleural_effusion": A}),
])
def test_negation_is_unchanged_by_hedge_handling(text, expected):
    got = states(text)
    assert got == {f: expected.get(f, U) for f in got}


def test_vocabulary_mentions_hedges_and_unsupported_findings():
    from services.common.prompts import vocabulary

    v = vocabulary()
    assert "cannot exclude" in v and "pneumothorax" in v


# ---- structured-report answers ("X: none", "X - negative") -------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Effusion: none.", {"pleural_effusion": A}),
    ("Cardiomegaly - negative.", {"enlarged_cardiac_silhouette": A}),
    ("Opacity: no", {"lung_opacity": A}),
    ("atelectasis: absent", {"atelectasis": A}),
    ("without effusion", {"pleural_effusion": A}),
    ("Effusion is absent. Cardiomegaly resolved.", {"pleural_effusion": A, "enlarged_cardiac_silhouette": A}),
    ("Effusion: none; cardiomegaly: present", {"pleural_effusion": A, "enlarged_cardiac_silhouette": P}),
    ("effusion: yes", {"pleural_effusion": P}),
    ("effusion and no cardiomegaly", {"pleural_effusion": P, "enlarged_cardiac_silhouette": A}),
    ("effusion negative for cardiomegaly", {"pleural_effusion": P, "enlarged_cardiac_silhouette": A}),
])
def test_structured_answers_after_a_finding(text, expected):
    got = states(text)
    assert got == {f: expected.get(f, U) for f in got}
