"""`synthrad conditions parse` and `synthrad conditions vocabulary`."""

import json

from click.testing import CliRunner

from synthrad.cli import conditions_cmd


def run(cmd, *args):
    return CliRunner().invoke(cmd.command, list(args))


def test_conditions_parse_prints_all_four_states():
    res = run(conditions_cmd, "parse", "Large right-sided pleural effusion. No cardiomegaly.")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["condition"] == {"atelectasis": "unspecified", "lung_opacity": "unspecified",
                                "pleural_effusion": "present", "enlarged_cardiac_silhouette": "absent"}
    assert out["description"] == "pleural effusion; no enlarged cardiac silhouette"


def test_conditions_parse_unquoted_words_and_no_finding():
    res = run(conditions_cmd, "parse", "normal", "chest", "radiograph")
    assert res.exit_code == 0
    assert set(json.loads(res.output)["condition"].values()) == {"absent"}


def test_conditions_parse_error_exits_2_with_message():
    res = run(conditions_cmd, "parse", "banana")
    assert res.exit_code == 2
    assert "banana" in res.output and "pleural effusion" in res.output
    res = run(conditions_cmd, "parse", "effusion. no effusion")
    assert res.exit_code == 2 and "both present and absent" in res.output


def test_conditions_vocabulary():
    res = run(conditions_cmd, "vocabulary")
    assert res.exit_code == 0 and "cardiomegaly" in res.output
