"""Import official NVlabs StyleGAN2-ADA-PyTorch ``.pkl`` generators without NVlabs code.

An NVlabs network pickle is ``{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs", ...}`` where every
network object was pickled by ``torch_utils.persistence``: it reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src,
class_name, state}`` — ``module_src`` is the *source code* of ``networks.py``, which the NVlabs loader
``exec``s. A plain ``pickle.load`` therefore runs arbitrary code from the file.

:class:`RestrictedUnpickler` resolves only an allowlist of globals (tensor/storage rebuilders, OrderedDict,
numpy scalars, EasyDict) and replaces ``_reconstruct_persistent_obj`` with a function that records
``class_name`` and ``state`` — never touching ``module_src``. Storages are read with
``torch.load(weights_only=True)``. Anything else (``os.system``, ``builtins.eval``, ...) raises
:class:`UnsafePickleError`. The ``G_ema`` tree is flattened into a state dict whose names are exactly our
:class:`~services.generator.models.stylegan2.network.Generator`'s (we mirror NVlabs' module names), the
architecture hyper-parameters are read from the pickle (and the tensor shapes), and the result is
verified by loading it strictly.

    python -m services.generator.checkpoint_import network.pkl --out weights/ --model-id ffhq256
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import torch

from services.generator.models.stylegan2.network import Generator, StyleGAN2Config


class UnsafePickleError(pickle.UnpicklingError):
    pass


class ImportError_(ValueError):
    """The pickle is valid but not a generator we can map (architecture, labels)."""


class PersistentObj:
    """Stand-in for an NVlabs persistent object: its class name and pickled ``__dict__`` state."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise UnsafePickleError("unexpected persistent-object metadata")
        self.class_name = str(meta.get("class_name"))
        self.version = meta.get("version")
        self.state = dict(meta.get("state") or {})

    def __repr__(self) -> str:  # pragma: no cover
        return f"<PersistentObj {self.class_name}>"


def _reconstruct_persistent_obj(meta):
    return PersistentObj(meta)


def _load_storage_from_bytes(b: bytes):
    return torch.load(io.BytesIO(b), weights_only=True)


class _EasyDict(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def _numpy_scalar(dtype, data=None):
    import numpy as np

    return np.frombuffer(data, dtype=dtype)[0].item() if data is not None else np.dtype(dtype).type()


def _numpy_dtype(*args):
    import numpy as np

    return np.dtype(*args)


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from the pickle (not on the allowlist of "
                "StyleGAN2-ADA network pickles)") from None

    def persistent_load(self, pid):  # pragma: no cover - NVlabs pickles use none
        raise UnsafePickleError("persistent ids are not allowed in network pickles")


def load_network_pickle(path_or_bytes) -> dict:
    """Safely unpickle an NVlabs network pickle; networks come back as :class:`PersistentObj` trees."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        fh = io.BytesIO(path_or_bytes)
        return RestrictedUnpickler(fh).load()
    with open(path_or_bytes, "rb") as fh:
        return RestrictedUnpickler(fh).load()


def flatten_state(obj: PersistentObj, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """Parameters and persistent buffers of a persistent-module tree, named like ``state_dict()``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    st = obj.state
    non_persistent = set(st.get("_non_persistent_buffers_set") or ())
    for name, p in (st.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach().clone() if isinstance(p, torch.Tensor) else torch.as_tensor(p)
    for name, b in (st.get("_buffers") or {}).items():
        if b is not None and name not in non_persistent:
            out[prefix + name] = b.detach().clone()
    for name, m in (st.get("_modules") or {}).items():
        if isinstance(m, PersistentObj):
            out.update(flatten_state(m, prefix + name + "."))
    return out


def _child(obj: PersistentObj, name: str) -> PersistentObj:
    m = (obj.state.get("_modules") or {}).get(name)
    if not isinstance(m, PersistentObj):
        raise ImportError_(f"network has no sub-module {name!r}")
    return m


def infer_config(G: PersistentObj, sd: dict) -> StyleGAN2Config:
    st = G.state
    for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        if k not in st:
            raise ImportError_(f"G_ema has no attribute {k!r}; is this a StyleGAN2-ADA generator?")
    res, c_dim, w_dim = int(st["img_resolution"]), int(st["c_dim"]), int(st["w_dim"])
    if c_dim not in (0, 12):
        raise ImportError_(f"conditional generator with c_dim={c_dim}: only unconditional (0) or synthrad's "
                           "4 findings x 3 states (12) can be mapped")
    synthesis = _child(G, "synthesis")
    mapping = _child(G, "mapping")
    for name, blk in (synthesis.state.get("_modules") or {}).items():
        arch = blk.state.get("architecture", "skip")
        if arch != "skip":
            raise ImportError_(f"synthesis block {name} uses architecture {arch!r}; only 'skip' is supported")
    num_layers = sum(1 for k in (mapping.state.get("_modules") or {}) if k.startswith("fc"))
    if c_dim and sd["mapping.embed.weight"].shape[0] != w_dim:
        raise ImportError_("mapping embed_features != w_dim is not supported")
    lr_mul = float(_child(mapping, "fc0").state.get("bias_gain", 0.01))
    chans = {}
    r = 4
    while r <= res:
        chans[r] = int(sd[f"synthesis.b{r}.conv1.weight"].shape[0])
        r *= 2
    cmax = max(chans.values())
    base = chans[res] * res if chans[res] < cmax else cmax * res
    if any(min(base // r, cmax) != c for r, c in chans.items()):
        raise ImportError_(f"channel layout {chans} does not follow min(channel_base // res, channel_max)")
    clamp = _child(_child(synthesis, f"b{res}"), "conv1").state.get("conv_clamp")
    return StyleGAN2Config(resolution=res, img_channels=int(st["img_channels"]), num_findings=c_dim // 3,
                           z_dim=int(st["z_dim"]), w_dim=w_dim, mapping_layers=num_layers, mapping_lr=lr_mul,
                           channel_base=base, channel_max=cmax, conv_clamp=None if clamp is None else float(clamp),
                           w_avg_beta=float(mapping.state.get("w_avg_beta") or 0.995))


def import_stylegan2_pkl(path_or_bytes, key: str = "G_ema") -> Generator:
    """NVlabs ``.pkl`` -> our :class:`Generator` (eval mode, weights loaded strictly)."""
    data = load_network_pickle(path_or_bytes)
    if not isinstance(data, dict) or key not in data:
        raise ImportError_(f"not a StyleGAN2-ADA network pickle: no {key!r} entry")
    G_obj = data[key]
    if not isinstance(G_obj, PersistentObj):
        raise ImportError_(f"{key} is not a persistent network object")
    sd = flatten_state(G_obj)
    cfg = infer_config(G_obj, sd)
    G = Generator(cfg)
    own = G.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("resample_filter")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ImportError_(f"pickle does not map onto the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ImportError_(f"shape mismatch for {k}: pickle {tuple(v.shape)} vs ours {tuple(own[k].shape)}")
    G.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return G.eval().requires_grad_(False)


def export_imported(G: Generator, out_dir: str | Path, model_id: str, source: str = "") -> Path:
    """Write ``<model_id>.safetensors`` + descriptor so the registry (SYNTHRAD_MODEL_DIRS) can serve it."""
    from services.generator.models.stylegan2.loader import save_weights
    from services.generator.registry import sha256_file

    out_dir = Path(out_dir)
    w = save_weights(G, out_dir / f"{model_id}.safetensors", metadata={"source": source})
    desc = {"model_id": model_id, "family": "stylegan2", "weights": w.name, "resolution": G.cfg.resolution,
            "description": f"Imported StyleGAN2-ADA generator ({source})", "sha256": sha256_file(w),
            "config": G.cfg.to_dict(), "generation": {"truncation": 1.0, "truncation_center": "global"}}
    p = out_dir / f"{model_id}.json"
    p.write_text(json.dumps(desc, indent=2))
    return p


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Import an NVlabs StyleGAN2-ADA-PyTorch .pkl (G_ema) safely.")
    ap.add_argument("pkl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-id", required=True)
    a = ap.parse_args(argv)
    G = import_stylegan2_pkl(a.pkl)
    print(export_imported(G, a.out, a.model_id, source=Path(a.pkl).name))


if __name__ == "__main__":
    main()
