"""Attacker's view of a local platform: what the private Ray of ``start_local`` listens on, and who may use it.

* every listening socket of the Ray session (driver, gcs_server, raylet, dashboard agent, runtime-env agent,
  Serve controller / proxy / replicas, idle workers) is on loopback — Serve's gRPC proxy included, since the
  platform's ``serve.host`` is 127.0.0.1;
* the dashboard agent's job API (``POST /api/job_agent/jobs/``, which runs a shell command) and a dashboard's
  ``/api/jobs/`` run nothing for a caller without Ray's token, on any port of the session;
* Ray's own gRPC control plane (GCS) refuses calls without the token and accepts them with it;
* a configured token file serves, and Ray with token auth switched off starts on loopback (in a subprocess: Ray's
  auth mode is per process).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"  # serving_fakes, for the child's replicas


def _is_loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.") or ip.startswith("::ffff:127.")


def _session_processes() -> dict[int, str]:
    """pid -> name of this test process and everything it spawned (the Ray session it started)."""
    me = psutil.Process()
    procs = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            procs[p.pid] = p.name()
        except psutil.Error:
            pass
    return procs


def _listeners(pids: dict[int, str]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, ip, port) of every listening TCP socket of these processes."""
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append((pids[c.pid], c.pid, c.laddr.ip, c.laddr.port))
    return out


def _port(url_or_target: str) -> int:
    return int(url_or_target.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def _agent_http_ports(listeners) -> list[int]:
    """The dashboard agent's HTTP port(s): the agent's sockets that answer its health check (its Prometheus port
    answers every path with metrics, so the body must be the health report)."""
    ports = []
    for name, _pid, _ip, port in listeners:
        if "DashboardAgent" not in name:
            continue
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/healthz", timeout=2.0)
        except httpx.HTTPError:
            continue
        if r.status_code == 200 and r.text.startswith("raylet:"):
            ports.append(port)
    return sorted(set(ports))


def _token(lp) -> str:
    assert lp.ray_token_file, "Ray token auth is not on for the local platform"
    return Path(lp.ray_token_file).read_text().strip()


# ---- the shared platform (tests/e2e/conftest.py: start_local with the default settings) -------------------
def test_every_ray_socket_of_the_session_is_loopback(served):
    listeners = _listeners(_session_processes())
    names = " ".join(sorted({name for name, *_ in listeners}))
    # the scan really sees the session (not vacuous): Ray's daemons, agents and Serve's actors are all there
    for expected in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "ServeController",
                     "ProxyActor", "ServeReplica"):
        assert expected in names, f"no listening socket of {expected} found among: {names}"
    ports = {port for *_, port in listeners}
    assert _port(served.http_url) in ports and _port(served.grpc_target) in ports
    assert _port(served.ray_metrics_url) in ports
    exposed = [f"{name} (pid {pid}) on {ip}:{port}" for name, pid, ip, port in listeners if not _is_loopback(ip)]
    # serve.host is 127.0.0.1 here, so not even Serve's gRPC proxy may listen on another interface
    assert not exposed, "Ray/Serve sockets reachable from other hosts:\n" + "\n".join(exposed)


def test_job_apis_run_nothing_without_the_token(served, tmp_path):
    listeners = _listeners(_session_processes())
    agent_ports = _agent_http_ports(listeners)
    assert agent_ports, "the dashboard agent's HTTP server was not found (it should be up, token-protected)"
    marker = tmp_path / f"owned-{uuid.uuid4().hex}.txt"
    job = {"entrypoint": f"id > {marker}", "submission_id": f"attack-{uuid.uuid4().hex[:8]}"}
    statuses = {}
    for port in sorted({port for *_, port in listeners}):  # every port of the session, like an attacker would
        for path in ("/api/job_agent/jobs/", "/api/jobs/"):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}{path}", json=job, timeout=3.0)
                statuses[(port, path)] = r.status_code
            except httpx.HTTPError:
                statuses[(port, path)] = None  # not an HTTP server (gRPC) or closed
    for port in agent_ports:  # the job API is there and refuses for want of a token ...
        assert statuses[(port, "/api/job_agent/jobs/")] == 401, statuses[(port, "/api/job_agent/jobs/")]
        wrong = httpx.post(f"http://127.0.0.1:{port}/api/job_agent/jobs/", json=job, timeout=3.0,
                           headers={"Authorization": "Bearer " + "0" * 64})
        assert wrong.status_code == 403, wrong.text
        # ... and only for that: the real token gets through the middleware (a read of an unknown job's logs)
        ok = httpx.get(f"http://127.0.0.1:{port}/api/job_agent/jobs/nonexistent-job/logs", timeout=5.0,
                       headers={"Authorization": f"Bearer {_token(served)}"})
        assert ok.status_code not in (401, 403), ok.text
    accepted = {k: v for k, v in statuses.items() if v is not None and 200 <= v < 300}
    assert not accepted, f"a job endpoint accepted an unauthenticated submission: {accepted}"
    time.sleep(3.0)  # an accepted job would have run by now
    assert not marker.exists(), "an unauthenticated job ran a shell command"


def test_ray_gcs_grpc_needs_the_token(served):
    grpc = pytest.importorskip("grpc")
    import ray
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    gcs_address = ray.get_runtime_context().gcs_address
    assert _is_loopback(gcs_address.rsplit(":", 1)[0].strip("[]"))
    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer " + "0" * 64),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10,
                                    metadata=(("authorization", f"Bearer {_token(served)}"),))
        assert len(reply.node_info_list) == 1


def test_the_token_file_is_private(served):
    path = Path(served.ray_token_file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(_token(served)) >= 32
    assert not (Path.home() / ".ray" / "auth_token").exists() or \
        (Path.home() / ".ray" / "auth_token").read_text().strip() != _token(served)


def test_a_generated_token_is_removed_with_its_session():
    from services.gateway.ray_local import RaySession, _token_file

    path, tmpdir = _token_file(None)
    assert tmpdir is not None and path.parent == tmpdir and len(path.read_text()) == 64
    other, other_dir = _token_file(None)
    assert other.read_text() != path.read_text()  # per start
    for p, d in ((path, tmpdir), (other, other_dir)):
        RaySession(token_auth=True, token_file=p, _tmpdir=d).close()
        assert not d.exists()


def test_grpc_proxy_binds_like_http():
    from services.gateway.ray_local import grpc_bind_host

    assert grpc_bind_host("127.0.0.1") == "127.0.0.1"
    assert grpc_bind_host("localhost") == "127.0.0.1"
    assert grpc_bind_host("::1") == "::1"
    assert grpc_bind_host("0.0.0.0") is None and grpc_bind_host("::") is None
    assert grpc_bind_host("192.0.2.7") == "192.0.2.7"


# ---- other Ray auth configurations: a separate process (Ray's auth mode and token are per process) ---------
_CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import httpx, psutil
    import ray
    from services.common.config import Settings
    from services.gateway import ray_local
    from services.gateway.app import start_local

    AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def listening(extra=()):
        me = psutil.Process()
        pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
        return sorted(pids - {me.pid}), [c.laddr.ip for c in psutil.net_connections(kind="inet")
                                         if c.status == psutil.CONN_LISTEN and c.pid in pids]

    out = {}
    # 1. the whole platform with an operator-provided token file
    settings = Settings()
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(
        update={"ray_auth_token_file": sys.argv[1]})})
    lp = start_local(settings, models=["tiny"], http_port=0, grpc_port=0, with_metrics=False,
                     generator_factory={"tiny": "serving_fakes:make_tiny"}, wait_ready_s=300)
    pids, listen = listening()
    r = httpx.post(lp.http_url + "/v1/generate", json={"model": "tiny", "count": 1, "seed": 3}, timeout=120)
    out["configured"] = {"generate": r.status_code, "token_file": lp.ray_token_file, "pids": pids,
                         "auth_mode": os.environ.get("RAY_AUTH_MODE"), "listen": listen}
    lp.shutdown()
    out["configured"]["env_after"] = [os.environ.get(k) for k in AUTH_ENV]
    # 2. Ray with token auth off (SYNTHRAD_SERVE__RAY_TOKEN_AUTH=false), in the same process
    session = ray_local.start_ray(num_cpus=1, metrics_export_port=ray_local.free_port(), token_auth=False)
    pids, listen = listening()
    out["off"] = {"task": ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=120), "pids": pids,
                  "auth_mode": os.environ.get("RAY_AUTH_MODE"), "token_file": session.token_file,
                  "listen": listen}
    ray_local.stop_ray(session)
    out["off"]["env_after"] = [os.environ.get(k) for k in AUTH_ENV]
    print("RESULT " + json.dumps(out), flush=True)
""")


def test_configured_token_file_and_token_auth_off(tmp_path):
    token_file = tmp_path / "ray_token"
    token_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token_file.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(ROOT)]),
           "SYNTHRAD_HOME": str(tmp_path / "home"), "SYNTHRAD_DEVICE": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(token_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    configured, off = res["configured"], res["off"]
    assert configured["auth_mode"] == "token" and configured["token_file"] == str(token_file)
    assert configured["generate"] == 200, configured
    assert off["auth_mode"] == "disabled" and off["token_file"] is None and off["task"] == 42
    for run in (configured, off):
        assert run["listen"] and all(_is_loopback(ip) for ip in run["listen"]), run["listen"]
        assert run["env_after"] == [None, None, None]  # the process gets its own Ray auth environment back
    assert token_file.exists()  # the operator's file is theirs to keep
    deadline = time.time() + 30  # nothing of either Ray session outlives its shutdown / the process
    left = []
    while time.time() < deadline:
        left = []
        for pid in configured["pids"] + off["pids"]:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                pass
        if not left:
            break
        time.sleep(1.0)
    assert not left, f"Ray processes left running: {left}"
