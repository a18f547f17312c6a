"""StyleGAN2 architecture: shapes, conditioning, modulated-conv formulations, FIR resampling, size budget."""

import pytest
import torch

from services.generator.models.stylegan2.network import (Discriminator, Generator, GeneratorExport, StyleGAN2Config,
                                                         count_params, encode_conditions)
from services.generator.models.stylegan2.ops import setup_filter, upsample2d, upfirdn2d

TINY = dict(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32,
            d_channel_base=256, d_channel_max=32)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    cfg = StyleGAN2Config(**TINY)
    G, D = Generator(cfg).eval(), Discriminator(cfg)
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.3)
    return cfg, G, D


def test_shapes_and_ws(nets):
    cfg, G, D = nets
    z = torch.randn(4, cfg.z_dim)
    c = encode_conditions(torch.tensor([[0, 1, 2, 0]] * 4))
    assert c.shape == (4, 12) and torch.equal(c.sum(1), torch.full((4,), 4.0))
    img = G(z, c, noise_mode="const")
    assert img.shape == (4, 1, 16, 16) and torch.isfinite(img).all()
    assert G.num_ws == 1 + 2 + 2 + 1  # b4: conv1; b8, b16: conv0+conv1; + the last torgb
    assert D(img, c).shape == (4, 1)
    assert G.synthesis.noise_resolutions() == [4, 8, 8, 16, 16]


def test_condition_changes_output(nets):
    cfg, G, _ = nets
    z = torch.randn(1, cfg.z_dim).repeat(2, 1)
    c = encode_conditions(torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0]]))
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
    assert (img[0] - img[1]).abs().max() > 1e-3
    # the discriminator's projection term also depends on the condition
    _, _, D = nets
    with torch.no_grad():
        d = D(img[:1].repeat(2, 1, 1, 1), c)
    assert (d[0] - d[1]).abs() > 1e-6


def test_fused_and_activation_scaling_modconv_agree(nets):
    cfg, G, _ = nets
    z = torch.randn(3, cfg.z_dim)
    c = encode_conditions(torch.randint(0, 3, (3, 4)))
    with torch.no_grad():
        a = G(z, c, noise_mode="const", fused_modconv=False)
        b = G(z, c, noise_mode="const", fused_modconv=True)
    assert torch.allclose(a, b, atol=1e-4)


def test_export_module_matches_generator_with_explicit_noise(nets):
    cfg, G, _ = nets
    E = GeneratorExport(G)
    z = torch.randn(2, cfg.z_dim)
    c = encode_conditions(torch.tensor([[1, 0, 2, 2], [0, 1, 0, 1]]))
    noise = torch.randn(2, E.noise_dim())
    noises, off = [], 0
    for r in E.noise_resolutions():
        noises.append(noise[:, off:off + r * r].reshape(2, 1, r, r))
        off += r * r
    with torch.no_grad():
        a = E(z, c, torch.zeros(2, cfg.w_dim), torch.ones(2, 1), noise)
        b = G(z, c, noise_mode="input", noises=noises)
        # psi = 0 collapses every z onto the centre
        e0 = E(z, c[:1].repeat(2, 1), torch.zeros(2, cfg.w_dim), torch.zeros(2, 1), noise[:1].repeat(2, 1))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(e0[0], e0[1], atol=1e-6)


def test_fir_upsampling_preserves_constants_and_filter_sums_to_one():
    f = setup_filter()
    assert f.shape == (4, 4) and abs(float(f.sum()) - 1) < 1e-6
    x = torch.full((1, 2, 8, 8), 3.0)
    y = upsample2d(x, f)
    assert y.shape == (1, 2, 16, 16)
    assert torch.allclose(y[:, :, 2:-2, 2:-2], torch.full_like(y[:, :, 2:-2, 2:-2], 3.0), atol=1e-5)
    d = upfirdn2d(torch.full((1, 1, 8, 8), 1.0), f, down=2, padding=(1, 1, 1, 1))
    assert d.shape == (1, 1, 4, 4) and torch.allclose(d[:, :, 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


def test_default_64px_generator_fits_size_budget():
    G = Generator(StyleGAN2Config())
    n = count_params(G)
    assert 3e6 <= n <= 5e6  # fp32 safetensors <= 20 MB
    assert n * 4 < 20e6


def test_training_mode_backward_and_r1_double_backward(nets):
    cfg, _, D = nets
    G = Generator(cfg)
    z = torch.randn(4, cfg.z_dim)
    c = encode_conditions(torch.randint(0, 2, (4, 4)))
    img = G(z, c)
    torch.nn.functional.softplus(-D(img, c)).mean().backward()
    assert G.mapping.fc0.weight.grad is not None and G.synthesis.b4.const.grad is not None
    real = torch.randn(4, 1, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(D(real, c).sum(), real, create_graph=True)
    g.square().sum().backward()
    assert D.b16.fromrgb.weight.grad is not None
