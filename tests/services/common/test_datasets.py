import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.common.codecs import CorruptImageError
from services.common.datasets import DatasetError, XrayDataset, dataset_summary, guess_layout, load_records
from services.common.datasets import torch_dataset
from services.common.datasets.preprocess import resize_center_crop

U = 2  # unspecified code


def _img(path: Path, value: int = 128, size=(10, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size[::-1], value, np.uint8)
    arr[0, 0] = 0
    Image.fromarray(arr).save(path)


def _write(path: Path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


# ---- NIH ---------------------------------------------------------------------------------
@pytest.fixture
def nih_root(tmp_path):
    root = tmp_path / "nih"
    _write(root / "Data_Entry_2017_v2020.csv", [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Effusion|Infiltration,1,1,58,M,PA,2894,2729,0.143,0.143",
        "00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171",
        "00000003_000.png,Atelectasis|Pneumonia,0,3,74,F,PA,2500,2048,0.168,0.168",
        "00000004_000.png,Hernia,0,4,81,F,PA,2500,2048,0.168,0.168",  # listed, not on disk
    ])
    for i, name in enumerate(["00000001_000.png", "00000001_001.png", "00000002_000.png"]):
        _img(root / "images_001" / "images" / name)
    _img(root / "images_002" / "images" / "00000003_000.png")
    _write(root / "train_val_list.txt", ["00000001_000.png", "00000001_001.png", "00000002_000.png"])
    _write(root / "test_list.txt", ["00000003_000.png"])
    return root


def test_nih_data_entry_layout(nih_root):
    recs = {r.path.name: r for r in load_records(nih_root, "nih")}
    assert set(recs) == {"00000001_000.png", "00000001_001.png", "00000003_000.png"}  # PA only, missing skipped
    assert recs["00000001_000.png"].codes == (0, 0, 0, 1)
    assert recs["00000001_001.png"].codes == (0, 1, 1, 0)  # Infiltration stands in for lung opacity
    assert recs["00000003_000.png"].codes == (1, 1, 0, 0)  # so does Pneumonia
    assert recs["00000003_000.png"].split == "test" and recs["00000001_000.png"].split == "train"
    assert recs["00000001_000.png"].patient_id == "1"
    every = load_records(nih_root, "nih", views="all")
    assert len(every) == 4 and {r.view for r in every} == {"PA", "AP"}
    assert [r.path.name for r in load_records(nih_root, "nih", views=("AP",))] == ["00000002_000.png"]
    assert len(load_records(nih_root, "nih", split="test")) == 1


def test_unknown_split_is_named_with_the_known_ones(nih_root):
    with pytest.raises(DatasetError, match=r"unknown split 'foo' \(known: test, train\)") as e:
        load_records(nih_root, "nih", split="foo")
    assert "views='all'" not in str(e.value)
    assert len(load_records(nih_root, "nih", split="train")) == 2


def test_nih_without_images_says_where_they_go(tmp_path, nih_root):
    for p in nih_root.rglob("*.png"):
        p.unlink()
    with pytest.raises(DatasetError, match="images_"):
        load_records(nih_root, "nih")


def test_shared_nih64(nih64):
    recs = load_records(nih64, "nih")
    assert recs and all(r.view == "PA" for r in recs)
    every = load_records(nih64, "nih", views="all")
    assert len(every) == 800 and len(load_records(nih64, "nih", views="all", split="valid")) == 200
    s = dataset_summary(every)
    assert s["images"] == 800 and sum(s["views"].values()) == 800 and set(s["views"]) == {"PA", "AP"}
    for f, counts in s["findings"].items():
        assert counts["unspecified"] == 0 and counts["present"] > 0 and counts["present"] + counts["absent"] == 800
    assert 0 < s["no_finding"] < 800


def test_shared_nih64_torch_dataset(nih64, tmp_path):
    recs = load_records(nih64, "nih")[:40]
    ds = XrayDataset(recs, 32, cache_dir=tmp_path)
    x, c = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert c.dtype == torch.long and c.tolist() == list(recs[0].codes)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    xb, cb = next(iter(loader))
    assert xb.shape == (16, 1, 32, 32) and cb.shape == (16, 4)


# ---- CheXpert ----------------------------------------------------------------------------
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")


@pytest.fixture
def chexpert_root(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    p = "CheXpert-v1.0-small/{split}/patient0000{n}/study1/view{v}.jpg"
    rows = {
        "train": [
            (p.format(split="train", n=1, v="1_frontal"), "Female,68,Frontal,PA,1.0,,,,,,,,,0.0,,,,1.0"),
            (p.format(split="train", n=2, v="1_frontal"), "Female,87,Frontal,PA,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,"),
            (p.format(split="train", n=2, v="2_lateral"), "Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,"),
            (p.format(split="train", n=3, v="1_frontal"), "Male,41,Frontal,AP,,,0.0,,,,1.0,,,,0.0,,,"),
        ],
        "valid": [(p.format(split="valid", n=4, v="1_frontal"), "Male,55,Frontal,PA,,,1.0,,,,,,0.0,,1.0,,,")],
    }
    for split, lines in rows.items():
        _write(root / f"{split}.csv", [CHEXPERT_HEADER] + [f"{a},{b}" for a, b in lines])
        for a, _ in lines:
            Image.fromarray(np.full((8, 8), 90, np.uint8)).save(_mk(tmp_path / a))
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_chexpert_mapping_and_uncertain_policy(chexpert_root):
    recs = {(r.patient_id, r.path.name): r for r in load_records(chexpert_root, "chexpert")}
    assert set(recs) == {("patient00001", "view1_frontal.jpg"), ("patient00002", "view1_frontal.jpg"),
                         ("patient00004", "view1_frontal.jpg")}  # PA only; the lateral and the AP drop out
    assert recs["patient00001", "view1_frontal.jpg"].codes == (0, 0, 0, 0)  # No Finding: blanks absent
    assert recs["patient00002", "view1_frontal.jpg"].codes == (U, 1, U, U)  # uncertain ignored
    assert recs["patient00004", "view1_frontal.jpg"].codes == (0, U, 1, 1)
    assert recs["patient00004", "view1_frontal.jpg"].split == "valid"
    pos = {r.patient_id: r for r in load_records(chexpert_root, "chexpert", uncertain="positive")}
    neg = {r.patient_id: r for r in load_records(chexpert_root, "chexpert", uncertain="negative")}
    assert pos["patient00002"].codes == (1, 1, 1, 1) and neg["patient00002"].codes == (0, 1, 0, 0)


def test_chexpert_views_and_consolidation(chexpert_root):
    every = load_records(chexpert_root, "chexpert", views="all")
    assert len(every) == 5
    assert dataset_summary(every)["views"] == {"AP": 1, "LATERAL": 1, "PA": 3}
    ap = load_records(chexpert_root, "chexpert", views="AP")
    assert ap[0].codes == (U, 1, 0, 0)  # Consolidation counts as lung opacity


def test_data_summary_unknown_split_names_known_splits(chexpert_root):
    from click.testing import CliRunner

    from synthrad.cli import data_cmd

    res = CliRunner().invoke(data_cmd.command, ["summary", str(chexpert_root), "--layout", "chexpert", "--split", "foo"])
    assert res.exit_code == 1
    assert "unknown split 'foo' (known: train, valid)" in res.output and "views='all'" not in res.output
    ok = CliRunner().invoke(data_cmd.command, ["summary", str(chexpert_root), "--layout", "chexpert", "--split", "valid"])
    assert ok.exit_code == 0, ok.output


def test_chexpert_bad_policy_and_wrong_folder(chexpert_root, tmp_path):
    with pytest.raises(DatasetError, match="ignore, positive, negative"):
        load_records(chexpert_root, "chexpert", uncertain="maybe")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="train.csv"):
        load_records(tmp_path / "empty", "chexpert")
    with pytest.raises(DatasetError, match="try --layout chexpert"):
        load_records(chexpert_root, "mimic")


# ---- MIMIC-CXR-JPG -----------------------------------------------------------------------
@pytest.fixture
def mimic_root(tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    _write(root / "mimic-cxr-2.0.0-metadata.csv.gz", [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
        "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
        "PatientOrientationCodeSequence_CodeMeaning",
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect",
        "d3,11000011,50000001,CHEST (PORTABLE AP),AP,3056,2544,21800506,213014.531,CHEST (PORTABLE AP),antero-posterior,",
        "d4,12000012,50000002,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
    ])
    _write(root / "mimic-cxr-2.0.0-chexpert.csv.gz", [
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
        "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices",
        "10000032,50414267,,,,,,,,,1.0,,,,,",
        "11000011,50000001,-1.0,1.0,,,,,,1.0,,0.0,,,,",
        "12000012,50000002,1.0,,,,,,,,,-1.0,,,,",
    ])
    _write(root / "mimic-cxr-2.0.0-split.csv.gz", [
        "dicom_id,study_id,subject_id,split", "d1,50414267,10000032,train", "d2,50414267,10000032,train",
        "d3,50000001,11000011,validate", "d4,50000002,12000012,test",
    ])
    for sid, study, dicom in [("10000032", "50414267", "d1"), ("10000032", "50414267", "d2"),
                              ("11000011", "50000001", "d3"), ("12000012", "50000002", "d4")]:
        Image.fromarray(np.full((8, 8), 60, np.uint8)).save(_mk(root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}" / f"{dicom}.jpg"))
    return root


def test_mimic_join_views_and_splits(mimic_root):
    recs = {r.path.stem: r for r in load_records(mimic_root, "mimic")}
    assert set(recs) == {"d1", "d4"}
    assert recs["d1"].codes == (0, 0, 0, 0) and recs["d1"].split == "train" and recs["d1"].patient_id == "10000032"
    assert recs["d4"].codes == (1, U, U, U) and recs["d4"].split == "test"
    every = {r.path.stem: r for r in load_records(mimic_root, "mimic", views="all", uncertain="negative")}
    assert every["d3"].codes == (0, 1, 0, 1) and every["d3"].view == "AP" and every["d3"].split == "valid"
    assert every["d2"].view == "LATERAL" and every["d4"].codes == (1, U, 0, U)


def test_mimic_missing_tables(tmp_path, mimic_root):
    (mimic_root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(DatasetError, match="chexpert.csv"):
        load_records(mimic_root, "mimic")


# ---- folder ------------------------------------------------------------------------------
def test_folder_csv_layout(tmp_path):
    root = tmp_path / "mine"
    _write(root / "labels.csv", ["path,effusion,Cardiomegaly,no_finding,view,split,patient_id",
                                 "a.png,1,0,,PA,train,p1", "sub/b.png,,,1,PA,test,p2", "c.png,-1,,,AP,,"])
    for name in ("a.png", "sub/b.png", "c.png"):
        _img(root / name)
    recs = {r.path.name: r for r in load_records(root, "folder", views="all", uncertain="positive")}
    assert recs["a.png"].codes == (U, U, 1, 0) and recs["a.png"].patient_id == "p1"
    assert recs["b.png"].codes == (0, 0, 0, 0) and recs["b.png"].split == "test"
    assert recs["c.png"].codes == (U, U, 1, U) and recs["c.png"].view == "AP"


def test_folder_csv_without_finding_columns(tmp_path):
    _write(tmp_path / "labels.csv", ["path,label", "a.png,x"])
    with pytest.raises(DatasetError, match="finding columns"):
        load_records(tmp_path, "folder")


def test_folder_class_subfolders_kermany_style(tmp_path):
    root = tmp_path / "kermany"
    _img(root / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    _img(root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    _img(root / "test" / "PNEUMONIA" / "person2_virus_3.jpeg")
    assert guess_layout(root) == "folder"
    recs = {r.path.name: r for r in load_records(root, "folder", views="all")}
    assert recs["IM-0001-0001.jpeg"].codes == (0, 0, 0, 0)
    assert recs["person1_bacteria_1.jpeg"].codes == (U, 1, U, U)
    assert recs["person2_virus_3.jpeg"].split == "test" and recs["person2_virus_3.jpeg"].patient_id == "person2"
    with pytest.raises(DatasetError, match="views present: unknown 3"):
        load_records(root, "folder")  # no view recorded: the default PA filter leaves nothing, and says why


def test_folder_unknown_class(tmp_path):
    _img(tmp_path / "BANANA" / "x.png")
    with pytest.raises(DatasetError, match="BANANA"):
        load_records(tmp_path, "folder", views="all")


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(tmp_path / "nope", "nih")
    with pytest.raises(DatasetError, match="nih, chexpert, mimic, folder"):
        load_records(tmp_path, "padchest")


# ---- preprocessing and the torch Dataset -------------------------------------------------
def test_resize_center_crop_keeps_aspect_and_antialiases():
    img = np.zeros((100, 200), np.float32)
    img[:, 50:150] = 1.0  # a bright centre band as wide as the crop
    out = resize_center_crop(img, 20)
    assert out.shape == (20, 20) and out.dtype == np.uint8
    assert out[:, 2:-2].min() > 240  # the centre was kept, sides cropped
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    small = resize_center_crop(checker, 16)
    assert np.abs(small.astype(int) - 128).max() < 10  # averaged, not aliased


def test_torch_dataset_cache_reused_and_invalidated(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for i in range(3):
        _img(root / f"{i}.png", value=50 * i + 20)
    _write(root / "labels.csv", ["path,effusion", "0.png,1", "1.png,0", "2.png,"])
    recs = load_records(root, "folder", views="all")
    cache = tmp_path / "cache"
    ds = XrayDataset(recs, 16, cache_dir=cache)
    x, c = ds[1]
    assert x.shape == (1, 16, 16) and torch.allclose(x[0, 8, 8], torch.tensor(70 / 127.5 - 1))
    assert c.tolist() == [2, 2, 0, 2]
    assert len(list(cache.glob("*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("image decoded although the cache is valid")

    monkeypatch.setattr(torch_dataset, "_load", boom)
    again = XrayDataset(recs, 16, cache_dir=cache)
    assert torch.equal(again[1][0], x)
    assert len(pickle.dumps(again)) < 10_000  # workers re-open the memmap instead of copying it
    monkeypatch.undo()
    os.utime(root / "1.png", ns=(1, 1))  # a changed file -> a new cache
    XrayDataset(recs, 16, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2


def test_torch_dataset_corrupt_image(tmp_path):
    root = tmp_path / "d"
    _img(root / "good.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    _write(root / "labels.csv", ["path,effusion", "good.png,1", "bad.png,0"])
    recs = load_records(root, "folder", views="all")
    with pytest.raises(CorruptImageError, match="bad.png"):
        XrayDataset(recs, 8, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npy"))
    ds = XrayDataset(recs, 8, cache_dir=tmp_path / "c", on_error="skip")
    assert len(ds) == 1 and ds.records[0].path.name == "good.png" and ds[0][1].tolist() == [2, 2, 1, 2]


def test_torch_dataset_without_cache(tmp_path):
    _img(tmp_path / "a.png", value=255, size=(12, 12))
    _write(tmp_path / "labels.csv", ["path,cardiomegaly", "a.png,1"])
    ds = XrayDataset(load_records(tmp_path, "folder", views="all"), 8, cache_dir=None)
    x, c = ds[0]
    assert x.shape == (1, 8, 8) and x.max() == 1.0 and c.tolist() == [2, 2, 2, 1]
