"""The shipped independent chest X-ray classifier: load it (sha256-checked), predict finding probabilities.

Files beside this module (written by ``classifier/train.py``, the maintainer program):

* ``cxr-classifier-64.safetensors``: the weights. fp16, except the two largest kernels (``layer4.1.conv1/2``,
  512×512×3×3 each), stored as int8 per output channel (``<name>.int8`` + fp32 ``<name>.scale``): ResNet-18 is
  11.2 M parameters, 22.3 MB in fp16, over the 20 MB a shipped file may have. The reported metrics are those of
  the dequantised weights, i.e. of exactly what :func:`load_classifier` returns.
* ``cxr-classifier-64.json``: sha256 of the weights, architecture, training data and split rule, per-finding
  thresholds and the real held-out metrics (the card's numbers).
* ``cxr-classifier-64.md``: the human-readable card.

``predict(images)`` takes (n, h, w) float [0, 1] at any size (resized to 64 px with ``inputs.resize``) and returns
(n, 4) probabilities in ``services.common.findings.FINDINGS`` order. Nothing here reads ``../shared``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError
from services.metrics.evaluation.stats import bootstrap_auc

HERE = Path(__file__).resolve().parent
NAME = "cxr-classifier-64"
WEIGHTS = HERE / f"{NAME}.safetensors"
META = HERE / f"{NAME}.json"
RESOLUTION = 64
FORMAT = "synthrad-cxr-classifier/1"
#: kernels stored as int8 per output channel (the rest is fp16); see the module docstring
INT8_KEYS = ("backbone.layer4.1.conv1.weight", "backbone.layer4.1.conv2.weight")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_state(state_dict: dict) -> dict:
    """A float state dict → the shipped tensors (fp16; :data:`INT8_KEYS` as int8 + per-channel scale)."""
    import torch

    out = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if k in INT8_KEYS:
            scale = v.float().abs().amax(dim=tuple(range(1, v.ndim)), keepdim=True).clamp(min=1e-12) / 127.0
            out[k + ".int8"] = torch.round(v.float() / scale).to(torch.int8).contiguous()
            out[k + ".scale"] = scale.float().contiguous()
        elif v.is_floating_point():
            out[k] = v.half().contiguous()
        else:
            out[k] = v.contiguous()  # BN's num_batches_tracked
    return out


def decode_state(tensors: dict) -> dict:
    """The shipped tensors → a float32 state dict."""
    sd = {}
    for k, v in tensors.items():
        if k.endswith(".int8"):
            base = k[: -len(".int8")]
            sd[base] = v.float() * tensors[base + ".scale"]
        elif not k.endswith(".scale"):
            sd[k] = v.float() if v.is_floating_point() else v
    return sd


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def heldout_metrics(p: np.ndarray, codes: np.ndarray, thresholds: dict, replicates: int, ci_level: float = 0.95,
                    seed: int = 0) -> dict:
    """Per finding with both classes among the known labels (codes 0 / 1; 2 = unknown is left out): AUC with a
    stratified bootstrap CI, counts, and sensitivity / specificity at the finding's threshold."""
    out = {}
    for j, f in enumerate(FINDINGS):
        k = codes[:, j] != 2
        y, pj = codes[k, j].astype(int), np.asarray(p)[k, j]
        if (y == 1).sum() == 0 or (y == 0).sum() == 0:
            continue
        auc, lo, hi = bootstrap_auc(y, pj, replicates, ci_level, seed + j)
        pred = pj > thresholds[f]
        sens, spec = float(pred[y == 1].mean()), float((~pred[y == 0]).mean())
        out[f] = {"auc": _r(auc), "ci_low": _r(lo), "ci_high": _r(hi), "ci_level": ci_level,
                  "n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()), "sensitivity": _r(sens),
                  "specificity": _r(spec), "balanced_accuracy": _r((sens + spec) / 2),
                  "better_than_chance": bool(lo is not None and lo > 0.5)}
    return out


class CXRClassifier:
    """A loaded classifier: ``predict``, its architecture, weights hash, thresholds and card (real held-out
    metrics per test set: ``card[test_set][finding] = {auc, ci_low, ci_high, ci_level, n_pos, n_neg, ...}``)."""

    def __init__(self, net, meta: dict, weights_sha256: str):
        self.net = net.eval()
        self.meta = meta
        self.arch: str = meta["arch"]
        self.weights_sha256 = weights_sha256
        self.resolution: int = int(meta.get("resolution", RESOLUTION))
        self.thresholds: dict[str, float] = {f: float(meta["thresholds"][f]) for f in FINDINGS}
        self.card: dict[str, dict[str, dict]] = {k: v["findings"] for k, v in meta["heldout"].items()}
        self.reference: dict[str, str] = dict(meta["reference"])  # finding -> default real test set
        self._lock = threading.Lock()

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        from services.metrics.evaluation.inputs import resize

        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 4:
            x = x.mean(-1)
        if x.ndim != 3:
            raise MetricsError(f"classifier input must be (n, h, w) images, got shape {x.shape}")
        if len(x) == 0:
            return np.zeros((0, len(FINDINGS)), np.float32)
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(x), batch):
                t = torch.from_numpy(np.ascontiguousarray(resize(x[i:i + batch], self.resolution)))[:, None]
                out.append(torch.sigmoid(self.net(t.clamp(0, 1))).float().numpy())
        return np.concatenate(out).astype(np.float32)

    def score_real(self, images: np.ndarray, codes: np.ndarray, replicates: int = 2000, ci_level: float = 0.95,
                   seed: int = 0) -> dict:
        """Real held-out metrics of labelled images (the card's format) — e.g. of a dataset a generator was
        trained on; independent only where the images were not in this classifier's training split."""
        return heldout_metrics(self.predict(images), np.asarray(codes), self.thresholds, replicates, ci_level, seed)

    def real_auc(self, finding: str, test_set: str | None = None) -> dict | None:
        """The card's real held-out metrics of ``finding`` on ``test_set`` (default: the finding's reference)."""
        name = test_set or self.reference.get(finding)
        return (self.card.get(name) or {}).get(finding)

    def provenance(self) -> dict[str, Any]:
        m = self.meta
        return {"name": m.get("name", NAME), "arch": self.arch, "weights_sha256": self.weights_sha256,
                "resolution": self.resolution, "training_data": [d["name"] for d in m.get("training_data", [])],
                "split_rule": m.get("split_rule"), "independent": True,
                "note": "trained on real labelled images only (never on generated images)"}


_CACHE: dict[tuple[str, str], CXRClassifier] = {}
_CACHE_LOCK = threading.Lock()


def read_meta(meta_path: Path = META) -> dict:
    try:
        return json.loads(Path(meta_path).read_text())
    except FileNotFoundError:
        raise MetricsError(f"classifier description {meta_path} is missing") from None


def load_classifier(weights: str | Path | None = None, meta: str | Path | None = None) -> CXRClassifier:
    """The shipped classifier (cached per file and hash); a :class:`MetricsError` when a file is missing or the
    weights' sha256 differs from the one its json records."""
    from safetensors.torch import load_file

    from services.metrics.evaluation.networks import build_classifier

    wpath = Path(weights) if weights else WEIGHTS
    mpath = Path(meta) if meta else (wpath.with_suffix(".json") if weights else META)
    if not wpath.exists():
        raise MetricsError(f"classifier weights {wpath} are missing")
    desc = read_meta(mpath)
    digest = sha256_file(wpath)
    if digest != desc.get("sha256"):
        raise MetricsError(f"classifier weights {wpath.name} have sha256 {digest[:12]}…, but {mpath.name} records "
                           f"{str(desc.get('sha256'))[:12]}…: the file was changed or replaced")
    key = (str(wpath.resolve()), digest)
    with _CACHE_LOCK:
        if key not in _CACHE:
            net = build_classifier(desc["arch"], len(FINDINGS))
            net.load_state_dict(decode_state(load_file(str(wpath))))
            _CACHE[key] = CXRClassifier(net, desc, digest)
        return _CACHE[key]
