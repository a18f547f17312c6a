"""The private, single-node Ray that a local synthrad platform runs on, locked down.

What Ray 2.60 (+ Serve) opens for a local platform on a Linux host — measured with ``psutil.net_connections``
on the processes of one session; "before" is the old ``ray.init(_node_ip_address="127.0.0.1")`` start, the
host's address was 192.0.2.2 — and how :func:`start_ray` binds it now:

=====================================  ==============================  =========================================
socket (process)                       before                          now
=====================================  ==============================  =========================================
GCS gRPC (gcs_server)                  [::]:random                     127.0.0.1, token required
node manager + object manager gRPC     [::]:random (2 ports)           127.0.0.1, token required
(raylet)
core-worker gRPC (driver, idle         [::]:random                     127.0.0.1, token required
workers, Serve controller/proxy/
replicas)
dashboard agent HTTP (job API:         192.0.2.2:52365 and             127.0.0.1:free port, token required
``POST /api/job_agent/jobs/`` runs     127.0.0.1:52365, no auth
shell commands)
dashboard agent gRPC                   [::]:random                     127.0.0.1, token required
metrics export (dashboard agent,       0.0.0.0:``ray_metrics_port``    127.0.0.1:``ray_metrics_port``
``LocalPlatform.ray_metrics_url``)
runtime-env agent HTTP                 192.0.2.2:random                127.0.0.1, token required
dashboard head metrics                 0.0.0.0:44227 (fixed)           127.0.0.1:free port
autoscaler monitor metrics             0.0.0.0:44217 (fixed)           127.0.0.1:free port
dashboard head HTTP :8265 (/api/jobs)  not started (``include_dashboard=False``) — unchanged
Serve replica inter-deployment gRPC    [::]:random (Serve hard-codes)  127.0.0.1 (:func:`worker_setup`)
Serve HTTP proxy                       ``serve.host``                  ``serve.host`` (127.0.0.1 by default)
Serve gRPC proxy                       [::]:grpc_port (hard-coded)     ``serve.host`` when it is a loopback or
                                                                       IP address (:func:`grpc_bind_host`),
                                                                       [::] for 0.0.0.0 / ::
=====================================  ==============================  =========================================

(``::ffff:127.0.0.1`` in a listing is 127.0.0.1 on a dual-stack socket.) Ray's fixed ports (agent 52365,
metrics 44227 / 44217) are replaced by free ones so that two local Rays on one machine do not collide: before,
the second one's agent ran without its HTTP server and a request to 52365 reached the *other* Ray.

How:

* **Node IP = 127.0.0.1.** ``ray.init(_node_ip_address="127.0.0.1")`` alone does *not* do it on Linux: Ray
  resolves a loopback address to the host's routable IP (``services.resolve_ip_for_localhost``) unless
  ``ray_constants.ENABLE_RAY_CLUSTER`` is false (the env var ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when
  Ray is imported; the default on macOS/Windows). With the node IP on loopback, Ray's C++ gRPC servers and
  its Python agents bind 127.0.0.1 instead of every interface. :func:`start_ray` flips the constant for the
  duration of ``ray.init`` and passes the env var to the Ray processes it spawns.
* **Serve's two hard-coded ``[::]`` servers** (replica inter-deployment gRPC, the gRPC proxy) are re-bound by
  :func:`worker_setup`, a ``worker_process_setup_hook`` (Ray runs it in every worker process of the job
  before any task or actor code), which wraps the two helper functions Serve binds with.
* **Token authentication** (``RAY_AUTH_MODE=token``; default on, ``SYNTHRAD_SERVE__RAY_TOKEN_AUTH=false``
  turns it off): every Ray gRPC server and the agents' HTTP servers then require
  ``Authorization: Bearer <token>``. Loopback alone does not stop other users of the same machine, and the
  dashboard agent's job API runs any shell command it is sent. The token is a fresh random one per start,
  written to a 0600 file in a 0700 temporary folder (or ``serve.ray_auth_token_file`` when configured) and
  handed to every Ray process with ``RAY_AUTH_TOKEN_PATH`` (Ray's other sources, ``RAY_AUTH_TOKEN`` and
  ``~/.ray/auth_token``, are bypassed so nothing global is written). Ray's C++ config caches the auth mode
  when Ray is imported, so it is re-read (``Config.initialize``) after the environment is set — without
  that, the driver believed auth was off (no token created) while GCS read ``RAY_AUTH_MODE=token`` from its
  environment and died with ``Check failed: has_token``. After ``ray.shutdown()`` the process gets its own
  auth environment back and a generated token is deleted. Cost: none measurable — ``ray.init`` took 8.6 s
  with and without token auth (mean of 4 alternating starts each on the 2-core dev box), a whole
  ``start_local`` 31-50 s either way under the same load.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .net import is_loopback

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: env var telling :func:`worker_setup` where Serve's gRPC proxy may bind ("" = Serve's default, every interface)
GRPC_PROXY_HOST_ENV = "SYNTHRAD_SERVE_GRPC_PROXY_HOST"
#: env var telling :func:`worker_setup` to bind Serve replicas' inter-deployment gRPC servers to loopback
REPLICA_LOOPBACK_ENV = "SYNTHRAD_SERVE_REPLICA_LOOPBACK"
WORKER_SETUP_HOOK = "services.gateway.ray_local.worker_setup"
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def grpc_bind_host(http_host: str) -> str | None:
    """Where Serve's gRPC proxy should bind, given the HTTP bind address: the same loopback or IP address,
    None (Serve's default, every interface) for a wildcard or a host name."""
    if is_loopback(http_host):
        return "::1" if http_host == "::1" else LOOPBACK
    try:
        ip = ipaddress.ip_address(http_host)
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


@dataclass
class RaySession:
    """What :func:`start_ray` set up; :meth:`close` undoes it after ``ray.shutdown()``."""

    token_auth: bool
    token_file: Path | None = None
    agent_http_port: int | None = None
    _tmpdir: Path | None = field(default=None, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    def close(self) -> None:
        """Give the process back its own Ray auth environment, then delete a generated token. In this order:
        a Ray thread that still runs must not see token mode without its token file (Ray aborts then)."""
        if self._saved_env:
            _set_env(self._saved_env)
            self._saved_env = {}
            _reload_ray_auth()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _reload_ray_auth() -> None:
    """Ray caches RAY_AUTH_MODE (C++ RayConfig, read when Ray is imported) and the token: re-read both."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except ImportError:  # pragma: no cover - Ray without its compiled core
        pass


def _token_file(configured: Path | None) -> tuple[Path, Path | None]:
    """(token file, temporary folder to remove at shutdown or None)."""
    if configured is not None:
        path = Path(configured).expanduser()
        try:
            ok = path.is_file() and path.read_text().strip() != ""
        except OSError:
            ok = False
        if not ok:
            raise RuntimeError("serve.ray_auth_token_file does not name a readable, non-empty file")
        if path.stat().st_mode & 0o077:
            log.warning("the Ray auth token file is readable by other users; chmod 600 it")
        return path, None
    tmp = Path(tempfile.mkdtemp(prefix="synthrad-ray-"))  # 0700
    path = tmp / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path, tmp


def configure_ray_env(token_auth: bool, token_file: Path | None = None) -> dict[str, str | None]:
    """Process environment (inherited by every Ray process) + Ray's cached config for the auth mode.
    Returns the previous values of Ray's auth variables."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Serve's gRPC proxy accepts (and sends) messages up to 2 GiB by default: cap what a caller can make it
    # buffer. 64 MiB fits the largest inline response (16 images of 1024 px as 16-bit PNG or float32); the
    # gateway then holds every request to limits.max_request_bytes, like REST bodies.
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(GRPC_MAX_MESSAGE_BYTES))
    if token_auth and token_file is None:
        raise ValueError("token auth needs a token file")
    saved = {k: os.environ.get(k) for k in _AUTH_ENV}
    _set_env({"RAY_AUTH_MODE": "token" if token_auth else "disabled", "RAY_AUTH_TOKEN": None,
              "RAY_AUTH_TOKEN_PATH": str(token_file) if token_auth else None})
    _reload_ray_auth()
    return saved


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_ray(*, num_cpus: int, metrics_export_port: int, token_auth: bool, token_file: Path | None = None,
              grpc_proxy_host: str | None = LOOPBACK, log_to_driver: bool = False) -> RaySession:
    """``ray.init`` a private head node with every Ray socket on 127.0.0.1 and (by default) token auth.

    ``grpc_proxy_host``: where Serve's gRPC proxy binds (None: Serve's own default, every interface).
    """
    import ray
    import ray._private.parameter as ray_parameter
    import ray._private.ray_constants as ray_constants

    path, tmp = _token_file(token_file) if token_auth else (None, None)
    session = RaySession(token_auth=token_auth, token_file=path, _tmpdir=tmp, agent_http_port=free_port())
    if tmp is not None:  # a process that exits without shutdown() still removes its token
        atexit.register(shutil.rmtree, tmp, True)
    session._saved_env = configure_ray_env(token_auth, path)
    env_vars = {REPLICA_LOOPBACK_ENV: "1", GRPC_PROXY_HOST_ENV: grpc_proxy_host or ""}
    # Ray's fixed default ports (agent HTTP 52365, dashboard / autoscaler metrics 44227 / 44217) collide when two
    # local Rays run on one machine (the second one's agent then runs without HTTP): take free ones.
    spawn_env = {_RAY_CLUSTER_ENV: "0", "DASHBOARD_METRIC_PORT": str(free_port()),
                 "AUTOSCALER_METRIC_PORT": str(free_port()), **env_vars}
    saved_flag, saved_params = ray_constants.ENABLE_RAY_CLUSTER, ray_parameter.RayParams
    saved_env = {k: os.environ.get(k) for k in spawn_env}
    agent_port = session.agent_http_port

    class _RayParams(saved_params):  # ray.init has no argument for the agent's HTTP port
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", agent_port)
            super().__init__(*args, **kwargs)

    try:
        ray_constants.ENABLE_RAY_CLUSTER = False  # keep _node_ip_address=127.0.0.1 (see the module docstring)
        ray_parameter.RayParams = _RayParams
        os.environ.update(spawn_env)  # read by the processes ray.init spawns; raylet -> every worker
        ray.init(
            address="local",  # always a new private Ray, even when a `ray start` cluster left its address file
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            _metrics_export_port=metrics_export_port,
            runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": env_vars},
            logging_level="WARNING",
            log_to_driver=log_to_driver,
            namespace="synthrad",
        )
    except BaseException:
        try:
            ray.shutdown()  # whatever ray.init started before it failed
        finally:
            session.close()
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER, ray_parameter.RayParams = saved_flag, saved_params
        _set_env(saved_env)
    return session


def stop_ray(session: RaySession | None) -> None:
    import ray

    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        if session is not None:
            session.close()


# ---- runs inside every Ray worker process of the local platform -----------------------------------------
def _rebind(address: str, host: str) -> str:
    """"[::]:PORT" / "0.0.0.0:PORT" -> "HOST:PORT"; anything else unchanged."""
    for wildcard in ("[::]:", "0.0.0.0:"):
        if address.startswith(wildcard):
            return f"{host}:{address[len(wildcard):]}"
    return address


def worker_setup() -> None:
    """``worker_process_setup_hook``: bind Serve's hard-coded every-interface gRPC servers to loopback.

    Serve 2.60 binds the replicas' inter-deployment gRPC server (``replica.add_port_to_grpc_server(server,
    "[::]:0")``) and the gRPC proxy (``default_impl.add_grpc_address(server, "[::]:PORT")``) on every
    interface. Both helpers are wrapped here; nothing else changes. If a Ray upgrade renames them, the hook
    logs and does nothing (``tests/e2e/test_ray_surface.py`` then fails on the every-interface socket).
    """
    if os.environ.get(REPLICA_LOOPBACK_ENV) == "1":
        try:
            from ray.serve._private import replica

            inner = replica.add_port_to_grpc_server
            if not getattr(inner, "_synthrad_rebound", False):
                def add_port_loopback(server, address, _inner=inner):
                    return _inner(server, _rebind(address, LOOPBACK))

                add_port_loopback._synthrad_rebound = True  # type: ignore[attr-defined]
                replica.add_port_to_grpc_server = add_port_loopback
        except Exception as e:  # noqa: BLE001 - never break a worker over this
            log.warning("could not bind Serve replica gRPC to loopback: %s", e)
    host = os.environ.get(GRPC_PROXY_HOST_ENV, "")
    if host:
        try:
            from ray.serve._private import default_impl

            inner = default_impl.add_grpc_address
            if not getattr(inner, "_synthrad_rebound", False):
                def add_grpc_address_host(server, address, _inner=inner):
                    return _inner(server, _rebind(address, f"[{host}]" if ":" in host else host))

                add_grpc_address_host._synthrad_rebound = True  # type: ignore[attr-defined]
                default_impl.add_grpc_address = add_grpc_address_host
        except Exception as e:  # noqa: BLE001
            log.warning("could not bind Serve's gRPC proxy to %s: %s", host, e)
