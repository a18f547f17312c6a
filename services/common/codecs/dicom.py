"""DICOM via pydicom: synthetic DX/CR images out (no patient data, new UIDs), real radiographs in.

Written files are 16-bit MONOCHROME2, ImageType DERIVED\\SECONDARY, with the synthetic notice in
SeriesDescription / ImageComments and the provenance JSON in a private block (creator ``SYNTHRAD``,
group 0x0011, element 0x01) and at the end of ImageComments (survives private-tag stripping).
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone

import numpy as np

from ..provenance import SYNTHETIC_NOTICE, Provenance
from .errors import CorruptImageError
from .pixels import to_uint

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SYNTHRAD"
SOP_CLASSES = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}
_PROV_IN_COMMENTS = re.compile(r"provenance: (\{.*\})\s*$", re.S)


def encode_dicom(img: np.ndarray, provenance: Provenance | None = None, modality: str = "DX",
                 instance_number: int = 1) -> bytes:
    """float [0, 1] HxW -> DICOM bytes (Explicit VR Little Endian).

    ``instance_number``: the image's 1-based position in its batch. ViewPosition stays empty: a synthetic
    image has no acquisition view, unless ``provenance.params`` records one under ``"view"``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(SOP_CLASSES)}, got {modality!r}")
    pixels = to_uint(img, 16)
    notice = provenance.notice() if provenance else SYNTHETIC_NOTICE
    # Images of one batch share a study and series (UIDs derived from the batch id); others get fresh ones.
    group = [provenance.batch_id] if provenance and provenance.batch_id else None
    study_uid = generate_uid(entropy_srcs=group + ["study"]) if group else generate_uid()
    series_uid = generate_uid(entropy_srcs=group + ["series"]) if group else generate_uid()
    sop_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.now(timezone.utc)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[modality], sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ConversionType = "SYN"
    ds.Manufacturer = "synthrad"
    ds.SeriesDescription = notice
    ds.StudyDescription = "SYNTHETIC chest radiograph"
    ds.BodyPartExamined = "CHEST"
    view = (provenance.params or {}).get("view") if provenance is not None else None
    ds.ViewPosition = str(view).strip().upper() if view else ""
    ds.PatientName = "SYNTHETIC^SYNTHRAD"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    comments = notice + " (not a real patient)"
    if provenance is not None:
        comments += f"; provenance: {provenance.to_json()}"
        ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(0x01, "UT", provenance.to_json())
    ds.ImageComments = comments
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PresentationLUTShape = "IDENTITY"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = 32768, 65536  # identity window over the full 16-bit range
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _read(data: bytes, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        try:  # files written without the 128-byte preamble / "DICM" prefix
            return pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as e:
            raise CorruptImageError(f"{name}: not a readable DICOM file ({e})") from e
    except Exception as e:
        raise CorruptImageError(f"{name}: not a readable DICOM file ({e})") from e


def _pixels(ds, name: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise CorruptImageError(f"{name}: DICOM file holds no pixel data (is it a structured report or a DICOMDIR?)")
    try:
        arr = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = (
            f" The transfer syntax {ts.name if ts else '?'} may need a decoder plugin: "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)."
        )
        raise CorruptImageError(f"{name}: cannot decode DICOM pixel data ({e}).{hint}") from e
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    return arr


def _to_unit(ds, arr: np.ndarray) -> np.ndarray:
    """Modality LUT (rescale), VOI LUT / window, MONOCHROME1 inversion -> float32 [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # colour: to luminance, no LUTs apply
        rgb = arr.astype(np.float64)
        if arr.ndim == 3 and arr.shape[-1] == 3:
            rgb = rgb @ np.array([0.299, 0.587, 0.114])
        peak = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return np.clip(rgb / peak, 0, 1).astype(np.float32)
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    has_modality_lut = "ModalityLUTSequence" in ds
    out = apply_modality_lut(arr, ds)
    if not has_modality_lut:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    if "VOILUTSequence" in ds:
        if not np.issubdtype(out.dtype, np.integer):  # LUTs index integers
            out = np.rint(out).astype(np.int64)
        out = apply_voi_lut(out, ds)
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**lut_bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_voi_lut(out, ds)
        # pydicom's windowing maps onto the stored range (or 0..2**bits-1 after a modality LUT)
        if has_modality_lut:
            lo, hi = 0.0, float(2**bits - 1)
        elif signed:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        else:
            lo, hi = 0.0, float(2**bits - 1)
    unit = (out.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def decode_dicom(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, dict]:
    """DICOM bytes -> (float32 HxW in [0, 1], metadata with ``provenance`` when synthrad wrote it)."""
    ds = _read(data, name)
    img = _to_unit(ds, _pixels(ds, name))
    if img.ndim != 2:
        raise CorruptImageError(f"{name}: expected a 2-D greyscale image, got pixel array of shape {img.shape}")
    meta: dict = {
        "Modality": str(ds.get("Modality", "")),
        "PhotometricInterpretation": str(ds.get("PhotometricInterpretation", "")),
        "ViewPosition": str(ds.get("ViewPosition", "")),
        "SeriesDescription": str(ds.get("SeriesDescription", "")),
        "ImageComments": str(ds.get("ImageComments", "")),
    }
    prov_json = None
    try:
        prov_json = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x01].value
    except KeyError:
        m = _PROV_IN_COMMENTS.search(meta["ImageComments"])
        prov_json = m.group(1) if m else None
    if prov_json:
        try:
            meta["provenance"] = Provenance.from_json(prov_json)
        except ValueError:
            meta["provenance_raw"] = json.loads(prov_json) if prov_json.startswith("{") else prov_json
    return img, meta
