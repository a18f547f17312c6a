"""The jobs deployment: batch, scoring and evaluation jobs run here, outside the gateway.

A gateway replica stores a job's record queued and unowned in the shared job store
(:class:`~services.gateway.job_store.JobStore`, ``Settings.resolved_jobs_url``) and calls :meth:`JobWorker.take`;
a replica of this deployment claims the record (one claim per attempt, created exclusively, so one replica
wins) and runs the job with the same use-case code the CLI and the in-process platform run
(:class:`~services.gateway.core.Platform`), reaching the generator deployments and the metrics deployment
through their handles. A batch job keeps ``serve.job_chunks_in_flight`` chunks in flight, which Serve's router
spreads over every generator replica. Records are refreshed every ``jobs.heartbeat_s``; every replica also
sweeps the store on that beat, so a job whose runner died (this replica killed, its node gone) is resumed by
the replica Serve starts in its place or by a sibling. Gateways hold no job state: any of them answers for any
job, and losing one loses nothing.

Telemetry of the jobs (chunks, finished jobs, scoring time) is relayed to the telemetry deployment, whose series
every gateway's ``/metrics`` shows (:mod:`services.gateway.telemetry`).
"""

from __future__ import annotations

from ray import serve

from services.common.config import settings_from
from services.common.logging import get_logger

log = get_logger(__name__)


@serve.deployment(
    name="jobs",
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=5,
    graceful_shutdown_timeout_s=30,
)
class JobWorker:
    def __init__(self, generators: dict, metrics, options: dict | None, telemetry):
        from services.common.store import BatchStore

        from .clients import HandleGenerators, HandleScorer
        from .core import Platform
        from .telemetry_hub import relay_to_hub

        options = dict(options or {})
        settings = settings_from(options.get("settings"))
        self.relay = relay_to_hub(telemetry)
        self.platform = Platform(
            HandleGenerators(generators, method=options.get("generator_method", "generate")),
            HandleScorer(metrics) if metrics is not None else None,
            BatchStore(settings.resolved_store_url), settings,
            jobs_dir=options.get("jobs_dir") or settings.resolved_jobs_url,
            default_model=options.get("default_model"), window=settings.serve.job_chunks_in_flight,
            observer=self.relay, execute_jobs=True,
        )

    async def take(self) -> int:
        """Claim and start the submitted jobs waiting in the store; returns how many this replica took."""
        return await self.platform.jobs.take_submitted()

    async def check_health(self) -> None:
        """Serve's health check (every few seconds): keeps the heartbeat (refresh + sweep of the job store)
        running. No storage I/O here: a slow or failing store must not get this replica restarted."""
        self.platform.jobs.ensure_running()

    async def __del__(self):
        await self.platform.shutdown()  # running batch jobs are handed back, queued; the next replica resumes them
        try:
            await self.relay.flush()
        except Exception:  # noqa: BLE001 - shutting down
            pass
