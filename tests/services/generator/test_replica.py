"""Grouping inside the generator's batch handler and the gateway's chunking (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np

from serving_fakes import TinyGenerator
from services.common.findings import Condition
from services.generator.base import GenerationParams
from services.generator.chunks import GenChunk, chunk_images
from services.generator.replica import GeneratorReplica


def _chunk(seeds, params=None, cond=None):
    return GenChunk(conditions=[cond or Condition()] * len(seeds), seeds=list(seeds), params=params or GenerationParams())


def test_same_batch_key_shares_one_forward_pass():
    gen = TinyGenerator()
    rep = GeneratorReplica("tiny", generator=gen)
    chunks = [_chunk([1, 2]), _chunk([3]), _chunk([4, 5, 6], cond=Condition(atelectasis="present"))]
    assert chunk_images(chunks) == 6
    res = rep.run_chunks(chunks)
    assert gen.calls == [6]  # one pass for all three requests
    assert [r.images.shape[0] for r in res] == [2, 1, 3]
    assert all(r.stats.batch_images == 6 and r.stats.batch_requests == 3 for r in res)
    assert len({r.stats.batch_seq for r in res}) == 1
    # batching never changes pixels: each chunk equals its own unbatched run
    for c, r in zip(chunks, res):
        np.testing.assert_array_equal(r.images, gen.generate(c.conditions, c.seeds, c.params))


def test_different_params_are_separate_passes_and_failures_stay_in_their_group():
    gen = TinyGenerator(fail_seeds={99})
    rep = GeneratorReplica("tiny", generator=gen)
    chunks = [_chunk([1, 2], GenerationParams(truncation=0.7)), _chunk([3], GenerationParams(truncation=0.5)),
              _chunk([4], GenerationParams(truncation=0.7)), _chunk([99, 5])]
    res = rep.run_chunks(chunks)
    assert sorted(gen.calls) == [1, 2, 3]  # truncation 0.7 (3 images), 0.5 (1), default (2, failed)
    assert isinstance(res[3], RuntimeError) and "seed 99" in str(res[3])
    assert res[0].stats.batch_seq == res[2].stats.batch_seq != res[1].stats.batch_seq
    np.testing.assert_array_equal(res[2].images, gen.generate([Condition()], [4], GenerationParams(truncation=0.7)))


def test_gateway_chunks_and_keeps_order(tmp_path):
    from services.common.config import Settings
    from services.common.store import BatchStore
    from services.generator.generation import LocalGenerators
    from services.gateway.core import Platform

    gen = TinyGenerator()
    settings = Settings(home=tmp_path, serve={"generator_max_batch_size": 4})
    platform = Platform(LocalGenerators({"tiny": GeneratorReplica("tiny", generator=gen)}, max_batch_size=4), None,
                        BatchStore(tmp_path / "b"), settings, default_model="tiny", window=3)

    async def go():
        plan = await platform.plan(None, None, "cardiomegaly", 10, 50, None, 100, "test")
        return plan, await platform.generate(plan)

    plan, images = asyncio.run(go())
    assert sorted(gen.calls) == [2, 4, 4]
    assert plan.seeds == list(range(50, 60))
    np.testing.assert_array_equal(images, gen.generate(plan.conditions, plan.seeds))


def test_gpu_without_nvml_warns_once_and_keeps_memory_stats(monkeypatch):
    """A CUDA replica without nvidia-ml-py reports GPU memory, leaves utilisation out and logs that once."""
    import torch

    from services.generator import replica

    def no_nvml(device=None):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda idx=None: (3 << 30, 8 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda idx=None: 1 << 30)
    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(replica, "_warned", set())
    warnings: list[str] = []
    monkeypatch.setattr(replica.log, "warning", lambda msg, *args: warnings.append(msg % args))

    for _ in range(3):
        stats = replica.gpu_stats("cuda:0")
        assert stats.memory_used_bytes == float(5 << 30) and stats.utilization_ratio is None
    assert len(warnings) == 1 and "nvidia-ml-py" in warnings[0] and "synthrad[gpu]" in warnings[0]

    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 42)
    assert replica.gpu_stats("cuda:0").utilization_ratio == 0.42
    assert replica.gpu_stats("cpu") is None and len(warnings) == 1
