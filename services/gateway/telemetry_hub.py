"""The telemetry deployment: the one set of ``synthrad_*`` series of a Serve application.

Gateway and jobs replicas relay what they observe (:class:`~services.gateway.telemetry.RelayTelemetry`); this
single replica records it in :mod:`services.gateway.prometheus`'s registry and counts the job states from the
shared job store at scrape time. Every gateway replica's ``GET /metrics`` returns :meth:`TelemetryHub.exposition`,
so a scrape shows the whole application whichever replica answers, and counters never jump between replicas. If
the hub restarts, its counters start from zero again, which Prometheus' ``rate()`` treats as a counter reset.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from services.common.logging import get_logger

from . import prometheus as m

log = get_logger(__name__)


def relay_to_hub(hub):
    """This replica's :class:`~services.gateway.telemetry.RelayTelemetry` to ``hub`` (a handle of
    :class:`TelemetryHub`), also the sink of its request counts: from now on the replica records nothing itself."""
    from .telemetry import RelayTelemetry

    relay = RelayTelemetry(hub.record.remote)
    m.relay_to(relay)
    return relay


@serve.deployment(
    name="telemetry",
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=10,
)
class TelemetryHub:
    def __init__(self, jobs_url: str | None, models: list[str]):
        from .jobs import JobManager

        self.jobs = JobManager(jobs_url, execute=False) if jobs_url else None
        self._counting = asyncio.Lock()
        self._counted = 0.0
        m.init_labels(models)

    def record(self, events) -> int:
        m.ChunkTelemetry().apply(events)
        return len(events)

    #: job states are counted from the store at most this often (concurrent scrapes share one count)
    COUNT_EVERY_S = 2.0

    async def exposition(self) -> bytes:
        if self.jobs is not None:
            async with self._counting:
                if time.monotonic() - self._counted >= self.COUNT_EVERY_S:
                    try:
                        m.set_job_counts(await asyncio.to_thread(self.jobs.counts))
                        self._counted = time.monotonic()
                    except OSError as e:  # the job store is unreachable: the gauges keep their last values
                        log.warning("could not count jobs for /metrics", extra={"error": e.strerror})
        m.refresh_inflight()  # forget the in-flight images of sources gone quiet
        return m.exposition()[0]
