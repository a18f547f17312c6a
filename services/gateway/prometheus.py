"""Prometheus metrics of the platform, exposed on the gateway's ``GET /metrics`` (see docs/metrics.md).

Names follow the Prometheus conventions Ray Serve and Triton users know (``_total`` counters, ``_seconds``
histograms, base units, a ``model`` label like Triton's): they are recorded in the gateway process from
what each generator replica measures and returns with its results (typed ``ChunkStats``: queue wait,
forward-pass time, formed batch size, GPU memory; the replica flags one chunk per forward pass so a pass is
counted once), so one scrape of the gateway shows the whole pipeline, exactly and at once. (A pass whose
flagged chunk was cancelled by its caller before the result came back — a client that dropped a stream — is
not counted in the compute and batch-size histograms.)

Why not ``ray.serve.metrics`` in the replicas: Ray exports those through each node's metrics agent, renamed
``ray_<name>``, some seconds later (the agent's report interval); the documented ``synthrad_*`` names on the
gateway's ``/metrics`` would then need a relay that scrapes and renames Ray's exposition — the hand-made relay
this module no longer has. The measurements still come from the replicas; only their transport is the
result they already return. Ray Serve's own metrics
(``ray_serve_*``: replica queue lengths, request latencies, ``@serve.batch`` batch sizes) stay on Ray's
metrics port (``synthrad serve`` prints it) and are appended to ``/metrics?ray=1`` when reachable.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.common.findings import Condition
from services.generator.chunks import ChunkStats

disable_created_metrics()  # no *_created series: Ray's and Triton's exporters don't emit them either
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _metric(kind, name: str, labels: list[str], documentation: str, **kw):
    """One metric of this module's registry (every series the gateway's ``/metrics`` shows is defined below);
    histograms default to the latency buckets."""
    if kind is Histogram:
        kw.setdefault("buckets", _LATENCY_BUCKETS)
    return kind(name, documentation, labels, registry=REGISTRY, **kw)


IMAGES_GENERATED = _metric(Counter, "synthrad_images_generated_total", ["model", "backend", "finding"], documentation=(
    "Synthetic images generated, by model, backend and finding label (present findings joined by '+', "
    "'no_finding' when all are absent, 'unspecified' when none is constrained)."))
GENERATION_LATENCY = _metric(Histogram, "synthrad_generation_latency_seconds", ["model", "backend"], documentation=(
    "Time from the gateway sending a generation request (a chunk of at most max_batch_size images) to a "
    "generator deployment until its images are back (queueing + batching wait + forward pass + transfer)."))
GENERATION_QUEUE = _metric(Histogram, "synthrad_generation_queue_seconds", ["model", "backend"], documentation=(
    "Time a generation request waited in the replica's @serve.batch queue before its forward pass "
    "(Triton: queue duration)."))
GENERATION_COMPUTE = _metric(Histogram, "synthrad_generation_compute_seconds", ["model", "backend"], documentation=(
    "Duration of one batched forward pass on a generator replica (Triton: compute infer duration)."))
BATCH_SIZE = _metric(Histogram, "synthrad_generation_batch_size", ["model", "backend"], documentation=(
    "Images per forward pass formed by dynamic batching (observed once per forward pass)."), buckets=_BATCH_BUCKETS)
QUEUE_DEPTH = _metric(Gauge, "synthrad_generation_queue_depth", ["model"], documentation=(
    "Images requested from a model's deployment and not yet returned (Triton: pending request count)."))
REQUESTS = _metric(Counter, "synthrad_requests_total", ["protocol", "operation", "code"], documentation=(
    "API requests handled by the gateway, by protocol, operation and outcome code."))
CHUNK_RETRIES = _metric(Counter, "synthrad_generation_chunk_retries_total", ["model"], documentation=(
    "Generation chunks sent again because the generator replica died or was unavailable (Serve restarts it)."))
JOBS = _metric(Gauge, "synthrad_jobs", ["kind", "state"], documentation=(
    "Jobs in the job store, by kind (batch, score, evaluation) and state (queued, running, succeeded, failed); "
    "every gateway replica reports the shared store's numbers (aggregate with max, not sum)."))
JOBS_FINISHED = _metric(Counter, "synthrad_jobs_finished_total", ["kind", "state"], documentation=(
    "Jobs that finished, by kind and final state."))
SCORING_LATENCY = _metric(Histogram, "synthrad_scoring_latency_seconds", ["reference", "extractor"], documentation=(
    "Duration of one scoring job (feature extraction of the batch + measures), by reference and extractor."))
GPU_MEMORY = _metric(Gauge, "synthrad_gpu_memory_used_bytes", ["model", "replica", "gpu"], documentation=(
    "GPU memory in use on a generator replica's device (last report; only when the replica has a GPU)."))
GPU_MEMORY_TOTAL = _metric(Gauge, "synthrad_gpu_memory_total_bytes", ["model", "replica", "gpu"], documentation=(
    "GPU memory of a generator replica's device."))
GPU_UTIL = _metric(Gauge, "synthrad_gpu_utilization_ratio", ["model", "replica", "gpu"], documentation=(
    "GPU utilisation (0-1) of a generator replica's device over the driver's last sample period (needs pynvml)."))

JOB_KINDS = ("batch", "score", "evaluation")

#: In a Serve replica (gateway, jobs) a :class:`~services.gateway.telemetry.RelayTelemetry`: what would be recorded
#: here goes to the telemetry deployment, which holds the application's one set of series (see telemetry_hub.py).
_SINK = None


def relay_to(sink) -> None:
    """Send this process's request counts to ``sink`` (None: record them here)."""
    global _SINK
    _SINK = sink


def count_request(protocol: str, operation: str, code: str) -> None:
    """One API request handled (``synthrad_requests_total``)."""
    if _SINK is not None:
        _SINK.request(protocol, operation, code)
    else:
        REQUESTS.labels(protocol, operation, code).inc()
JOB_STATES = ("queued", "running", "succeeded", "failed")


def finding_label(condition: Condition) -> str:
    present = condition.present()
    if present:
        return "+".join(present)
    if condition.is_no_finding:
        return "no_finding"
    return "unspecified"


class ChunkTelemetry:
    """The generation use case's observer (``GenerationService(observer=...)``): queue depth while a chunk is
    out, its latency, images by finding label, and what the replica measured. A forward pass serves several
    chunks; the replica flags one of them (``first_of_pass``), so a pass is observed once."""

    def sent(self, model_id: str, chunk) -> None:
        QUEUE_DEPTH.labels(model_id).inc(len(chunk))

    def returned(self, model_id: str, chunk) -> None:
        QUEUE_DEPTH.labels(model_id).dec(len(chunk))

    def retried(self, model_id: str) -> None:
        CHUNK_RETRIES.labels(model_id).inc()

    def done(self, model_id: str, chunk, result, latency_s: float) -> None:
        record_chunk(model_id, chunk.conditions, result.stats, latency_s)

    def job_finished(self, kind: str, state: str) -> None:
        JOBS_FINISHED.labels(kind, state).inc()

    def scoring(self, reference: str, extractor: str, seconds: float) -> None:
        SCORING_LATENCY.labels(reference, extractor).observe(seconds)

    def apply(self, events) -> None:
        """Record events relayed from the gateway and jobs replicas (:class:`~services.gateway.telemetry.RelayedEvent`)
        — in the telemetry deployment, each event once."""
        import time

        now = time.monotonic()
        touched: set[str] = set()
        for ev in events:
            if ev.kind == "inflight":  # absolute, per source process: summed over the sources heard from lately
                _INFLIGHT[(ev.state, ev.model)] = (int(ev.count), now)
                touched.add(ev.model)
            elif ev.kind == "retried":
                CHUNK_RETRIES.labels(ev.model).inc()
            elif ev.kind == "chunk" and ev.stats is not None:
                record_chunk(ev.model, ev.conditions, ev.stats, ev.seconds)
            elif ev.kind == "job_finished":
                self.job_finished(ev.model, ev.state)
            elif ev.kind == "scoring":
                self.scoring(ev.model, ev.state, ev.seconds)
            elif ev.kind == "request":
                REQUESTS.labels(ev.model, ev.state, ev.code).inc()
        refresh_inflight(touched, now)


#: (source, model) -> (images in flight, when last heard): the relayed queue depth (telemetry deployment only)
_INFLIGHT: dict[tuple[str, str], tuple[int, float]] = {}
#: a source not heard from for this long is forgotten (a killed replica's in-flight images stop counting)
SOURCE_TTL_S = 30.0


def refresh_inflight(models: Iterable[str] = (), now: float | None = None) -> None:
    """Set the queue-depth gauge of ``models`` (and of every model with an expired source) from the relayed
    in-flight counts."""
    import time

    now = time.monotonic() if now is None else now
    models = set(models)
    for key, (_, seen) in list(_INFLIGHT.items()):
        if now - seen > SOURCE_TTL_S:
            del _INFLIGHT[key]
            models.add(key[1])
    for model in models:
        QUEUE_DEPTH.labels(model).set(sum(n for (_, m), (n, _) in _INFLIGHT.items() if m == model))


def record_chunk(model: str, conditions: Iterable[Condition], stats: ChunkStats, latency_s: float) -> None:
    """Account one generated chunk (called by the gateway when a generator returns)."""
    backend = stats.backend or "unknown"
    counts: dict[str, int] = {}
    for c in conditions:
        lab = finding_label(c)
        counts[lab] = counts.get(lab, 0) + 1
    for lab, n in counts.items():
        IMAGES_GENERATED.labels(model, backend, lab).inc(n)
    GENERATION_LATENCY.labels(model, backend).observe(latency_s)
    GENERATION_QUEUE.labels(model, backend).observe(float(stats.queue_s))
    if stats.first_of_pass:
        GENERATION_COMPUTE.labels(model, backend).observe(float(stats.compute_s))
        BATCH_SIZE.labels(model, backend).observe(float(stats.batch_images))
    gpu = stats.gpu
    if gpu is not None:
        lab = (model, stats.replica, gpu.gpu)
        GPU_MEMORY.labels(*lab).set(gpu.memory_used_bytes)
        GPU_MEMORY_TOTAL.labels(*lab).set(gpu.memory_total_bytes)
        if gpu.utilization_ratio is not None:
            GPU_UTIL.labels(*lab).set(gpu.utilization_ratio)


def set_job_counts(counts: Mapping[tuple[str, str], int]) -> None:
    for kind in JOB_KINDS:
        for state in JOB_STATES:
            JOBS.labels(kind, state).set(counts.get((kind, state), 0))


def init_labels(models: Iterable[str]) -> None:
    """Create the label sets that exist from the start, so a fresh scrape already lists the series."""
    set_job_counts({})
    for m in models:
        QUEUE_DEPTH.labels(m).set(0)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


#: labels of Ray's series that name machines or processes: dropped from ``/metrics?ray=1``
_RAY_PRIVATE_LABELS = ("SessionName", "NodeAddress", "ip", "pid", "Pid", "WorkerId", "ActorId", "JobId", "NodeId",
                       "instance", "host", "hostname", "node_ip", "ReplicaId", "replica")
_LABEL_RE = re.compile(r'(?:^|,)\s*(%s)="(?:[^"\\]|\\.)*"' % "|".join(_RAY_PRIVATE_LABELS))


def redact_ray_metrics(text: str) -> str:
    """Ray's exposition text without the labels that give away node IPs, session names or PIDs."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            out.append(line)
            continue
        name, rest = line.split("{", 1)
        labels, _, value = rest.rpartition("}")
        labels = _LABEL_RE.sub("", labels).lstrip(",").strip()
        out.append(f"{name}{{{labels}}}{value}" if labels else f"{name}{value}")
    return "\n".join(out) + ("\n" if out else "")


def ray_metrics_text(timeout_s: float = 2.0) -> str:
    """Ray's own metrics (``ray_serve_*`` ...) from this node's metrics agent, redacted; '' when unreachable.
    The agent's address comes from ``ray.nodes()`` (the public node table), matched on this worker's node id."""
    try:
        import urllib.request

        import ray

        if not ray.is_initialized():  # in-process platform (tests, benchmarks): no Ray, and never start one
            return ""
        here = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n.get("NodeID") == here and n.get("Alive"))
        url = f"http://{node['NodeManagerAddress']}:{int(node['MetricsExportPort'])}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - Ray's agent on this node
            return redact_ray_metrics(r.read().decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - Ray's metrics are an optional appendix
        return ""


__all__ = [
    "REGISTRY", "IMAGES_GENERATED", "GENERATION_LATENCY", "GENERATION_QUEUE", "GENERATION_COMPUTE", "BATCH_SIZE",
    "QUEUE_DEPTH", "CHUNK_RETRIES", "REQUESTS", "JOBS", "JOBS_FINISHED", "SCORING_LATENCY", "GPU_MEMORY", "GPU_MEMORY_TOTAL",
    "GPU_UTIL", "ChunkTelemetry", "finding_label", "record_chunk", "set_job_counts", "init_labels", "exposition", "ray_metrics_text",
    "redact_ray_metrics",
]
