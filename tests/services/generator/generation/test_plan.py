"""Planning a generation request: limits, seeds, the prompt rule (parsed once, here), records that replan."""

from __future__ import annotations

import pytest

from services.common.config import Limits
from services.common.findings import Condition
from services.generator.base import GenerationParams
from services.generator.generation import GenerationRequest, InvalidPrompt, InvalidRequest, check_request, make_plan
from services.generator.registry import UnknownModel, pick_model
from services.generator.replica import ServedModel

LIMITS = Limits(max_resolution=256, max_steps=50)


def served(text_conditioned: bool = False, max_batch_size: int = 4) -> ServedModel:
    return ServedModel(model_id="m", family="tiny", resolution=32, model_hash="ab" * 32, backend="eager",
                       device="cpu", text_conditioned=text_conditioned, max_batch_size=max_batch_size)


@pytest.mark.parametrize("req, needle", [
    (GenerationRequest(count=0), "at least 1"),
    (GenerationRequest(count=11), "exceeds the limit of 10 images for a test"),
    (GenerationRequest(count=2, seed=2**63 - 1), "seed must be in"),
    (GenerationRequest(prompt="x" * 2001), "at most 2000"),
    (GenerationRequest(prompt="effusion", condition=Condition(atelectasis="present")), "not both"),
    (GenerationRequest(params=GenerationParams(steps=51)), "steps 51 exceeds the limit 50"),
    (GenerationRequest(params=GenerationParams(resolution=512)), "resolution 512 exceeds the limit 256"),
])
def test_requests_outside_the_limits_are_refused_naming_the_problem(req, needle):
    with pytest.raises(InvalidRequest, match=needle):
        check_request(req, LIMITS, 10, "a test")


def test_image_i_gets_seed_plus_i_and_the_condition():
    cond = Condition(pleural_effusion="present")
    plan = make_plan(GenerationRequest(model="m", condition=cond, count=5, seed=40), served(), {"steps": 3})
    assert plan.seeds == [40, 41, 42, 43, 44] and plan.conditions == [cond] * 5 and plan.prompts is None
    assert plan.resolved_params == {"steps": 3} and plan.origin.params == {"steps": 3}
    prov = plan.provenance(2, batch_id="b")
    assert (prov.seed, prov.condition, prov.model_hash, prov.batch_id, prov.synthetic) == (42, cond, "ab" * 32, "b", True)


def test_a_class_conditional_model_gets_the_parsed_prompt_and_never_the_text():
    plan = make_plan(GenerationRequest(prompt="  Large right pleural effusion. No cardiomegaly. ", count=2), served(), {})
    assert plan.prompts is None
    assert plan.condition == Condition(pleural_effusion="present", enlarged_cardiac_silhouette="absent")
    assert plan.prompt == "Large right pleural effusion. No cardiomegaly."  # recorded with the images, trimmed
    with pytest.raises(InvalidPrompt, match="pneumothorax"):
        make_plan(GenerationRequest(prompt="small pneumothorax", count=1), served(), {})


def test_a_text_conditioned_model_gets_the_raw_prompt_and_records_what_was_understood():
    plan = make_plan(GenerationRequest(prompt="Left pleural effusion", count=3), served(text_conditioned=True), {})
    assert plan.prompts == ["Left pleural effusion"] * 3 and plan.condition == Condition(pleural_effusion="present")
    odd = make_plan(GenerationRequest(prompt="small pneumothorax", count=1), served(text_conditioned=True), {})
    assert odd.prompts == ["small pneumothorax"] and odd.condition == Condition()  # the parser understood nothing


def test_chunks_follow_the_size_and_the_start():
    plan = make_plan(GenerationRequest(count=10, seed=0), served(), {})
    assert [c.seeds for c in plan.chunks(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.seeds for c in plan.chunks(4, start=7)] == [[7, 8, 9]]


def test_the_recorded_request_replans_to_the_same_plan():
    req = GenerationRequest(model=None, prompt="cardiomegaly", count=6, seed=9, params=GenerationParams(steps=4))
    plan = make_plan(req, served(), {"steps": 4})
    again = make_plan(GenerationRequest.from_record(plan.record()), served(), {"steps": 4})
    assert plan.record()["model"] == "m"  # the model resolved, so a resumed job uses the same one
    assert (again.seeds, again.conditions, again.prompt, again.params) == (plan.seeds, plan.conditions, plan.prompt,
                                                                           plan.params)


def test_model_names_mean_the_same_everywhere_ids_or_families():
    models = [served().model_copy(update={"model_id": mid, "family": fam})
              for mid, fam in (("sg-a", "stylegan2"), ("sg-b", "stylegan2"), ("dd", "ddpm"))]
    assert pick_model("dd", models, "sg-b") == "dd"
    assert pick_model("stylegan2", models, "sg-b") == "sg-b"  # the default when it is of that family
    assert pick_model("stylegan2", models, "dd") == "sg-a"  # else the family's first
    with pytest.raises(UnknownModel, match=r"this platform serves: dd, sg-a, sg-b \(or a family: ddpm, stylegan2\)"):
        pick_model("gan", models, "dd")
