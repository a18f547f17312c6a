"""Conditional StyleGAN2 (Karras et al. 2020) in pure torch, parameter-compatible with NVlabs
StyleGAN2-ADA-PyTorch (``networks.py``: same module names, shapes and equalised-learning-rate scaling), so
official ``G_ema`` weights map 1:1 (see :mod:`services.generator.checkpoint_import`).

Conditioning: each of the 4 findings has 3 states (absent / present / unspecified). The condition is the
one-hot of those states, ``c`` of shape (N, 12) (finding-major), fed to the mapping network's ``embed``
layer — a linear map of a one-hot, i.e. the *sum of one learned embedding per (finding, state)* — then
2nd-moment normalised and concatenated with the normalised ``z`` (exactly the NVlabs conditional mapping).
The discriminator is conditioned by projection (NVlabs ``cmap``): ``D(x, c) = <phi(x), psi(c)> / sqrt(d)``.

Generator: mapping (``mapping.fc*``, ``w_avg`` tracked with beta 0.995) -> synthesis with a learned 4x4
constant, modulated/demodulated 3x3 convs, per-layer noise inputs with learned strength, and the *skip*
architecture (a 1-channel ToRGB at every resolution, upsampled with the [1,3,3,1] FIR filter and summed).
Discriminator: residual blocks, minibatch-stddev epilogue, projection conditioning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import bias_act, conv2d_resample, modulated_conv2d, normalize_2nd_moment, setup_filter, upsample2d

NUM_STATES = 3


@dataclass
class StyleGAN2Config:
    resolution: int = 64
    img_channels: int = 1
    num_findings: int = 4  # c_dim = num_findings * 3 (0 findings = unconditional)
    z_dim: int = 256  # latent z
    w_dim: int = 256  # intermediate latent w (style)
    mapping_layers: int = 4  # MLP depth of the mapping network z (+ condition embedding) -> w
    mapping_lr: float = 0.01  # learning-rate multiplier of the mapping network (equalized lr)
    channel_base: int = 4096  # generator channels at resolution r: min(channel_base / r, channel_max)
    channel_max: int = 256
    d_channel_base: int = 4096  # the same for the discriminator
    d_channel_max: int = 256
    d_mapping_layers: int = 2  # discriminator's condition-embedding MLP (projection discriminator)
    mbstd_group: int = 4
    conv_clamp: float | None = 256.0
    w_avg_beta: float = 0.995
    extra: dict = field(default_factory=dict)

    @property
    def c_dim(self) -> int:
        return self.num_findings * NUM_STATES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGAN2Config":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def encode_conditions(codes: torch.Tensor, num_findings: int = 4) -> torch.Tensor:
    """Codes (N, F) in {0 absent, 1 present, 2 unspecified} -> one-hot (N, 3F) float32."""
    codes = torch.as_tensor(codes, dtype=torch.long)
    if num_findings == 0:
        return torch.zeros(codes.shape[0], 0)
    return F.one_hot(codes, NUM_STATES).reshape(codes.shape[0], -1).float()


# ---------------------------------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 conv_clamp=None):
        super().__init__()
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1.0):
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        act_gain = (math.sqrt(2) if self.activation == "lrelu" else 1.0) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=clamp)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995,
                 embed_features=None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1.0, update_emas=False):
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(self.fc0.weight.dtype) if z.dtype != self.fc0.weight.dtype else z)
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(x.dtype if x is not None else self.embed.weight.dtype)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1 and hasattr(self, "w_avg"):
            x = self.w_avg.to(x.dtype).lerp(x, truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.padding = kernel_size // 2
        self.act_gain = math.sqrt(2) if activation == "lrelu" else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise=None, noise_mode="random", fused_modconv=False, gain=1.0):
        styles = self.affine(w)
        n = None
        if self.use_noise:
            if noise_mode == "input":
                n = noise * self.noise_strength.to(x.dtype)
            elif noise_mode == "random":
                n = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device, dtype=x.dtype) \
                    * self.noise_strength.to(x.dtype)
            elif noise_mode == "const":
                n = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = modulated_conv2d(x, self.weight, styles, noise=n, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x, w, fused_modconv=False):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.num_conv = 0
        self.num_torgb = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    def forward(self, x, img, ws, noises, noise_mode="random", fused_modconv=False):
        w_iter = iter(ws.unbind(dim=1))
        n_iter = iter(noises if noises is not None else [None] * self.num_conv)
        dtype = self.conv1.weight.dtype if x is None else x.dtype
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x, next(w_iter), next(n_iter), noise_mode, fused_modconv)
        x = self.conv1(x, next(w_iter), next(n_iter), noise_mode, fused_modconv)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).float()
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp=None):
        super().__init__()
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        ch = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = ch[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, ch[res], w_dim, res, img_channels, is_last=(res == img_resolution),
                                   conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def noise_resolutions(self) -> list[int]:
        """Resolution of each noise input, in the order :meth:`forward` consumes ``noises``."""
        out = []
        for res in self.block_resolutions:
            out += [res] * getattr(self, f"b{res}").num_conv
        return out

    def forward(self, ws, noises=None, noise_mode="random", fused_modconv=False):
        x = img = None
        w_idx = n_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            bws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            bn = list(noises[n_idx:n_idx + block.num_conv]) if noises is not None else None
            x, img = block(x, img, bws, bn, noise_mode, fused_modconv)
            w_idx += block.num_conv
            n_idx += block.num_conv
        return img


class Generator(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg.w_dim, cfg.resolution, cfg.img_channels, cfg.channel_base,
                                          cfg.channel_max, conv_clamp=cfg.conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, self.num_ws, num_layers=cfg.mapping_layers,
                                      lr_multiplier=cfg.mapping_lr, w_avg_beta=cfg.w_avg_beta)

    def forward(self, z, c, truncation_psi=1.0, noise_mode="random", noises=None, fused_modconv=False,
                update_emas=False):
        w = self.mapping(z, c, truncation_psi=truncation_psi, update_emas=update_emas)
        ws = w.unsqueeze(1).repeat([1, self.num_ws, 1])
        return self.synthesis(ws, noises=noises, noise_mode=noise_mode, fused_modconv=fused_modconv)


class GeneratorExport(nn.Module):
    """Deterministic inference graph: every random input is explicit.

    ``forward(z, c, w_center, psi, noise)``: ``z`` (N, z_dim) standard normal, ``c`` (N, 3F) one-hot
    condition, ``w_center`` (N, w_dim) truncation centre, ``psi`` (N, 1) truncation, ``noise``
    (N, sum r_i**2) standard normal: the per-layer noise maps (resolutions ``noise_resolutions()``, in order)
    flattened and concatenated, so the graph has a fixed set of inputs for any resolution.
    Returns (N, C, R, R) in ~[-1, 1]. This is the module every backend runs (eager, torch.compile, ONNX).
    """

    input_names = ("z", "c", "w_center", "psi", "noise")

    def __init__(self, G: Generator, fused_modconv: bool = False):
        super().__init__()
        self.G = G
        self.fused_modconv = fused_modconv

    def noise_resolutions(self) -> list[int]:
        return self.G.synthesis.noise_resolutions()

    def noise_dim(self) -> int:
        return sum(r * r for r in self.noise_resolutions())

    def forward(self, z, c, w_center, psi, noise):
        w = self.G.mapping(z, c)
        w = w_center.to(w.dtype) + psi.to(w.dtype) * (w - w_center.to(w.dtype))
        ws = w.unsqueeze(1).repeat([1, self.G.num_ws, 1])
        noises, off = [], 0
        for r in self.noise_resolutions():
            noises.append(noise[:, off:off + r * r].reshape(-1, 1, r, r))
            off += r * r
        return self.G.synthesis(ws, noises=noises, noise_mode="input", fused_modconv=self.fused_modconv)


# ---------------------------------------------------------------------------------------------------------
class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.group_size if (self.group_size and n % self.group_size == 0) else n
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, mbstd_group=4, conv_clamp=None):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group, 1)
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, cmap):
        x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:  # projection conditioning
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        self.c_dim = cfg.c_dim
        self.block_resolutions = [2**i for i in range(int(np.log2(cfg.resolution)), 2, -1)]
        ch = {res: min(cfg.d_channel_base // res, cfg.d_channel_max) for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            in_ch = ch[res] if res < cfg.resolution else 0
            setattr(self, f"b{res}", DiscriminatorBlock(in_ch, ch[res], ch[res // 2], cfg.img_channels,
                                                        conv_clamp=cfg.conv_clamp))
        cmap_dim = ch[4] if self.c_dim > 0 else 0
        if self.c_dim > 0:
            self.mapping = MappingNetwork(0, self.c_dim, cmap_dim, None, num_layers=cfg.d_mapping_layers,
                                          w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim, 4, mbstd_group=cfg.mbstd_group, conv_clamp=cfg.conv_clamp)

    def forward(self, img, c):
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, cmap)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
