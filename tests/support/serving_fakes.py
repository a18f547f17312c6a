"""Test-only stand-ins for the serving tests: a tiny deterministic generator and a cheap scorer.

``TinyGenerator`` is a real :class:`LoadedGenerator` (same contract as the shipped models: image ``i``
depends only on its seed, condition and params), small enough to run hundreds of images per second on one
CPU core. Never used by product code.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator


class TinyGenerator(LoadedGenerator):
    family = "tiny-test"
    text_conditioned = False

    def __init__(self, model_id: str = "tiny-test", resolution: int = 32, fail_seeds: set[int] | None = None,
                 backend: str = "eager", device: str = "cpu"):
        self.model_id = model_id
        self.model_hash = "0" * 63 + "1"
        self.backend = backend
        self.device = device
        self.resolution = resolution
        self.fail_seeds = set(fail_seeds or ())
        self.calls: list[int] = []  # batch sizes of forward passes (to check that batching happened)
        self._lock = threading.Lock()

    def generate(self, conditions, seeds, params=None, prompts=None) -> np.ndarray:
        self.check_inputs(conditions, seeds, prompts)
        params = params or GenerationParams()
        if params.resolution not in (None, self.resolution):
            raise GeneratorError(f"model {self.model_id} makes {self.resolution}px images, not {params.resolution}px")
        with self._lock:
            self.calls.append(len(seeds))
        r = self.resolution
        yy, xx = np.mgrid[0:r, 0:r].astype(np.float32) / (r - 1)
        out = np.empty((len(seeds), r, r), np.float32)
        for i, (c, s) in enumerate(zip(conditions, seeds)):
            if int(s) in self.fail_seeds:
                raise RuntimeError(f"injected failure at seed {s}")
            rng = np.random.default_rng(int(s))
            codes = np.asarray(c.codes(), np.float32)  # 0 absent, 1 present, 2 unspecified
            lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
                -(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
            img = 0.2 + 0.5 * lungs + 0.05 * (codes == 1).sum() + 0.05 * rng.standard_normal((r, r)).astype(np.float32)
            if params.truncation is not None:
                img = img * (0.5 + 0.5 * float(params.truncation))
            out[i] = np.clip(img, 0.0, 1.0)
        return out


class GanLikeGenerator(TinyGenerator):
    """A tiny generator with a GAN's knobs only (like StyleGAN2: truncation, resolution) and a default
    truncation, so the gateway's check_params / resolved_params plumbing can be tested."""

    family = "tiny-gan-test"
    uses_params = frozenset({"truncation", "resolution"})
    default_truncation = 0.7

    def resolved_params(self, params: GenerationParams | None) -> dict:
        return {"truncation": self.default_truncation, **super().resolved_params(params)}

    def generate(self, conditions, seeds, params=None, prompts=None) -> np.ndarray:
        params = params or GenerationParams()
        if params.truncation is None:
            params = params.model_copy(update={"truncation": self.default_truncation})
        return super().generate(conditions, seeds, params, prompts)


FAIL_SEED = 13


def make_tiny(model_id: str, backend: str = "eager", device: str = "cpu") -> TinyGenerator:
    """``generator_factory`` for GeneratorDeployment in Ray tests (``serving_fakes:make_tiny``, with the tests
    folder on PYTHONPATH). A model id containing "fail" fails on seed ``FAIL_SEED`` (a failing replica)."""
    fail = {FAIL_SEED} if "fail" in model_id else set()
    return TinyGenerator(model_id=model_id, backend=backend if backend != "auto" else "eager", device="cpu",
                         fail_seeds=fail)


class SlowTinyGenerator(TinyGenerator):
    """A tiny generator whose forward pass takes ``SLOW_PASS_S`` (a job lasts long enough to kill things in)."""

    SLOW_PASS_S = 0.25

    def generate(self, conditions, seeds, params=None, prompts=None) -> np.ndarray:
        import time

        time.sleep(self.SLOW_PASS_S)
        return super().generate(conditions, seeds, params, prompts)


def make_slow_tiny(model_id: str, backend: str = "eager", device: str = "cpu") -> TinyGenerator:
    """``generator_factory`` (``serving_fakes:make_slow_tiny``) of :class:`SlowTinyGenerator`."""
    return SlowTinyGenerator(model_id=model_id, backend=backend if backend != "auto" else "eager", device="cpu")


class FakeScorer:
    """Scores a batch by simple pixel statistics against a fake reference (exercises the job plumbing)."""

    def __init__(self, store):
        self.store = store
        self.calls = 0

    def references(self) -> list[str]:
        return ["fake-ref"]

    def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = "inception") -> dict:
        self.calls += 1
        imgs = np.stack([img for _, img in self.store.iter_images(batch_id)])
        return {
            "batch_id": batch_id, "reference": reference, "metrics": metrics,
            "extractor": {"name": extractor, "weights_sha256": "none", "preprocessing": {}, "dtype": "float32"},
            "scores": [{"name": "mean_intensity", "value": float(imgs.mean())}],
            "n_real": 10, "n_synthetic": int(len(imgs)),
        }

    def evaluate(self, kind: str, batch_ids: list[str], options: dict, progress=None) -> dict:
        """Evaluations are the real thing (the metrics service's own core on this store)."""
        from services.metrics.replica import MetricsReplica

        return MetricsReplica(self.store.url, device="cpu").evaluate(kind, batch_ids, options, progress)


def make_platform(tmp_path, gen: TinyGenerator | None = None, more: tuple = (), **settings_kw):
    """An in-process Platform (no Ray) on a tiny generator (the default model; ``more`` generators are served
    too) and the fake scorer; returns (platform, store, gen)."""
    from services.common.config import Settings
    from services.common.store import BatchStore
    from services.gateway.clients import LocalScorer
    from services.gateway.core import Platform
    from services.generator.generation import LocalGenerators
    from services.generator.replica import GeneratorReplica

    settings = Settings(home=tmp_path / "home", **settings_kw)
    store = BatchStore(settings.resolved_store_url)
    gen = gen or TinyGenerator("tiny")
    platform = Platform(LocalGenerators({g.model_id: GeneratorReplica(g.model_id, generator=g) for g in (gen, *more)}),
                        LocalScorer(FakeScorer(store)), store, settings, jobs_dir=settings.home / "jobs",
                        default_model=gen.model_id)
    return platform, store, gen


async def serve_grpc(platform):
    """The gRPC API of ``platform`` on a real grpc.aio server on 127.0.0.1; returns (server, channel)."""
    import grpc

    from services.gateway.grpc_api import GrpcApi
    from services.gateway.grpc_servicer import add_to_server

    server = grpc.aio.server()
    add_to_server(GrpcApi(platform), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


class GrpcEnv:
    """``async with GrpcEnv(tmp_path, gen, more=..., **settings_kw) as env``: :func:`make_platform` served by
    :func:`serve_grpc`, with ``platform``, ``store``, ``gen`` (the default model's generator, a TinyGenerator
    unless given), ``server``, ``channel`` and a stub per service (``gen_stub``, ``batch_stub``,
    ``metrics_stub``); the channel and server are closed on exit."""

    def __init__(self, tmp_path, gen: TinyGenerator | None = None, more: tuple = (), **settings_kw):
        self.tmp_path, self._gen, self._more, self._settings_kw = tmp_path, gen, more, settings_kw

    async def __aenter__(self):
        from services.gateway.stubs import batch_pb2_grpc, generator_pb2_grpc, metrics_pb2_grpc

        self.platform, self.store, self.gen = make_platform(self.tmp_path, self._gen or TinyGenerator("tiny"),
                                                            self._more, **self._settings_kw)
        self.server, self.channel = await serve_grpc(self.platform)
        self.gen_stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)
        self.batch_stub = batch_pb2_grpc.BatchServiceStub(self.channel)
        self.metrics_stub = metrics_pb2_grpc.MetricsServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(None)


def wait_job(client, job_id: str, timeout: float = 20.0, poll: float = 0.05, headers: dict | None = None) -> dict:
    """Poll ``GET /v1/jobs/{job_id}`` through a REST ``client`` (httpx or FastAPI's TestClient) every ``poll``
    seconds until the job succeeded or failed, and return it; fails when it has not finished in ``timeout``."""
    deadline = time.time() + timeout
    j: dict = {}
    while time.time() < deadline:
        j = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if j["state"] in ("succeeded", "failed"):
            return j
        time.sleep(poll)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {j}")
