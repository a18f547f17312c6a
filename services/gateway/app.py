"""The ONE Ray Serve application of synthrad, and a local launcher for it.

Deployments (composed by deployment handles)::

    gateway  (ingress, serve.gateway_replicas: FastAPI REST (rest.py) + the gRPC methods Serve's gRPC proxy calls
              (grpc_servicer.py, over grpc_api.GrpcApi) + /metrics; holds no job state)
      |-- generator-<model_id>   one per served model; @serve.batch dynamic batching; autoscaling; GPU share
      |-- metrics                scoring of stored batches against registered references
      |-- jobs                   runs batch / scoring / evaluation jobs from the shared job store (job_worker.py)
      |     |-- generator-<model_id>
      |     |-- metrics
      |     `-- telemetry
      `-- telemetry              the one set of synthrad_* series: every replica relays to it, /metrics shows it

:func:`build_app` returns the application (also importable by ``serve run`` / KubeRay as
``services.gateway.app:app_builder``); :func:`start_local` starts Ray + Serve on this machine the way
``synthrad serve`` / ``synthrad demo`` / the end-to-end tests do, and returns the URLs.

The private Ray that :func:`start_local` starts (see :mod:`services.gateway.ray_local`) listens on 127.0.0.1
only — node IP, GCS, raylet, object manager, core-worker ports, dashboard agent (HTTP + gRPC), runtime-env
agent, metrics, and Serve's replica gRPC servers — and uses Ray's token authentication (a fresh random
token per start, passed to every Ray process with ``RAY_AUTH_TOKEN_PATH``), so nobody else on the machine can
submit jobs to the dashboard agent or call Ray's gRPC services. ``SYNTHRAD_SERVE__RAY_TOKEN_AUTH=false``
turns the token off (loopback binding stays). The dashboard (:8265) is not started. Serve's HTTP proxy binds
``serve.host`` (127.0.0.1 by default); its gRPC proxy binds 127.0.0.1 too while ``serve.host`` is a loopback
address (else every interface — and while no API key is configured the gateway refuses gRPC calls from
non-loopback peers). On a Ray cluster that :func:`start_local` did not start, nothing of this is touched.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from services.common.config import Settings, get_settings, settings_from
from services.common.logging import get_logger
from services.generator.deployment import GeneratorDeployment
from services.metrics.deployment import MetricsDeployment

from .grpc_servicer import SERVICER_FUNCTIONS, GrpcIngress
from .job_worker import JobWorker
from .telemetry_hub import TelemetryHub, relay_to_hub

log = get_logger(__name__)

APP_NAME = "synthrad"


@serve.deployment(
    name="gateway",
    num_replicas=1,
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress()
class Gateway(GrpcIngress):
    """Ingress: REST (FastAPI, built per replica) and the gRPC methods (one per RPC, from :class:`GrpcIngress`).
    Jobs are stored in the shared job store and run by the jobs deployment, so replicas are interchangeable."""

    def __init__(self, generators: dict, metrics=None, options: dict | None = None, jobs=None, telemetry=None):
        from services.common.store import BatchStore

        from .clients import HandleGenerators, HandleScorer
        from .core import Platform
        from .grpc_api import GrpcApi

        options = dict(options or {})
        settings = settings_from(options.get("settings"))
        self.settings = settings
        self._jobs = jobs
        self._hub = telemetry
        # this replica records nothing itself: one set of series for the application
        relay = self._relay = relay_to_hub(telemetry) if telemetry is not None else None
        store = BatchStore(settings.resolved_store_url)
        jobs_dir = options.get("jobs_dir") or settings.resolved_jobs_url
        self.platform = Platform(
            HandleGenerators(generators, method=options.get("generator_method", "generate")),
            HandleScorer(metrics) if metrics is not None else None,
            store, settings, jobs_dir=jobs_dir, default_model=options.get("default_model"),
            execute_jobs=jobs is None, on_submit=self._submitted if jobs is not None else None,
            observer=relay, metrics_source=self._metrics if telemetry is not None else None,
        )
        self.auth = self.platform.auth
        # local mode (no API keys): gRPC only from loopback peers (Serve's gRPC proxy may listen on every interface)
        self.serve_grpc(GrpcApi(self.platform, self.auth),
                        loopback_only=bool(options.get("grpc_loopback_only", not self.auth.enabled)))

    def _submitted(self, rec) -> None:
        self._jobs.take.remote()  # fire and forget: the jobs replicas' sweep finds the record anyway

    async def _metrics(self) -> bytes:
        await self._relay.flush()  # this replica's own events first
        return await self._hub.exposition.remote()

    def __serve_build_asgi_app__(self):
        from .rest import create_app

        return create_app(self.platform, self.auth)

    async def __del__(self):
        await self.platform.shutdown()
        if self._hub is not None:
            try:
                await self._relay.flush()  # this replica's last request counts
            except Exception:  # noqa: BLE001 - shutting down
                pass


# ---- building the application -------------------------------------------------------------------
def _gpu_count() -> float:
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0))
    except Exception:
        pass
    try:
        import torch

        return float(torch.cuda.device_count())
    except Exception:
        return 0.0


def registered_models() -> list[str]:
    from services.generator.registry import list_models

    infos = list_models()
    for mi in infos:
        if mi.status != "ok":
            log.warning("not serving model %s: %s", mi.model_id, mi.error)
    models = [mi.model_id for mi in infos if mi.status == "ok"]
    if not models:
        raise RuntimeError("no models are registered (services/generator/weights/*.json or SYNTHRAD_MODEL_DIRS)")
    return models


def build_app(settings: Settings | None = None, models: list[str] | None = None, backend: str | None = None,
              device: str | None = None, with_metrics: bool = True, max_replicas: int | None = None,
              generator_factory: str | dict[str, str] | None = None, jobs_dir: str | None = None):
    """The Serve application: one generator deployment per model, the metrics deployment, the gateway.

    ``generator_factory`` ("module:function", or a dict model_id -> "module:function") builds generators that
    are not in the registry (tests, custom builds); other models load through the registry.
    """
    settings = settings or get_settings()
    models = list(models) if models else registered_models()
    backend = backend or settings.backend
    gpus = _gpu_count()
    use_gpu = gpus > 0 and (device or settings.device) != "cpu"
    device = device or ("cuda" if use_gpu else "cpu")
    n_users = len(models) + (1 if with_metrics else 0)
    gpu_share = min(1.0, gpus / n_users) if use_gpu else 0.0
    sv = settings.serve
    if max_replicas is None:  # CPU: one replica per model (it uses the cores); GPU: up to one per GPU
        max_replicas = sv.generator_max_replicas or (max(1, int(gpus)) if use_gpu else 1)
    min_replicas = min(sv.generator_min_replicas, max_replicas)
    # Threads: Ray sets OMP_NUM_THREADS from a replica's CPU share (1 here). Measured on the 2-core dev box,
    # a StyleGAN2 64px image takes 17 ms with 1 thread and 1.2 s with 2 threads under load (OpenMP spinning
    # against other processes), so replicas keep Ray's setting; scale out with replicas, not threads.
    torch_threads = None
    gens = {}
    for mid in models:
        actor: dict[str, Any] = {"num_cpus": 1.0 if use_gpu else 0.5}
        if gpu_share:
            actor["num_gpus"] = gpu_share
        if sv.generator_resources:  # node placement (a generator node pool)
            actor["resources"] = dict(sv.generator_resources)
        gens[mid] = GeneratorDeployment.options(
            name=f"generator-{mid}",
            ray_actor_options=actor,
            max_ongoing_requests=max(64, 4 * sv.generator_max_batch_size),
            max_queued_requests=sv.generator_max_queued_requests,  # beyond: shed (503 + Retry-After)
            autoscaling_config={
                "min_replicas": min_replicas, "initial_replicas": min_replicas, "max_replicas": max_replicas,
                # chunks in flight per replica before Serve adds one (a request keeps ~4 chunks in flight)
                "target_ongoing_requests": sv.generator_target_ongoing_requests,
                "upscale_delay_s": sv.generator_upscale_delay_s, "downscale_delay_s": sv.generator_downscale_delay_s,
            },
        ).bind(mid, backend, device, sv.generator_max_batch_size, sv.generator_batch_wait_s, torch_threads,
               generator_factory.get(mid) if isinstance(generator_factory, dict) else generator_factory)
    metrics = None
    if with_metrics:
        m_actor: dict[str, Any] = {"num_cpus": 0.5}
        if gpu_share:
            m_actor["num_gpus"] = gpu_share
        if sv.metrics_resources:
            m_actor["resources"] = dict(sv.metrics_resources)
        metrics = MetricsDeployment.options(ray_actor_options=m_actor).bind(
            settings.resolved_store_url, str(settings.inception_weights) if settings.inception_weights else None,
            device, settings.resolved_metrics_cache_url)
    options = {"settings": settings.model_dump(mode="json"), "default_model": settings.default_model,
               "jobs_dir": jobs_dir}
    head_actor: dict[str, Any] = {"num_cpus": 0.25}
    if sv.gateway_resources:  # the gateway and the jobs deployment go where the gateway goes (the head)
        head_actor["resources"] = dict(sv.gateway_resources)
    hub = TelemetryHub.options(ray_actor_options={**head_actor, "num_cpus": 0}).bind(
        jobs_dir or settings.resolved_jobs_url, models)
    jobs = JobWorker.options(num_replicas=sv.job_workers, ray_actor_options=dict(head_actor)).bind(
        gens, metrics, options, hub)
    return Gateway.options(num_replicas=sv.gateway_replicas, ray_actor_options=dict(head_actor)).bind(
        gens, metrics, options, jobs, hub)


def app_builder(args: dict | None = None):
    """Entry point for ``serve run services.gateway.app:app_builder`` and KubeRay's RayService."""
    args = dict(args or {})
    models = args.get("models")
    if isinstance(models, str):
        models = [x for x in models.split(",") if x]
    return build_app(models=models, backend=args.get("backend"), device=args.get("device"),
                     with_metrics=str(args.get("with_metrics", "true")).lower() != "false")


# ---- local launcher -------------------------------------------------------------------------------
@dataclass
class LocalPlatform:
    http_url: str
    grpc_target: str
    metrics_url: str
    ray_metrics_url: str | None
    models: list[str]
    store_url: str
    started_s: float
    #: where the job records live (every gateway and jobs replica shares it)
    jobs_url: str | None = None
    #: Ray's token file while Ray token auth is on (``RAY_AUTH_TOKEN_PATH=<it> ray status`` talks to this Ray)
    ray_token_file: str | None = None
    _owns_ray: bool = field(default=True, repr=False)
    _ray_session: Any = field(default=None, repr=False)

    def shutdown(self) -> None:
        """Delete the application (replicas shut down gracefully: running batch jobs are handed back queued and
        the next jobs replica on the same job store resumes them), then stop
        the private Ray (and remove its token). On a Ray cluster we did not start, only our application is
        removed."""
        from .ray_local import stop_ray

        try:
            serve.delete(APP_NAME, _blocking=True)
        except Exception as e:  # noqa: BLE001 - still stop Ray below
            log.warning("deleting the Serve application failed", extra={"error": str(e)})
        finally:
            if self._owns_ray:
                stop_ray(self._ray_session)


def _free_port(host: str = "127.0.0.1") -> int:
    from .ray_local import free_port

    return free_port(host)


def configure_ray_env(settings: Settings) -> None:
    """Environment defaults for a private local Ray: no usage stats, quiet logs. (The auth mode, token and
    loopback binding are set up by :func:`services.gateway.ray_local.start_ray`, which :func:`start_local`
    calls only when it starts Ray itself.)"""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def start_local(settings: Settings | None = None, models: list[str] | None = None, backend: str | None = None,
                device: str | None = None, with_metrics: bool = True, http_port: int | None = None,
                grpc_port: int | None = None, ray_metrics_port: int | None = None,
                generator_factory: str | dict[str, str] | None = None, jobs_dir: str | None = None,
                wait_ready_s: float = 300.0) -> LocalPlatform:
    """Start a private Ray (loopback only, token auth, no dashboard, no usage stats) + Serve with HTTP and
    gRPC, deploy the app, wait until ready. Reuses an already initialised Ray (then nothing of it is changed)."""
    import ray

    from .ray_local import grpc_bind_host, start_ray, stop_ray

    settings = settings or get_settings()
    models = list(models) if models else registered_models()
    _check_models(models, generator_factory)  # fail fast, before Ray starts
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    t0 = time.time()
    sv = settings.serve
    host = sv.host
    http_port = sv.http_port if http_port is None else http_port
    grpc_port = sv.grpc_port if grpc_port is None else grpc_port
    http_port = http_port or _free_port()
    grpc_port = grpc_port or _free_port()
    owns = not ray.is_initialized()
    session = None
    if owns:
        configure_ray_env(settings)
        ray_metrics_port = ray_metrics_port or _free_port()
        session = start_ray(
            num_cpus=sv.num_cpus or max(4, os.cpu_count() or 1),
            metrics_export_port=ray_metrics_port,
            token_auth=sv.ray_token_auth,
            token_file=sv.ray_auth_token_file,
            grpc_proxy_host=grpc_bind_host(host),
            log_to_driver=settings.runtime.ray_log_to_driver,
        )
    http_url = f"http://{host}:{http_port}"
    try:
        serve.start(
            proxy_location="HeadOnly",  # one HTTP + gRPC proxy (several nodes of one machine would share its ports)
            http_options={"host": host, "port": http_port},
            grpc_options={"port": grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS},
            logging_config={"log_level": "WARNING"},
        )
        app = build_app(settings, models=models, backend=backend, device=device, with_metrics=with_metrics,
                        generator_factory=generator_factory, jobs_dir=jobs_dir)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        _wait_ready(http_url, wait_ready_s)
    except BaseException:
        if owns:  # leave nothing running behind a failed start
            try:
                if ray.is_initialized():
                    serve.shutdown()
            finally:
                stop_ray(session)
        raise
    return LocalPlatform(
        http_url=http_url, grpc_target=f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{grpc_port}",
        metrics_url=f"{http_url}/metrics",
        ray_metrics_url=f"http://127.0.0.1:{ray_metrics_port}/metrics" if owns and ray_metrics_port else None,
        models=models, store_url=settings.resolved_store_url, started_s=time.time() - t0,
        jobs_url=jobs_dir or settings.resolved_jobs_url,
        ray_token_file=str(session.token_file) if session is not None and session.token_file else None,
        _owns_ray=owns, _ray_session=session,
    )


def _check_models(models: list[str], factory) -> None:
    """Fail fast (before any replica starts) on a model that is neither registered nor built by a factory."""
    from services.generator.registry import resolve

    for mid in models:
        if factory is not None and (not isinstance(factory, dict) or mid in factory):
            continue
        resolve(mid)  # UnknownModel names the model and lists the available ones


def _wait_ready(http_url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        try:
            r = httpx.get(f"{http_url}/v1/readyz", timeout=10.0)
            if r.status_code == 200:
                return
            last = r.text[:500]
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"platform not ready after {timeout_s:.0f}s: {last}")
