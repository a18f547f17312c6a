"""A random tiny StyleGAN2 generator saved as a model folder entry (descriptor + safetensors), for the tests of
the StyleGAN2 loader and of the generate command."""

from __future__ import annotations

import json
import uuid

import torch

from services.generator.models.stylegan2.loader import save_weights
from services.generator.models.stylegan2.network import Generator, StyleGAN2Config

TINY = dict(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32)


def make_model(folder, model_id=None):
    """A random tiny generator registered as a descriptor + safetensors in ``folder``."""
    model_id = model_id or f"sg2-test-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(1)
    G = Generator(StyleGAN2Config(**TINY))
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.5)
        G.mapping.w_avg.normal_()
    save_weights(G, folder / f"{model_id}.safetensors")
    desc = {"model_id": model_id, "family": "stylegan2", "weights": f"{model_id}.safetensors", "resolution": 16,
            "config": G.cfg.to_dict(), "generation": {"truncation": 1.0}}
    (folder / f"{model_id}.json").write_text(json.dumps(desc))
    return model_id
