"""A bounded step ramp for the autoscaling benchmark (benchmarks/bench_autoscaling.py runs it; loopback only).

    SYNTHRAD_LOADTEST_STEPS="1:40,4:40,8:40,16:40,32:40,0:60" SYNTHRAD_LOADTEST_LOG=requests.jsonl \\
        locust -f loadtests/autoscale.py --headless --host http://127.0.0.1:8000

Each step is ``users:seconds``; the last ``0`` step leaves the platform idle to watch it scale back down. Every
user posts one-image inline generations back to back; every request's time, status and latency go to
``SYNTHRAD_LOADTEST_LOG`` (JSON lines), so the benchmark computes each step's percentiles and error rate from
the raw requests, not from locust's rolling windows.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

from locust import HttpUser, LoadTestShape, constant, events, task

STEPS = [(int(u), float(s)) for u, s in (x.split(":") for x in
                                         os.environ.get("SYNTHRAD_LOADTEST_STEPS", "1:30,4:30,0:30").split(","))]
MODEL = os.environ.get("SYNTHRAD_LOADTEST_MODEL") or None
HOST_GUARD = ("http://127.0.0.1", "http://localhost")
_log_lock = threading.Lock()
_log = open(os.environ.get("SYNTHRAD_LOADTEST_LOG", os.devnull), "a", buffering=1)


@events.test_start.add_listener
def _loopback_only(environment, **_):
    if not str(environment.host or "").startswith(HOST_GUARD):
        raise SystemExit("the autoscaling ramp runs against a loopback host only")


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **_):
    status = getattr(response, "status_code", None) if response is not None else None
    with _log_lock:
        _log.write(json.dumps({"t": time.time(), "status": status or 0, "ms": response_time,
                               "error": type(exception).__name__ if exception and not status else None}) + "\n")


class GenerateUser(HttpUser):
    wait_time = constant(0)

    @task
    def generate(self) -> None:
        body = {"count": 1, "seed": random.randrange(2**31), "format": "png",
                "condition": {"pleural_effusion": random.choice(["present", "absent"])}}
        if MODEL:
            body["model"] = MODEL
        with self.client.post("/v1/generate", json=body, name="POST /v1/generate", catch_response=True,
                              timeout=60) as r:
            if r.status_code in (429, 503):
                r.failure(f"shed {r.status_code}")


class Steps(LoadTestShape):
    def tick(self):
        t = self.get_run_time()
        for users, seconds in STEPS:
            if t < seconds:
                return users, max(1, users)
            t -= seconds
        return None
