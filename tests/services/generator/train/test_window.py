"""The GPU window program, rehearsed on the CPU with a tiny budget and tiny networks
(services/generator/train/window.py): trains every planned model at once, packs the exports into at most
8 files of at most 16 MB, and unpacks them hash-checked."""

import json

import numpy as np
import pytest
from PIL import Image

from services.generator.train import window


def _folder_dataset(root, n=12):
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        for i in range(n):
            p = root / cls / f"person{i}_{cls.lower()}_{i}.jpeg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(p)


def test_pack_spans_shards_and_unpack_verifies(tmp_path):
    files = {}
    for i, size in enumerate((10, 2500, 0, 900)):
        p = tmp_path / "src" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
        files[f"m/f{i}.bin"] = p
    shards = window.pack(files, tmp_path / "out", {"jobs": []}, shard_bytes=1000)
    assert len(shards) == 4 and all(s.stat().st_size <= 1000 for s in shards)
    window.unpack(tmp_path / "out", tmp_path / "back")
    for name, p in files.items():
        assert (tmp_path / "back" / name).read_bytes() == p.read_bytes()
    raw = bytearray(shards[1].read_bytes())
    raw[5] ^= 0xFF
    shards[1].write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="do not match their sha256"):
        window.unpack(tmp_path / "out", tmp_path / "again")
    with pytest.raises(RuntimeError, match="more than the 8 files"):
        window.pack(files, tmp_path / "many", {"jobs": []}, shard_bytes=100)


def test_plan_is_valid_and_names_the_shipped_families():
    jobs = window.load_plan()
    assert {j.family for j in jobs} == {"stylegan2", "ddpm"}
    assert {j.model_id for j in jobs} >= {"stylegan2-kermany128", "ddpm-kermany128"}


@pytest.mark.slow
def test_window_rehearsal_on_cpu_trains_all_at_once_and_returns_what_finalize_needs(tmp_path):
    data = tmp_path / "data"
    _folder_dataset(data / "toy")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"jobs": [
        {"model_id": "sg2-window-test", "family": "stylegan2", "data": "toy", "layout": "folder", "resolution": 64,
         "batch": 4},
        {"model_id": "ddpm-window-test", "family": "ddpm", "data": "toy", "layout": "folder", "resolution": 16,
         "batch": 4}]}))
    out = tmp_path / "out"
    code = window.main(["run", "--minutes", "2.5", "--margin", "0.5", "--out", str(out), "--work",
                        str(tmp_path / "work"), "--plan", str(plan), "--data-root", str(data), "--device", "cpu",
                        "--tiny"])
    assert code == 0
    returned = sorted(p.name for p in out.iterdir())
    assert "window.json" in returned and len(returned) <= 8
    assert all(p.stat().st_size <= 16_000_000 for p in out.iterdir())
    index = window.unpack(out, tmp_path / "back")
    for mid in ("sg2-window-test", "ddpm-window-test"):
        job = next(j for j in index["jobs"] if j["model_id"] == mid)
        assert job["exit_code"] == 0 and job["summary"]["step"] > 0
        folder = tmp_path / "back" / mid
        desc = json.loads((folder / f"{mid}.json").read_text())
        assert (folder / desc["weights"]).exists() and (folder / desc["training_state"]["file"]).exists()
        assert desc["training"]["split_by"] == "patient"
    # each trainer kept to its own budget (2 min): the window ended within the margin
    assert max(j["wall_s"] for j in index["jobs"]) <= 2.5 * 60
