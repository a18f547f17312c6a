"""Feature-extractor interface and the stamp every extractor carries.

Image convention in: numpy float32 ``(H, W)`` (greyscale) or ``(H, W, 3)`` (RGB), values in ``[0, 1]``;
``uint8`` arrays are accepted and divided by 255.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class ExtractorStamp:
    """What made a feature vector. Two stamps with the same :meth:`key` give interchangeable features.

    ``weights_sha256`` identifies the weights: the sha256 of the weight *tensors* (format independent: the
    fid-helper TorchScript file and a pytorch-fid ``.pth`` holding the same tensors share it); ``None`` for
    user-supplied features. ``weights_file_sha256`` is the sha256 of the file they were read from (provenance
    only; not part of the key).
    """

    name: str
    arch: str
    dims: int
    weights_sha256: str | None
    weights_file_sha256: str | None = None
    weights_source: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"

    def key(self) -> str:
        payload = {
            "name": self.name,
            "arch": self.arch,
            "dims": self.dims,
            "weights": self.weights_sha256,
            "preprocessing": self.preprocessing,
            "dtype": self.dtype,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def compatible(self, other: "ExtractorStamp") -> bool:
        """Same network, weights and preprocessing (the compute dtype may differ: features then differ slightly)."""
        return (
            self.name == other.name
            and self.arch == other.arch
            and self.weights_sha256 == other.weights_sha256
            and self.preprocessing == other.preprocessing
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorStamp":
        """From :meth:`to_dict`, or a stamp saved before the weights hash had one name (reference ``.npz`` files
        shipped or registered then): ``weights_digest`` (tensors) → ``weights_sha256``, their ``weights_sha256``
        (the file) → ``weights_file_sha256``. Keys are unchanged by the conversion."""
        d = {k: v for k, v in d.items() if k != "key"}
        if "weights_digest" in d:
            file_sha = d.get("weights_sha256")
            d["weights_sha256"] = d.pop("weights_digest") or file_sha
            d["weights_file_sha256"] = file_sha
        return cls(**d)


def as_float_image(img: np.ndarray) -> np.ndarray:
    """uint8/uint16/float → float32 in [0, 1]; (H, W) or (H, W, 3); (H, W, 1) squeezed, (H, W, 4) drops alpha."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
    else:
        a = a.astype(np.float32, copy=False)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {a.shape}")
    return a


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


class FeatureExtractor:
    """Base class. Subclasses set ``name``, ``dims``, ``stamp`` and implement :meth:`extract_batch`."""

    name: str = "base"
    dims: int = 0
    stamp: ExtractorStamp
    default_batch_size: int = 32

    def extract_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(
        self,
        images: Iterable[np.ndarray],
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features ``(N, dims)`` float32 of ``images`` (any iterable; processed ``batch_size`` at a time).

        ``progress(n)`` is called after each batch with the number of images just processed.
        """
        out: list[np.ndarray] = []
        for chunk in batched(images, batch_size or self.default_batch_size):
            feats = self.extract_batch([as_float_image(im) for im in chunk])
            out.append(np.asarray(feats, dtype=np.float32))
            if progress is not None:
                progress(len(chunk))
        if not out:
            return np.zeros((0, self.dims), dtype=np.float32)
        return np.concatenate(out, axis=0)
