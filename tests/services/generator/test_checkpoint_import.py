"""Restricted import of NVlabs StyleGAN2-ADA-PyTorch pickles (built here in that format, no NVlabs code)."""

import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from services.generator.checkpoint_import import UnsafePickleError, import_stylegan2_pkl, load_network_pickle
from services.generator.models.stylegan2.network import Generator, GeneratorExport, StyleGAN2Config

# Source the NVlabs loader would exec(); ours must never run it.
EVIL_SRC = "raise RuntimeError('module_src was executed')\n"

NVLABS_CLASS = {"Generator": "Generator", "MappingNetwork": "MappingNetwork", "SynthesisNetwork": "SynthesisNetwork",
                "SynthesisBlock": "SynthesisBlock", "SynthesisLayer": "SynthesisLayer", "ToRGBLayer": "ToRGBLayer",
                "FullyConnectedLayer": "FullyConnectedLayer"}


def _install_fake_nvlabs():
    """Modules named like NVlabs' so pickle can record ``torch_utils.persistence._reconstruct_persistent_obj``."""
    tu = types.ModuleType("torch_utils")
    pers = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called by our loader
        raise AssertionError("NVlabs reconstruct must not be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    tu.persistence = pers
    sys.modules["torch_utils"] = tu
    sys.modules["torch_utils.persistence"] = pers
    return pers


class _Persistent:
    """Pickles exactly like an NVlabs ``persistence.persistent_class`` instance."""

    def __init__(self, fn, class_name, state):
        self.fn, self.class_name, self.state = fn, class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=4, module_src=EVIL_SRC, class_name=self.class_name, state=self.state)
        return (self.fn, (meta,))


def _nvlabs_tree(module: torch.nn.Module, fn) -> _Persistent:
    state = {k: v for k, v in module.__dict__.items()
             if k not in ("_modules", "_parameters", "_buffers") and isinstance(v, (int, float, str, bool, list, type(None)))}
    state["_parameters"] = OrderedDict((k, v) for k, v in module._parameters.items())
    state["_buffers"] = OrderedDict((k, v) for k, v in module._buffers.items())
    state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    state["_modules"] = OrderedDict((k, _nvlabs_tree(m, fn)) for k, m in module._modules.items())
    state["training"] = False
    return _Persistent(fn, type(module).__name__, state)


def _build_pkl(G: Generator) -> bytes:
    pers = _install_fake_nvlabs()
    try:
        tree = _nvlabs_tree(G, pers._reconstruct_persistent_obj)
        tree.state.update(z_dim=G.z_dim, c_dim=G.c_dim, w_dim=G.w_dim, img_resolution=G.img_resolution,
                          img_channels=G.img_channels)
        data = {"G": tree, "D": None, "G_ema": tree, "augment_pipe": None,
                "training_set_kwargs": {"resolution": G.img_resolution}}
        return pickle.dumps(data, protocol=4)
    finally:
        del sys.modules["torch_utils.persistence"], sys.modules["torch_utils"]


@pytest.mark.parametrize("num_findings,channels", [(4, 1), (0, 3)])
def test_pkl_round_trip(num_findings, channels):
    torch.manual_seed(3)
    cfg = StyleGAN2Config(resolution=16, z_dim=16, w_dim=16, mapping_layers=3, channel_base=128, channel_max=32,
                          num_findings=num_findings, img_channels=channels)
    G = Generator(cfg).eval()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.2)
    blob = _build_pkl(G)
    assert b"torch_utils.persistence" in blob and EVIL_SRC.encode() in blob
    assert "torch_utils" not in sys.modules
    G2 = import_stylegan2_pkl(blob)
    assert G2.cfg.channel_base == 128 and G2.cfg.channel_max == 32 and G2.cfg.mapping_layers == 3
    assert G2.cfg.num_findings == num_findings and G2.cfg.img_channels == channels
    sd1, sd2 = G.state_dict(), G2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    E1, E2 = GeneratorExport(G), GeneratorExport(G2)
    n = 2
    args = (torch.randn(n, 16), torch.zeros(n, 3 * num_findings), torch.zeros(n, 16), torch.ones(n, 1),
            torch.randn(n, E1.noise_dim()))
    with torch.no_grad():
        assert torch.equal(E1(*args), E2(*args))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_forbidden_globals_are_refused():
    blob = pickle.dumps({"G_ema": _Evil()})
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        load_network_pickle(blob)
    with pytest.raises(UnsafePickleError):
        load_network_pickle(pickle.dumps({"x": eval}))


def test_non_generator_pickle_is_a_clear_error():
    with pytest.raises(ValueError, match="G_ema"):
        import_stylegan2_pkl(pickle.dumps({"something": 1}))
