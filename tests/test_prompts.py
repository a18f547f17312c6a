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
        ("no effusion or cardiomegaly", {"pleural_effusion": A, "enlarged_cardiac_silhouette": A}),
        ("no effusion, atelectasis or consolidation", {"pleural_effusion": A, "atelectasis": A, "lung_opacity": A}),
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
