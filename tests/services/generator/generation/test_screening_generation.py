"""Screening at generation time: near copies flagged or dropped before they are stored, the manifest recording
the index, thresholds and seeds, refused early when no screener is available, and resumable.

The screener here is a fake whose "training set" is TinyGenerator's images of a few seeds (a near copy = the
same pixels); the screener over a shipped training-set index is exercised in
``tests/services/metrics/evaluation/test_index_screener.py``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common.config import Limits
from services.common.findings import Condition
from services.common.screening import ScreeningRecord, ScreeningUnavailable, ScreenVerdict
from services.common.store import BatchStore
from services.generator.base import GeneratorError
from services.generator.generation import (GenerationRequest, GenerationService, InvalidRequest, LocalGenerators)
from services.generator.replica import GeneratorReplica
from serving_fakes import TinyGenerator

COND = Condition(atelectasis="present")
COPIED = (3, 5, 9)  # seeds whose images are "in the training set"


class CopyScreener:
    def __init__(self, seeds=COPIED):
        self.train = TinyGenerator().generate([COND] * len(seeds), list(seeds))
        self.calls = 0

    def screen(self, images):
        self.calls += 1
        d = np.abs(images[:, None] - self.train[None]).reshape(len(images), len(self.train), -1).max(-1).min(1)
        return [ScreenVerdict(near_copy=bool(v < 1e-6), distances={"pixel": float(v)}) for v in d]

    def record(self, action):
        return ScreeningRecord(index="toy-train", index_sha256="f" * 64, spaces=["pixel"],
                               thresholds={"pixel": 1e-6}, quantile=0.01, action=action)


def service(screener=None, factory=None) -> GenerationService:
    gen = TinyGenerator()
    gens = LocalGenerators({gen.model_id: GeneratorReplica(gen.model_id, generator=gen, max_batch_size=4)})
    if factory is None and screener is not None:
        def factory(model_id):
            return screener
    return GenerationService(gens, Limits(), gen.model_id, screeners=factory)


def run_batch(svc, tmp_path, screen, count=12, seed=0, fmt="png"):
    store = BatchStore(tmp_path / "store")

    async def go():
        plan = await svc.plan(GenerationRequest(condition=COND, count=count, seed=seed, screen=screen), 100, "a test")
        writer = await svc.open_batch(plan, store, fmt)
        return await svc.store(plan, writer)

    return store, asyncio.run(go())


def test_drop_stores_no_near_copies_and_records_the_dropped_seeds(tmp_path):
    store, m = run_batch(service(CopyScreener()), tmp_path, "drop")
    seeds = [r.seed for r in m.images]
    assert seeds == [s for s in range(12) if s not in COPIED]
    assert m.count == 9 and all(r.near_copy is False for r in m.images)
    sc = store.get(m.batch_id).screening
    assert sc.action == "drop" and sc.dropped_seeds == list(COPIED) and sc.flagged_seeds == list(COPIED)
    assert sc.screened == 12 and sc.index == "toy-train" and sc.thresholds == {"pixel": 1e-6}
    # what is stored really holds no copy: screen the stored pixels again
    pixels = np.stack([img for _, img in store.iter_images(m.batch_id)])
    assert not any(v.near_copy for v in CopyScreener().screen(pixels.astype(np.float32)))


def test_flag_stores_every_image_and_marks_the_near_copies(tmp_path):
    store, m = run_batch(service(CopyScreener()), tmp_path, "flag", fmt="webdataset")
    assert [r.seed for r in m.images] == list(range(12))
    assert [r.seed for r in m.images if r.near_copy] == list(COPIED)
    sc = store.get(m.batch_id).screening
    assert sc.action == "flag" and sc.flagged_seeds == list(COPIED) and sc.dropped_seeds == []


def test_off_leaves_the_manifest_as_before(tmp_path):
    screener = CopyScreener()
    store, m = run_batch(service(screener), tmp_path, "off")
    assert screener.calls == 0 and m.screening is None and all(r.near_copy is None for r in m.images)


def test_screening_is_refused_at_planning_when_no_screener_is_available():
    with pytest.raises(InvalidRequest, match="screening is not available"):
        asyncio.run(service().plan(GenerationRequest(count=2, screen="flag"), 100, "a test"))

    def none_for(model_id):
        raise ScreeningUnavailable(f"no training-set index is known for model {model_id!r}")

    with pytest.raises(InvalidRequest, match="cannot screen images of model tiny-test: no training-set index"):
        asyncio.run(service(factory=none_for).plan(GenerationRequest(count=2, screen="drop"), 100, "a test"))


def test_inline_generation_refuses_a_screened_plan():
    svc = service(CopyScreener())
    plan = asyncio.run(svc.plan(GenerationRequest(count=2, screen="flag"), 100, "a test"))
    with pytest.raises(InvalidRequest, match="stored batches"):
        asyncio.run(svc.generate(plan))


def test_a_batch_of_only_near_copies_is_not_stored(tmp_path):
    store, _ = BatchStore(tmp_path / "s"), None
    svc = service(CopyScreener(seeds=(0, 1)))

    async def go():
        plan = await svc.plan(GenerationRequest(condition=COND, count=2, seed=0, screen="drop"), 100, "a test")
        return await svc.store(plan, await svc.open_batch(plan, store, "png"))

    with pytest.raises(GeneratorError, match="all 2 images were near copies"):
        asyncio.run(go())
    assert store.list() == []


def test_the_request_records_its_screen_action_for_a_resumed_job():
    req = GenerationRequest(condition=COND, count=3, screen="drop")
    assert GenerationRequest.from_record(req.record()).screen == "drop"
    assert "screen" not in GenerationRequest(count=3).record()  # unscreened job records read as before
    assert GenerationRequest.from_record(GenerationRequest(count=3).record()).screen == "off"


def test_a_resumed_dropping_batch_continues_after_the_last_generated_image(tmp_path):
    class Stop(Exception):
        pass

    svc = service(CopyScreener())
    store = BatchStore(tmp_path / "s")
    plan = asyncio.run(svc.plan(GenerationRequest(condition=COND, count=12, seed=0, screen="drop"), 100, "a test"))
    calls = {"n": 0}

    def stop_after_two_chunks():
        calls["n"] += 1
        if calls["n"] == 3:
            raise Stop()

    async def first():
        writer = await svc.open_batch(plan, store, "npz")
        with pytest.raises(Stop):
            await svc.store(plan, writer, check=stop_after_two_chunks, suspend_on=(Stop,))
        return writer.batch_id

    staging = asyncio.run(first())
    seen: list[int] = []

    async def second():
        writer = await svc.open_batch(plan, store, "npz", resume_id=staging)
        assert [r.seed for r in writer.records] == [0, 1, 2, 4, 6, 7]  # 3 and 5 dropped before the stop
        return await svc.store(plan, writer, progress=seen.append)

    m = asyncio.run(second())
    assert seen[0] == 8  # continues at seed 8, not at image count 6
    assert [r.seed for r in m.images] == [s for s in range(12) if s not in COPIED]
    assert m.screening.dropped_seeds == list(COPIED)  # including those dropped before the restart
    pixels = np.stack([img for _, img in store.iter_images(m.batch_id)])
    np.testing.assert_array_equal(pixels, TinyGenerator().generate([COND] * 9, [r.seed for r in m.images]))
