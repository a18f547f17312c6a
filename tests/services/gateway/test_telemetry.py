"""Telemetry of jobs run by the jobs deployment reaches the gateway's Prometheus series: relayed events are
recorded once, and events that a gateway did not take wait for the next try."""

from __future__ import annotations

import asyncio

import numpy as np

from services.common.findings import Condition
from services.gateway import prometheus as m
from services.gateway.telemetry import RelayTelemetry
from services.generator.chunks import ChunkResult, ChunkStats, GenChunk, GpuStats


def _value(name: str, **labels) -> float:
    return m.REGISTRY.get_sample_value(name, labels) or 0.0


def _result(model: str, first: bool) -> ChunkResult:
    stats = ChunkStats(model=model, backend="eager", device="cuda:0", replica="r1", batch_seq=1, batch_images=2,
                       batch_requests=1, batch_groups=1, window_images=2, queue_s=0.01, compute_s=0.2,
                       first_of_pass=first, gpu=GpuStats("0", 5e9, 8e10, 4e9, 0.5))
    return ChunkResult(images=np.zeros((2, 4, 4), np.float32), stats=stats)


def test_relayed_events_are_recorded_once_by_the_gateway_that_receives_them():
    model = "relay-test-model"
    effusion = Condition.from_findings(present=["pleural_effusion"])
    chunk = GenChunk(conditions=[effusion, Condition()], seeds=[1, 2])
    delivered: list[list] = []
    fail = {"n": 1}

    async def push(events):
        if fail["n"]:  # the first try finds no gateway
            fail["n"] -= 1
            raise ConnectionError("no gateway yet")
        delivered.append(list(events))
        m.ChunkTelemetry().apply(events)  # what Gateway.record_telemetry does

    before = {
        "images": _value("synthrad_images_generated_total", model=model, backend="eager", finding="pleural_effusion"),
        "passes": _value("synthrad_generation_compute_seconds_count", model=model, backend="eager"),
        "latency": _value("synthrad_generation_latency_seconds_count", model=model, backend="eager"),
        "retries": _value("synthrad_generation_chunk_retries_total", model=model),
        "jobs": _value("synthrad_jobs_finished_total", kind="batch", state="succeeded"),
        "scoring": _value("synthrad_scoring_latency_seconds_count", reference="ref-x", extractor="inception"),
    }

    async def go():
        relay = RelayTelemetry(push, flush_s=0.01)
        relay.sent(model, chunk)
        relay.retried(model)
        relay.returned(model, chunk)
        relay.sent(model, chunk)
        relay.returned(model, chunk)
        relay.done(model, chunk, _result(model, first=True), 0.25)
        relay.done(model, chunk, _result(model, first=False), 0.3)
        relay.job_finished("batch", "succeeded")
        relay.scoring("ref-x", "inception", 1.5)
        assert await relay.flush() == 0  # not taken: kept
        assert await relay.flush() == 6  # 5 events + this source's in-flight count (absolute: sent once)
        assert await relay.flush() == 0 and len(delivered) == 1  # nothing sent twice

    asyncio.run(go())
    assert _value("synthrad_images_generated_total", model=model, backend="eager",
                  finding="pleural_effusion") - before["images"] == 2
    assert _value("synthrad_generation_latency_seconds_count", model=model, backend="eager") - before["latency"] == 2
    assert _value("synthrad_generation_compute_seconds_count", model=model, backend="eager") - before["passes"] == 1
    assert _value("synthrad_generation_chunk_retries_total", model=model) - before["retries"] == 1
    assert _value("synthrad_generation_queue_depth", model=model) == 0  # sent and returned balance
    assert _value("synthrad_gpu_memory_used_bytes", model=model, replica="r1", gpu="0") == 5e9
    assert _value("synthrad_jobs_finished_total", kind="batch", state="succeeded") - before["jobs"] == 1
    assert _value("synthrad_scoring_latency_seconds_count", reference="ref-x", extractor="inception") \
        - before["scoring"] == 1


def test_the_buffer_is_bounded_while_no_gateway_answers():
    async def never(events):
        raise ConnectionError("down")

    async def go():
        relay = RelayTelemetry(never, flush_s=60, max_buffer=5)
        for _ in range(12):
            relay.retried("m")
        assert len(relay._buf) == 5 and relay._dropped == 7  # noqa: SLF001
        assert await relay.flush() == 0 and len(relay._buf) == 5  # noqa: SLF001

    asyncio.run(go())


def test_queue_depth_sums_the_sources_in_flight_and_forgets_a_source_gone_quiet(monkeypatch):
    from services.gateway.telemetry import RelayedEvent

    model = "inflight-model"

    def inflight(source, n):
        return RelayedEvent("inflight", model, count=n, state=source)

    hub = m.ChunkTelemetry()
    hub.apply([inflight("gateway-1", 32), inflight("jobs-1", 16)])
    assert _value("synthrad_generation_queue_depth", model=model) == 48
    hub.apply([inflight("gateway-1", 0)])
    assert _value("synthrad_generation_queue_depth", model=model) == 16
    monkeypatch.setattr(m, "SOURCE_TTL_S", 0.0)  # jobs-1 was killed with 16 images out: never heard from again
    m.refresh_inflight()
    assert _value("synthrad_generation_queue_depth", model=model) == 0
