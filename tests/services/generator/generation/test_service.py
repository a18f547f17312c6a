"""The generation use case end to end in process: chunks, retries, storing, all-or-nothing, resuming, and the
CLI giving the same pixels as the API for the same request (one implementation)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from click.testing import CliRunner

from services.common.config import Limits
from services.common.findings import Condition
from services.common.store import BatchStore
from services.generator.generation import GenerationRequest, GenerationService, LocalGenerators, RetryPolicy
from services.generator.replica import GeneratorReplica
from generator_faults import FlakyGenerators, ReplicaLost
from serving_fakes import TinyGenerator


class Observer:
    def __init__(self):
        self.events: list[str] = []

    def sent(self, model_id, chunk):
        self.events.append("sent")

    def returned(self, model_id, chunk):
        self.events.append("returned")

    def done(self, model_id, chunk, result, latency_s):
        self.events.append("done")

    def retried(self, model_id):
        self.events.append("retried")


def service(gen: TinyGenerator, generators=None, **kw) -> GenerationService:
    generators = generators or LocalGenerators({gen.model_id: GeneratorReplica(gen.model_id, generator=gen,
                                                                               max_batch_size=4)})
    return GenerationService(generators, Limits(), gen.model_id, **kw)


def plan_of(svc, **req):
    return asyncio.run(svc.plan(GenerationRequest(**req), 100, "a test"))


def test_images_come_in_order_in_chunks_of_the_models_batch_size_with_seed_plus_i():
    gen = TinyGenerator()
    obs = Observer()
    svc = service(gen, observer=obs, window=2)
    plan = plan_of(svc, count=10, seed=5, condition=Condition(atelectasis="present"))
    images = asyncio.run(svc.generate(plan))
    assert sorted(gen.calls) == [2, 4, 4]
    np.testing.assert_array_equal(images, TinyGenerator().generate(plan.conditions, list(range(5, 15))))
    assert obs.events.count("sent") == obs.events.count("returned") == obs.events.count("done") == 3


def test_a_chunk_whose_replica_died_is_sent_again_with_the_same_seeds():
    gen = TinyGenerator()
    flaky = FlakyGenerators({gen.model_id: GeneratorReplica(gen.model_id, generator=gen, max_batch_size=4)}, failures=2)
    obs = Observer()
    svc = service(gen, generators=flaky, observer=obs, retry=RetryPolicy(retries=2, backoff_s=0.0))
    plan = plan_of(svc, count=6, seed=1)
    np.testing.assert_array_equal(asyncio.run(svc.generate(plan)), TinyGenerator().generate(plan.conditions, plan.seeds))
    assert obs.events.count("retried") == 2
    flaky.failures = 5  # more failures than retries: the error reaches the caller
    with pytest.raises(ReplicaLost):
        asyncio.run(svc.generate(plan))


def test_storing_commits_one_marked_batch_and_a_failure_leaves_nothing(tmp_path):
    store = BatchStore(tmp_path / "b")
    gen = TinyGenerator(fail_seeds={107})
    svc = service(gen)
    good = plan_of(svc, count=5, seed=0, prompt="cardiomegaly")
    seen: list[int] = []

    async def run(plan):
        writer = await svc.open_batch(plan, store, "png", created_by="key-1")
        return await svc.store(plan, writer, progress=seen.append)

    man = asyncio.run(run(good))
    assert man.count == 5 and man.created_by == "key-1" and seen[0] == 0 and seen[-1] == 5
    rec, img = next(iter(store.iter_images(man.batch_id)))
    assert (rec.seed, rec.prompt, rec.condition) == (0, "cardiomegaly", Condition(enlarged_cardiac_silhouette="present"))
    with pytest.raises(RuntimeError, match="seed 107"):
        asyncio.run(run(plan_of(svc, count=10, seed=100)))
    assert [b.batch_id for b in store.list()] == [man.batch_id]  # all or nothing
    assert not [p for p in (tmp_path / "b").iterdir() if p.name != man.batch_id]


def test_a_suspended_batch_is_resumed_after_its_last_stored_image(tmp_path):
    class Stop(Exception):
        pass

    store = BatchStore(tmp_path / "b")
    gen = TinyGenerator()
    svc = service(gen)
    plan = plan_of(svc, count=11, seed=20)
    stored: list[int] = []

    def stop_after_two_chunks():
        if len(stored) >= 3:  # progress(0), progress(4), progress(8)
            raise Stop()

    async def first():
        writer = await svc.open_batch(plan, store, "npz")
        try:
            await svc.store(plan, writer, progress=stored.append, check=stop_after_two_chunks, suspend_on=(Stop,))
        except Stop:
            return writer.batch_id

    staging = asyncio.run(first())
    assert stored == [0, 4, 8] and store.list() == []
    gen.calls.clear()

    async def resume():
        writer = await svc.open_batch(plan, store, "npz", resume_id=staging)
        assert writer.count == 8
        return await svc.store(plan, writer)

    man = asyncio.run(resume())
    assert man.batch_id == staging and man.count == 11 and gen.calls == [3]  # only the missing images
    pixels = np.stack([img for _, img in store.iter_images(man.batch_id)])
    np.testing.assert_array_equal(pixels, TinyGenerator().generate(plan.conditions, plan.seeds))


def test_the_cli_and_the_api_make_the_same_batch(tmp_path):
    """``synthrad generate`` and a batch job of the platform run the same use case: same pixels and records."""
    from serving_fakes import make_platform
    from services.generator.registry import load_generator
    from synthrad.cli.main import cli

    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["generate", "--model", "stylegan2-cxr64", "--prompt", "pleural effusion",
                                 "--n", "6", "--seed", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cli_store = BatchStore(out)
    (cli_batch,) = cli_store.list()

    gen = load_generator("stylegan2-cxr64", "auto", "cpu")  # the CLI's default backend (settings.backend)
    platform, store, _ = make_platform(tmp_path, gen=gen)

    async def go():
        plan = await platform.plan(None, None, "pleural effusion", 6, 3, None, 100, "one batch")
        rec = await platform.create_batch_job(plan, "png")
        return await platform.jobs.wait(rec.job_id, timeout=120)

    job = asyncio.run(go())
    api_batch = store.get(job.batch_id)
    cli_imgs = list(cli_store.iter_images(cli_batch.batch_id))
    api_imgs = list(store.iter_images(api_batch.batch_id))
    assert [(r.seed, r.condition, r.prompt) for r, _ in cli_imgs] == [(r.seed, r.condition, r.prompt) for r, _ in api_imgs]
    np.testing.assert_array_equal(np.stack([i for _, i in cli_imgs]), np.stack([i for _, i in api_imgs]))
    assert (cli_batch.model_hash, cli_batch.params) == (api_batch.model_hash, api_batch.params)


def test_a_family_name_means_the_same_model_as_in_the_cli():
    gen = TinyGenerator("tiny-a")
    svc = service(gen)
    assert plan_of(svc, model="tiny-test", count=1).model_id == "tiny-a"  # TinyGenerator's family
    with pytest.raises(Exception, match="unknown model 'nope'.*or a family: tiny-test"):
        plan_of(svc, model="nope", count=1)
