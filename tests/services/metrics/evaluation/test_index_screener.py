"""The IndexScreener over a shipped training-set index, alone and inside the generation use case: a generator
that emits training images has them dropped, and the memorisation evaluation of the stored batch finds no near
copy; ``synthrad generate --screen flag`` records its screening in the manifest."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from repo_paths import NIH64

from services.common.config import Limits
from services.common.findings import Condition
from services.common.screening import Screener, ScreeningUnavailable
from services.common.store import BatchStore
from services.generator.generation import GenerationRequest, GenerationService, LocalGenerators
from services.generator.replica import GeneratorReplica
from services.metrics.evaluation import evaluate
from services.metrics.evaluation.indexes import load_index
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, load_real
from services.metrics.evaluation.screening import IndexScreener, screener_factory
from serving_fakes import TinyGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nih():
    return load_real(DataSpec(path=str(NIH64), layout="nih", views=["PA", "AP"], split_by="recorded"), 64)


def test_training_images_are_near_copies_and_unseen_ones_mostly_not(nih):
    s = IndexScreener("nih-cxr64-train", ["pixel", "cxr-encoder"])
    assert isinstance(s, Screener)
    assert all(v.near_copy for v in s.screen(nih.train_images[:20]))
    held = s.screen(nih.test_images)
    assert sum(v.near_copy for v in held) <= 12  # 1 % per space by construction: ≈ 2–4 of 200
    assert held[0].nearest["pixel"] in nih.train_ids and set(held[0].distances) == {"pixel", "cxr-encoder"}
    rec = s.record("drop")
    assert rec.index == "nih-cxr64-train" and rec.index_sha256 == load_index("nih-cxr64-train").sha256
    assert rec.thresholds["pixel"] == pytest.approx(load_index("nih-cxr64-train").space("pixel").threshold(0.01))


def test_a_model_without_an_index_cannot_be_screened():
    with pytest.raises(ScreeningUnavailable, match="no training-set index"):
        IndexScreener.for_model("tiny-test")
    assert IndexScreener.for_model("ddpm-kermany128").index.name == "kermany-train"


class CopyingGenerator(TinyGenerator):
    """Emits NIH training image ``seed`` for even seeds and an unseen (held-out) image for odd ones."""

    def __init__(self, train, unseen):
        super().__init__("copycat", resolution=64)
        self.train, self.unseen = train, unseen

    def generate(self, conditions, seeds, params=None, prompts=None):
        self.check_inputs(conditions, seeds, prompts)
        return np.stack([self.train[s] if s % 2 == 0 else self.unseen[s] for s in seeds]).astype(np.float32)


def test_a_dropping_batch_holds_no_near_copy_of_the_training_set(nih, tmp_path):
    index = "nih-cxr64-train"
    unseen_ok = [not v.near_copy for v in IndexScreener(index).screen(nih.test_images)]
    unseen = nih.test_images[np.flatnonzero(unseen_ok)]  # unseen images the screen keeps
    gen = CopyingGenerator(nih.train_images, unseen)
    svc = GenerationService(LocalGenerators({gen.model_id: GeneratorReplica(gen.model_id, generator=gen,
                                                                            max_batch_size=5)}),
                            Limits(), gen.model_id, screeners=screener_factory(index=index))
    store = BatchStore(tmp_path / "store")

    async def go():
        plan = await svc.plan(GenerationRequest(condition=Condition(), count=16, seed=0, screen="drop"), 100, "test")
        return await svc.store(plan, await svc.open_batch(plan, store, "png"))

    m = asyncio.run(go())
    assert [r.seed for r in m.images] == list(range(1, 16, 2))
    assert m.screening.dropped_seeds == list(range(0, 16, 2)) and m.screening.index == index
    recs = list(store.iter_images(m.batch_id))  # the stored (8-bit PNG) pixels, checked against the manifest
    stored = SyntheticSet(np.stack([img for _, img in recs]), np.stack([r.condition.codes() for r, _ in recs]),
                          [r.seed for r, _ in recs], m.model_id, m.model_hash, m.batch_id, "stored batch", 64)
    r = evaluate("memorisation", stored, {"index": index, "spaces": ["pixel"], "gallery": 0})
    assert r.headline["flagged[pixel]"] == 0.0 and r.headline["memorised"] is False


def test_the_cli_screens_a_generated_batch(tmp_path):
    from synthrad.cli.main import cli

    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["generate", "--model", "stylegan2-cxr64", "--n", "4", "--seed", "1",
                                 "--screen", "flag", "--screen-space", "pixel", "--screen-space", "cxr-encoder",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "screening (pixel, cxr-encoder against index nih-cxr64-train): flagged" in r.output
    (m,) = BatchStore(out).list()
    raw = json.loads(Path(BatchStore(out).batch_path(m.batch_id), "manifest.json").read_text())
    assert raw["screening"]["action"] == "flag" and raw["screening"]["screened"] == 4
    assert raw["screening"]["spaces"] == ["pixel", "cxr-encoder"]
    assert all(isinstance(im["near_copy"], bool) for im in raw["images"])
    bad = CliRunner().invoke(cli, ["generate", "--model", "stylegan2-cxr64", "--n", "2", "--screen", "drop",
                                   "--screen-index", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown training index 'nope'" in bad.output
