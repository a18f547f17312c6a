"""``synthrad serve``: run the platform locally (Ray Serve: REST + gRPC + /metrics) until Ctrl-C."""

from __future__ import annotations

import click


def print_urls(lp, echo=click.echo) -> None:
    echo(f"  REST      {lp.http_url}/v1   (OpenAPI docs: {lp.http_url}/docs)")
    echo(f"  gRPC      {lp.grpc_target}   (services synthrad.v1.GeneratorService, BatchService, MetricsService)")
    echo(f"  metrics   {lp.metrics_url}   (Prometheus; Ray's own: {lp.ray_metrics_url or 'on the Ray cluster'})")
    echo(f"  models    {', '.join(lp.models)}")
    echo(f"  batches   {lp.store_url}")
    if getattr(lp, "jobs_url", None):
        echo(f"  jobs      {lp.jobs_url}   (job records; run by the jobs deployment, any gateway answers)")
    echo(f"  studies   {lp.http_url}/study/   (reader studies: `synthrad study list`; owner page {lp.http_url}/study/owner)")
    token_file = getattr(lp, "ray_token_file", None)
    if token_file:
        echo(f"  ray       127.0.0.1 only, token auth on (RAY_AUTH_TOKEN_PATH={token_file} ray status)")


@click.command(name="serve")
@click.option("--host", default=None, help="REST/gRPC bind address (default SYNTHRAD_SERVE__HOST = 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="REST port (default 8000; 0 = any free port).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 9000; 0 = any free port).")
@click.option("--models", default=None, help="Comma-separated model ids to serve (default: every registered model).")
@click.option("--backend", default=None, help="auto | eager | compile | onnx (default SYNTHRAD_BACKEND).")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when Ray sees a GPU).")
@click.option("--no-metrics-service", is_flag=True, help="Do not deploy the scoring (metrics) deployment.")
@click.option("--ray-metrics-port", type=int, default=None, help="Port of Ray's own Prometheus metrics (default: free).")
def command(host, http_port, grpc_port, models, backend, device, no_metrics_service, ray_metrics_port) -> None:
    """Start a private Ray and the synthrad Serve application on this machine.

    \b
    Local mode: every Ray socket (GCS, raylet, workers, dashboard agent, ...) listens on 127.0.0.1 only, the
    dashboard is off, and Ray's token auth is on with a fresh random token per start, so other users of this
    machine cannot submit Ray jobs or drive Ray (SYNTHRAD_SERVE__RAY_TOKEN_AUTH=false turns the token off;
    SYNTHRAD_SERVE__RAY_AUTH_TOKEN_FILE pins one). REST and gRPC bind --host (127.0.0.1 by default; gRPC binds
    every interface only for 0.0.0.0 / ::). Set SYNTHRAD_API_KEYS='["..."]' to require API keys (then gRPC is
    accepted from other hosts too). Ctrl-C stops everything cleanly.
    """
    import signal
    import threading

    from services.common.config import get_settings

    settings = get_settings()
    if host:
        settings = settings.model_copy(update={"serve": settings.serve.model_copy(update={"host": host})})
    from services.gateway.app import start_local

    if settings.serve.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        click.echo(f"warning: REST binds {settings.serve.host} with no API key configured: anyone who can reach "
                   "this port can use the API (set SYNTHRAD_API_KEYS='[\"...\"]')", err=True)
    if not settings.serve.ray_token_auth:
        click.echo("warning: Ray token auth is off (SYNTHRAD_SERVE__RAY_TOKEN_AUTH=false): any user of this machine "
                   "can run commands through Ray's job API on 127.0.0.1", err=True)

    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    click.echo("starting Ray + Serve (first start takes ~10 s) ...", err=True)
    try:
        lp = start_local(settings, models=model_list, backend=backend, device=device,
                         with_metrics=not no_metrics_service, http_port=http_port, grpc_port=grpc_port,
                         ray_metrics_port=ray_metrics_port)
    except KeyboardInterrupt:
        click.echo("interrupted while starting; stopping ...", err=True)
        _shutdown_quietly()
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - show the reason, not a Ray traceback
        _shutdown_quietly()
        raise click.ClickException(f"could not start the platform: {e}") from e
    click.echo(f"synthrad is serving (ready in {lp.started_s:.1f} s):")
    print_urls(lp)
    click.echo("Press Ctrl-C to stop.", nl=True)
    import sys

    sys.stdout.flush()
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        click.echo("stopping ...", err=True)
        lp.shutdown()
        click.echo("stopped.", err=True)


def _shutdown_quietly() -> None:
    try:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
