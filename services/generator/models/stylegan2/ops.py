"""Pure-torch re-implementations of the StyleGAN2 custom ops (upfirdn2d, conv2d_resample, bias_act,
modulated_conv2d), following the reference (``_ref``) code paths of NVlabs StyleGAN2-ADA-PyTorch so that
imported official weights behave the same. No custom CUDA kernels: everything is made of conv2d,
conv_transpose2d, pad, reshape and elementwise ops, so the networks export to ONNX (opset >= 17) and run
under ``torch.compile``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def setup_filter(f=(1, 3, 3, 1)) -> torch.Tensor:
    """2-D FIR filter (outer product of ``f``), normalised to sum 1, like NVlabs ``upfirdn2d.setup_filter``."""
    f = torch.as_tensor(f, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter, downsample. ``padding`` = (x0, x1, y0, y1); ``f`` is 2-D."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * gain).to(x.dtype).flip([0, 1])  # the reference flips unless flip_filter (symmetric anyway)
    # Depthwise FIR as one single-channel conv over (N*C, 1, H, W): the kernel shape stays static under
    # ONNX tracing (a kernel repeated C times would depend on a traced shape).
    hp, wp = x.shape[2], x.shape[3]
    x = F.conv2d(x.reshape(-1, 1, hp, wp), f[None, None])
    x = x.reshape(n, c, x.shape[2], x.shape[3])
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fw + up - 1) // 2, (fw - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """2-D convolution with optional up/down-sampling (NVlabs ``conv2d_resample``, same fast paths)."""
    out_ch, in_ch_pg, kh, kw = w.shape
    px0 = px1 = py0 = py1 = padding
    if up > 1 or down > 1:
        fw = fh = f.shape[-1]
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    def conv(x, w, stride=1, pad=0, transpose=False, flip=flip_weight):
        if not flip and (kw > 1 or kh > 1):
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=pad, groups=groups)
        return F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1))
        return conv(x, w)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = conv(x, w)
        return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
        return conv(x, w, stride=down)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch_pg, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_ch_pg, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=(pyt, pxt), transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, pad=(py0, px0))
    x = upfirdn2d(x, f if f is not None else torch.ones(1, 1, device=x.device), padding=(px0, px1, py0, py1))
    return conv(x, w)


_SQRT2 = math.sqrt(2.0)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Bias + activation (linear | lrelu(0.2)) + gain + optional clamp (NVlabs ``bias_act`` reference)."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        default_gain = _SQRT2
    elif act == "linear":
        default_gain = 1.0
    else:
        raise ValueError(f"unsupported activation {act!r}")
    g = default_gain if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = False) -> torch.Tensor:
    """Modulated (and demodulated) convolution.

    ``fused_modconv=True`` is the grouped-convolution formulation (one conv with ``groups=N`` and per-sample
    weights). ``False`` scales the activations before and after a shared-weight convolution — mathematically
    identical, faster for training and under fp16/channels_last, and exportable to ONNX with a dynamic batch
    axis (ONNX ``Conv.group`` is a static attribute, so the grouped form would freeze the batch size).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalise to avoid fp16 overflow (as NVlabs)
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N O I k k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N O]
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=n, flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
