import importlib.metadata
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from services.common.codecs import CorruptImageError, decode_image, encode_image
from services.common.codecs.dicom import decode_dicom, encode_dicom
from services.common.codecs.files import read_image_file
from services.common.codecs.npz import decode_npz, encode_npz
from services.common.codecs.png import decode_png, encode_png
from services.common.codecs.webdataset import ShardWriter, iter_shard
from services.common.findings import Condition
from services.common.provenance import Provenance


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    return rng.random((48, 40)).astype(np.float32)


@pytest.fixture
def prov():
    return Provenance(model_id="stylegan2-cxr64", model_hash="abc123", seed=7,
                      condition=Condition.from_findings(present=["effusion"]), batch_id="b-1")


def _rg1(variant: str) -> Path:
    files = importlib.metadata.files("pydicom-data") or []
    hits = [f for f in files if Path(str(f)).name == f"RG1_{variant}.dcm"]
    if not hits:
        pytest.skip("pydicom-data (dev dependency) is not installed")
    return Path(hits[0].locate())


# ---- PNG ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, tol", [(8, 0.5 / 255 + 1e-6), (16, 0.5 / 65535 + 1e-6)])
def test_png_round_trip(img, prov, bits, tol):
    out, meta = decode_png(encode_png(img, prov, bit_depth=bits))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.abs(out - img).max() <= tol
    assert meta["provenance"] == prov
    assert meta["Description"].startswith("SYNTHETIC")


def test_png_rgb_encoded_grey_is_read_as_grey(tmp_path, img):
    grey = (img * 255).round().astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1), "RGB").save(tmp_path / "rgb.png")
    out = read_image_file(tmp_path / "rgb.png")
    assert out.shape == img.shape and np.abs(out - grey / 255.0).max() < 1e-6


# ---- DICOM -------------------------------------------------------------------------------
def test_dicom_round_trip_and_tags(img, prov):
    data = encode_dicom(img, prov)
    out, meta = decode_dicom(data)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.abs(out - img).max() <= 0.5 / 65535 + 1e-6
    assert meta["provenance"] == prov
    ds = pydicom.dcmread(io.BytesIO(data))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16
    assert ds.Modality == "DX"
    assert str(ds.PatientName) == "SYNTHETIC^SYNTHRAD" and ds.PatientIdentityRemoved == "YES"
    assert ds.get("PatientBirthDate", "") == "" and ds.get("PatientSex", "") == ""
    for tag in ("SeriesDescription", "ImageComments"):
        assert "SYNTHETIC" in ds[tag].value and "stylegan2-cxr64" in ds[tag].value


def test_dicom_instance_number_and_view_position(img, prov):
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(img, prov)))
    assert ds.InstanceNumber == 1
    assert ds.get("ViewPosition", "") == ""  # synthetic images have no acquisition view
    _, meta = decode_dicom(encode_dicom(img, prov))
    assert meta["ViewPosition"] == ""
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(img, prov, instance_number=5)))
    assert ds.InstanceNumber == 5
    viewed = prov.model_copy(update={"params": {"view": "ap"}})
    assert pydicom.dcmread(io.BytesIO(encode_dicom(img, viewed))).ViewPosition == "AP"
    _, data = encode_image(img, "dicom", prov, instance_number=3)
    assert pydicom.dcmread(io.BytesIO(data)).InstanceNumber == 3


def test_dicom_uids_are_new_per_image_and_shared_per_batch(img, prov):
    a = pydicom.dcmread(io.BytesIO(encode_dicom(img, prov)))
    b = pydicom.dcmread(io.BytesIO(encode_dicom(img, prov)))
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID
    c = pydicom.dcmread(io.BytesIO(encode_dicom(img, None)))
    assert c.SeriesInstanceUID != a.SeriesInstanceUID and "SYNTHETIC" in c.SeriesDescription


def test_dicom_provenance_survives_private_tag_stripping(img, prov):
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(img, prov)))
    ds.remove_private_tags()
    buf = io.BytesIO()
    ds.save_as(buf)
    _, meta = decode_dicom(buf.getvalue())
    assert meta["provenance"] == prov


def _raw_dicom(pixels: np.ndarray, **attrs) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.PixelRepresentation = 1, 16, 0
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_monochrome1_is_inverted():
    px = np.array([[0, 4095], [1000, 3000]], dtype=np.uint16)
    m2, _ = decode_dicom(_raw_dicom(px))
    m1, _ = decode_dicom(_raw_dicom(px, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(m2, px / 4095.0, atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - px / 4095.0, atol=1e-6)


def test_dicom_window_and_rescale_are_applied():
    px = np.array([[0, 1000, 2000, 4095]], dtype=np.uint16)
    out, _ = decode_dicom(_raw_dicom(px, WindowCenter=1000, WindowWidth=1000))
    assert out[0, 0] == 0.0 and out[0, 3] == 1.0 and 0.4 < out[0, 1] < 0.6
    rescaled, _ = decode_dicom(_raw_dicom(px, RescaleSlope=2, RescaleIntercept=-100))
    np.testing.assert_allclose(rescaled[0], (px[0] * 2 - 100 + 100) / (4095 * 2), atol=1e-6)


def test_dicom_voi_lut_sequence_is_applied():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(v) for v in (4095 - np.arange(4096)) * 16]  # an inverting LUT
    item["LUTData"].VR = "US"
    px = np.array([[0, 2048, 4095]], dtype=np.uint16)
    out, _ = decode_dicom(_raw_dicom(px, VOILUTSequence=[item]))
    np.testing.assert_allclose(out[0], (4095 - px[0]) * 16 / 65535, atol=1e-6)


def test_real_monochrome1_chest_radiograph_reads_with_bright_mediastinum():
    out, meta = decode_dicom(_rg1("UNCR").read_bytes())
    assert meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert out.dtype == np.float32 and out.shape == (1955, 1841) and 0 <= out.min() and out.max() <= 1
    mid = slice(900, 1100)
    spine, right_lung, left_lung = out[mid, 850:1000].mean(), out[mid, 300:450].mean(), out[mid, 1400:1550].mean()
    assert spine > right_lung + 0.1 and spine > left_lung + 0.1  # inverted: lungs dark, mediastinum bright


def test_real_jpeg2000_dicom_matches_uncompressed():
    try:
        j2k, _ = decode_dicom(_rg1("J2KR").read_bytes())
    except CorruptImageError as e:  # no JPEG 2000 decoder installed: the error must say what to install
        assert "pylibjpeg" in str(e)
        pytest.skip("no JPEG 2000 decoder for pydicom here")
    unc, _ = decode_dicom(_rg1("UNCR").read_bytes())
    np.testing.assert_array_equal(j2k, unc)


# ---- NPZ ---------------------------------------------------------------------------------
def test_npz_round_trip_is_lossless(img, prov):
    out, meta = decode_npz(encode_npz(img, prov))
    np.testing.assert_array_equal(out, img)
    assert meta["provenance"] == prov


def test_npz_accepts_a_lone_uint8_array():
    buf = io.BytesIO()
    np.savez(buf, np.full((4, 5), 255, np.uint8))
    out, meta = decode_npz(buf.getvalue())
    assert out.shape == (4, 5) and out.max() == 1.0 and meta == {}


# ---- dispatch ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["png", "png16", "dicom", "npz"])
def test_encode_decode_image_dispatch(img, prov, fmt):
    ext, data = encode_image(img, fmt, prov)
    out, meta = decode_image(data, "x" + ext)
    assert np.abs(out - img).max() < 1 / 255
    assert meta["provenance"] == prov


# ---- read_image_file ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["png", "png16", "dicom", "npz"])
def test_read_image_file_each_format(tmp_path, img, prov, fmt):
    ext, data = encode_image(img, fmt, prov)
    path = tmp_path / f"im{ext}"
    path.write_bytes(data)
    out = read_image_file(path)
    assert out.dtype == np.float32 and out.shape == img.shape and np.abs(out - img).max() < 1 / 255
    _, meta = read_image_file(path, with_meta=True)
    assert meta["provenance"] == prov


def test_read_image_file_jpeg_and_extensionless_dicom(tmp_path, img):
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert read_image_file(tmp_path / "a.jpg").shape == img.shape
    (tmp_path / "1.2.840.99").write_bytes(encode_dicom(img))
    assert np.abs(read_image_file(tmp_path / "1.2.840.99") - img).max() < 1e-4


def test_read_image_file_trusts_content_over_extension(tmp_path, img):
    (tmp_path / "mislabelled.dcm").write_bytes(encode_png(img))
    assert read_image_file(tmp_path / "mislabelled.dcm").shape == img.shape


@pytest.mark.parametrize("name, data", [
    ("bad.png", b"\x89PNG\r\n\x1a\nnot really"),
    ("bad.jpg", b"\xff\xd8\xff\xe0garbage"),
    ("bad.dcm", b"hello, not dicom" * 20),
    ("bad.npz", b"PK\x03\x04broken zip"),
    ("empty.png", b""),
])
def test_read_image_file_corrupt_names_file(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CorruptImageError, match=name):
        read_image_file(tmp_path / name)


def test_truncated_real_dicom_is_corrupt(tmp_path):
    path = tmp_path / "cut.dcm"
    path.write_bytes(_rg1("UNCR").read_bytes()[:5000])
    with pytest.raises(CorruptImageError, match="cut.dcm"):
        read_image_file(path)


# ---- WebDataset shards -------------------------------------------------------------------
def test_shards_round_trip(tmp_path, img, prov):
    with ShardWriter(tmp_path / "shards" / "shard-%04d.tar", max_count=2) as w:
        for i in range(5):
            w.write(f"sample{i:03d}", img * (i / 5), {"codes": [0, 1, 2, 2], "i": i}, provenance=prov)
    assert [p.name for p in w.shards] == ["shard-0000.tar", "shard-0001.tar", "shard-0002.tar"]
    assert not list((tmp_path / "shards").glob("*.tmp"))
    with tarfile.open(w.shards[0]) as t:
        assert t.getnames() == ["sample000.png", "sample000.json", "sample001.png", "sample001.json"]
    samples = [s for p in w.shards for s in iter_shard(p)]
    assert [k for k, _, _ in samples] == [f"sample{i:03d}" for i in range(5)]
    for i, (_, out, meta) in enumerate(samples):
        assert np.abs(out - img * (i / 5)).max() <= 0.5 / 255 + 1e-6
        assert meta["i"] == i and meta["codes"] == [0, 1, 2, 2]
        assert Provenance.model_validate(meta["provenance"]) == prov


def test_shard_writer_rejects_bad_keys_and_aborts_cleanly(tmp_path, img):
    with pytest.raises(ValueError, match="key"):
        ShardWriter(tmp_path / "s-%d.tar").write("a.b", img)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s-%d.tar") as w:
            w.write("ok", img)
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="%"):
        ShardWriter(tmp_path / "no-pattern.tar")


def test_iter_shard_reports_incomplete_samples(tmp_path, img):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as t:
        data = json.dumps({}).encode()
        info = tarfile.TarInfo("lonely.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(CorruptImageError, match="lonely"):
        list(iter_shard(path))
