import pytest
from pydantic import ValidationError

from services.common.findings import FINDINGS, Condition, ConditionError, FindingState, canonical_finding


def test_vocabulary_order_is_model_input_order():
    assert FINDINGS == ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette")


def test_alias_and_states():
    c = Condition(cardiomegaly="present", pleural_effusion=False)
    assert c.enlarged_cardiac_silhouette is FindingState.PRESENT
    assert c.codes() == [2, 2, 0, 1]
    assert c.present() == ["enlarged_cardiac_silhouette"] and c.absent() == ["pleural_effusion"]
    assert Condition.from_codes(c.codes()) == c


def test_no_finding_is_all_absent():
    c = Condition(no_finding=True)
    assert c.is_no_finding and c == Condition.no_finding() and c.describe() == "no finding"
    with pytest.raises(ValueError, match="contradicts"):
        Condition(no_finding=True, atelectasis="present")


def test_unknown_finding_is_named():
    with pytest.raises(ValidationError, match="unknown finding 'bananas'"):
        Condition(bananas="present")
    with pytest.raises(ConditionError, match="known findings"):
        canonical_finding("pneumothorax")


def test_bad_state_is_named():
    with pytest.raises(ValidationError, match="invalid state 'maybe'"):
        Condition(atelectasis="maybe")


def test_from_findings_rejects_contradiction():
    with pytest.raises(ConditionError, match="both present and absent"):
        Condition.from_findings(present=["effusion"], absent=["pleural effusion"])


def test_json_roundtrip_and_key():
    c = Condition.from_findings(present=["atelectasis"], absent=["lung opacity"])
    assert Condition.model_validate_json(c.model_dump_json()) == c
    assert c.to_json_dict() == {"atelectasis": "present", "lung_opacity": "absent"}
    assert c.key() == "a1.o0.e?.c?"
    assert Condition().key() != Condition.no_finding().key()
