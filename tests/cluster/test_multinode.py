"""A Ray cluster of two nodes on this machine — a head and a generator node, separate ``ray start`` processes
with their own resources — runs the platform with the generator replicas on the generator node and the gateway
(two replicas), the jobs deployment and metrics on the head (``SYNTHRAD_SERVE__*_RESOURCES``), over S3 (moto's
server): a batch job and its score end to end, with the batch, the job records and the metrics feature cache all
in the bucket.

The driver (``start_local`` on the running cluster) runs in a subprocess of its own: a test process may hold
another Ray connection (the e2e platform).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from repo_paths import ROOT, SUPPORT
from s3_server import s3_bucket

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, GEN = "synthrad-head", "synthrad-generators"


def _port() -> int:
    from services.gateway.ray_local import free_port

    return free_port()


def _ray_start(args: list[str], env: dict) -> subprocess.Popen:
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block",
              f"--dashboard-agent-listen-port={_port()}", f"--metrics-export-port={_port()}",
              f"--dashboard-agent-grpc-port={_port()}", f"--runtime-env-agent-port={_port()}"]
    return subprocess.Popen([RAY, "start", *args, *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_generators_on_their_own_node_and_the_flow_over_s3(tmp_path):
    import fsspec

    from services.common.store import BatchStore

    with s3_bucket() as bucket:
        endpoint = fsspec.config.conf["s3"]["endpoint_url"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
               "SYNTHRAD_HOME": str(tmp_path / "home"), "SYNTHRAD_STORE_URL": f"{bucket}/batches",
               "SYNTHRAD_CACHE_URL": f"{bucket}/cache", "SYNTHRAD_SERVE__GATEWAY_REPLICAS": "2",
               "SYNTHRAD_DEVICE": "cpu",
               "SYNTHRAD_SERVE__GENERATOR_RESOURCES": json.dumps({GEN: 0.01}),
               "SYNTHRAD_SERVE__GATEWAY_RESOURCES": json.dumps({HEAD: 0.01}),
               "SYNTHRAD_SERVE__METRICS_RESOURCES": json.dumps({HEAD: 0.01})}
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(k, None)
        # Ray's CLI cannot keep a multi-node cluster on loopback (a worker node refuses to start with the node IP
        # pinned there), so the test cluster is guarded by Ray's token authentication instead
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        gcs = _port()
        head = _ray_start(["--head", f"--port={gcs}", "--num-cpus=3", f"--resources={json.dumps({HEAD: 1})}",
                           "--include-dashboard=false", f"--ray-client-server-port={_port()}"], env)
        worker = None
        try:
            time.sleep(5)
            worker = _ray_start([f"--address=127.0.0.1:{gcs}", "--num-cpus=2",
                                 f"--resources={json.dumps({GEN: 1})}"], env)
            out = tmp_path / "result.json"
            r = subprocess.run([sys.executable, __file__, f"127.0.0.1:{gcs}", str(out)], env=env, timeout=900,
                               capture_output=True, text=True)
            assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
            res = json.loads(out.read_text())
        finally:
            for proc in (worker, head):
                if proc is not None:
                    proc.terminate()
            for proc in (worker, head):
                if proc is not None:
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # `ray start` leaves it behind
            if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
                current.unlink()
        assert res["job"]["state"] == "succeeded", res
        assert res["score"]["state"] == "succeeded", res
        assert res["score"]["result"]["scores"], res
        nodes = res["placement"]
        assert nodes["generator"] and set(nodes["generator"]) == {res["nodes"][GEN]}  # generators: their node
        assert set(nodes["gateway"]) == {res["nodes"][HEAD]} and len(nodes["gateway"]) == 2
        assert set(nodes["jobs"]) == {res["nodes"][HEAD]} and set(nodes["metrics"]) == {res["nodes"][HEAD]}
        man = BatchStore(f"{bucket}/batches").verify(res["job"]["batch_id"])  # in the bucket, every hash checked
        assert man.count == 8 and man.model_id == res["model"]
        fs = fsspec.filesystem("s3")
        records = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/batches/_jobs", refresh=True)}
        assert {f"{res['job']['job_id']}.json", f"{res['score_job']}.json"} <= records  # job records: S3
        assert fs.find(f"{bucket}/cache/features"), "the scoring job's features are cached in the bucket"


def _driver(address: str, out: str) -> None:
    """Run the platform on the cluster at ``address``, a batch job and its score; write what happened."""
    import httpx
    import ray
    from ray._private import state

    from serving_fakes import wait_job
    from services.common.config import get_settings
    from services.gateway.app import start_local
    from services.generator.registry import list_models

    ray.init(address=address, logging_level="WARNING")
    deadline = time.time() + 120
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:  # the generator node joins
        time.sleep(0.5)
    nodes = {}
    for n in ray.nodes():
        for res_name in (HEAD, GEN):
            if n["Alive"] and res_name in n["Resources"]:
                nodes[res_name] = n["NodeID"]
    settings = get_settings()
    real = [m.model_id for m in list_models() if m.model_id == settings.default_model]
    model = real[0] if real else "tiny"
    lp = start_local(settings, models=[model], http_port=_port(), grpc_port=_port(), wait_ready_s=600,
                     generator_factory=None if real else {"tiny": "serving_fakes:make_tiny"})
    try:
        client = httpx.Client(base_url=lp.http_url, timeout=60)
        r = client.post("/v1/batches", json={"model": model, "count": 8, "seed": 5,
                                             "condition": {"pleural_effusion": "present"}})
        job = wait_job(client, r.json()["job_id"], timeout=600)
        refs = client.get("/v1/references").json()
        ref = "nih-cxr64" if "nih-cxr64" in refs else refs[0]
        s = client.post("/v1/scores", json={"batch_id": job["batch_id"], "reference": ref, "metrics": ["fid"]})
        score = wait_job(client, s.json()["job_id"], timeout=600)
        score = client.get(f"/v1/scores/{score['job_id']}").json()
        placement: dict[str, list[str]] = {"generator": [], "gateway": [], "metrics": [], "jobs": []}
        for a in state.actors().values():
            name = a.get("Name") or ""
            if a.get("State") != "ALIVE" or not name.startswith("SERVE_REPLICA"):
                continue
            node = a["Address"]["NodeID"]
            kind = "generator" if "#generator-" in name else "gateway" if "#gateway#" in name else \
                "metrics" if "#metrics#" in name else "jobs" if "#jobs#" in name else None
            if kind:
                placement[kind].append(node)
        Path(out).write_text(json.dumps({"job": job, "score": score, "placement": placement, "nodes": nodes,
                                         "score_job": s.json()["job_id"],
                                         "model": model}))
    finally:
        lp.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    _driver(sys.argv[1], sys.argv[2])
