"""The screening interface and what the store records of it: verdicts, the manifest's screening record,
``ImageRecord.near_copy``, and manifests written before these fields existed still parse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.findings import Condition
from services.common.screening import SCREEN_ACTIONS, Screener, ScreeningRecord, ScreenVerdict
from services.common.store import BatchStore, ImageRecord, Manifest, parse_manifest


class FakeScreener:
    def screen(self, images):
        return [ScreenVerdict(near_copy=bool(im.mean() > 0.5), distances={"pixel": float(im.mean())}) for im in images]

    def record(self, action):
        return ScreeningRecord(index="toy", spaces=["pixel"], thresholds={"pixel": 0.5}, quantile=0.01, action=action)


def test_a_screener_is_anything_with_screen_and_record():
    s = FakeScreener()
    assert isinstance(s, Screener)
    v = s.screen(np.stack([np.zeros((4, 4)), np.ones((4, 4))]).astype(np.float32))
    assert [x.near_copy for x in v] == [False, True]
    assert SCREEN_ACTIONS == ("off", "flag", "drop")


def test_a_screening_record_round_trips_as_json():
    rec = FakeScreener().record("drop").model_copy(update={"screened": 8, "flagged_seeds": [3, 5],
                                                           "dropped_seeds": [3, 5]})
    again = ScreeningRecord.model_validate_json(rec.model_dump_json())
    assert again == rec
    with pytest.raises(Exception):
        ScreeningRecord(index="x", spaces=["pixel"], action="off")  # off is not a screening action


def _write(store: BatchStore, screened: bool) -> Manifest:
    w = store.create("m", "0" * 64, "eager", "png")
    img = np.full((8, 8), 0.25, np.float32)
    w.add(img, 1, Condition(), near_copy=False if screened else None)
    w.add(img, 2, Condition(), near_copy=True if screened else None)
    if screened:
        w.screening = FakeScreener().record("flag").model_copy(update={"screened": 2, "flagged_seeds": [2]})
    return w.commit()


def test_a_screened_batch_records_near_copies_and_the_screening(tmp_path):
    store = BatchStore(tmp_path)
    m = _write(store, screened=True)
    again = store.get(m.batch_id)
    assert [r.near_copy for r in again.images] == [False, True]
    assert again.screening.index == "toy" and again.screening.flagged_seeds == [2]
    assert again.screening.action == "flag" and again.screening.thresholds == {"pixel": 0.5}
    store.verify(m.batch_id)


def test_an_unscreened_manifest_has_no_screening_fields(tmp_path):
    store = BatchStore(tmp_path)
    m = _write(store, screened=False)
    raw = json.loads(store.read_file(m.batch_id, "manifest.json"))
    assert "screening" not in raw
    assert all("near_copy" not in r for r in raw["images"])
    assert store.get(m.batch_id).screening is None


def test_an_old_manifest_without_the_new_fields_still_parses():
    old = {
        "schema_version": 2, "batch_id": "20261127t015959-1a2b3c4d5e6f", "synthetic": True, "model_id": "m",
        "model_hash": "0" * 64, "backend": "eager", "format": "png", "created": "2026-11-27T01:59:59Z",
        "params": {}, "count": 1, "files": {"000000-s7.png": "a" * 64},
        "images": [{"index": 0, "file": "000000-s7.png", "seed": 7, "condition": Condition().model_dump(mode="json"),
                    "prompt": None, "sha256": "a" * 64}],
    }
    m = parse_manifest(old["batch_id"], json.dumps(old).encode())
    assert m.screening is None and m.images[0].near_copy is None
    assert ImageRecord.model_validate(old["images"][0]).near_copy is None
