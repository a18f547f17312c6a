"""`synthrad data summary`: the shared NIH data, folder layouts and the view / uncertain policies, and errors
that name what was expected."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from synthrad.cli import data_cmd


def run(cmd, *args):
    return CliRunner().invoke(cmd.command, list(args))


def test_data_summary_shared_nih(nih64):
    res = run(data_cmd, "summary", str(nih64), "--layout", "nih")
    assert res.exit_code == 0, res.output
    assert "pleural_effusion" in res.output and "PA" in res.output and "AP " not in res.output
    res = run(data_cmd, "summary", str(nih64), "--layout", "nih", "--views", "PA,AP", "--json")
    info = json.loads(res.output)
    assert info["images"] == 800 and set(info["views"]) == {"PA", "AP"}
    assert sum(info["present_by_view"][v]["pleural_effusion"] for v in info["views"]) == \
        info["findings"]["pleural_effusion"]["present"]


def _folder(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,effusion,view\na.png,1,PA\nb.png,-1,AP\n")
    return tmp_path


def test_data_summary_folder_guesses_layout_and_applies_policy(tmp_path):
    root = _folder(tmp_path)
    res = run(data_cmd, "summary", str(root), "--views", "all", "--uncertain", "positive", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["layout"] == "folder" and info["findings"]["pleural_effusion"]["present"] == 2
    table = run(data_cmd, "summary", str(root), "--layout", "folder")
    assert table.exit_code == 0 and "1 images" in table.output


def test_data_summary_wrong_layout_names_expected_files(tmp_path):
    root = _folder(tmp_path)
    res = run(data_cmd, "summary", str(root), "--layout", "chexpert")
    assert res.exit_code == 1
    assert "train.csv" in res.output and "--layout folder" in res.output
    res = run(data_cmd, "summary", str(root), "--layout", "nih")
    assert res.exit_code == 1 and "Data_Entry_2017.csv" in res.output


def test_data_summary_missing_path_and_bad_layout(tmp_path):
    res = run(data_cmd, "summary", str(tmp_path / "nope"), "--layout", "nih")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = run(data_cmd, "summary", str(tmp_path), "--layout", "padchest")
    assert res.exit_code == 2 and "nih" in res.output


def test_data_summary_view_filter_leaving_nothing_explains(tmp_path):
    root = _folder(tmp_path)
    res = run(data_cmd, "summary", str(root), "--layout", "folder", "--views", "LATERAL")
    assert res.exit_code == 1 and "--views all" in res.output and "PA 1" in res.output
