"""Differentiable augmentation for GAN training on small datasets (DiffAugment / ADA style).

Applied to every image the discriminator sees (real and fake), each op per sample with probability ``p``.
Ops: integer translation (up to 1/8 of the side, filled with black = -1), cutout (a square of 1/4 side set to
the image's mean), brightness (+U(-0.2, 0.2)), contrast (x U(0.7, 1.4) around the mean). **No horizontal
flip**: chest anatomy is lateralised (heart on the left), so a flipped X-ray is not a valid sample.
``p`` adapts as in ADA: the heuristic ``r_t = E[sign(D(real))]`` is pushed toward ``target`` (0.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AdaptiveAugment:
    """The probability ``p`` lives on the training device and is adjusted there: the training loop never waits
    for the GPU to read it (``probability()`` does, for logs and checkpoints)."""

    def __init__(self, p: float = 0.0, target: float = 0.6, ada_kimg: float = 100.0, adaptive: bool = True,
                 ops: tuple[str, ...] = ("translation", "cutout", "brightness", "contrast"), max_p: float = 0.8,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.p = torch.tensor(float(p), device=self.device)
        self.target, self.ada_kimg, self.adaptive, self.ops, self.max_p = target, ada_kimg, adaptive, ops, max_p
        self.enabled = adaptive or p > 0
        self._acc = torch.zeros([], device=self.device)
        self._n = 0

    def disable(self) -> None:
        self.enabled, self.adaptive = False, False
        self.p.zero_()

    def set_p(self, p: float) -> None:
        self.p.fill_(float(p))
        self.enabled = self.enabled or p > 0

    def probability(self) -> float:
        return float(self.p)

    def state_dict(self) -> dict:
        return {"p": self.probability(), "acc": float(self._acc), "n": self._n}

    def load_state_dict(self, st: dict) -> None:
        self.p.fill_(float(st["p"]))
        self._acc.fill_(float(st["acc"]))
        self._n = int(st["n"])
        self.enabled = self.enabled or float(st["p"]) > 0

    def accumulate(self, real_logits: torch.Tensor) -> None:
        if self.adaptive:
            self._acc += real_logits.detach().sign().sum().float()
            self._n += real_logits.numel()

    def update(self, batch_images: int) -> torch.Tensor | None:
        """Adjust ``p`` from the accumulated sign statistic, on the device; returns r_t (a device tensor)."""
        if not self.adaptive or self._n == 0:
            return None
        rt = self._acc / self._n
        step = batch_images / (self.ada_kimg * 1000)
        self.p.copy_((self.p + torch.where(rt > self.target, step, -step)).clamp(0.0, self.max_p))
        self._acc.zero_()
        self._n = 0
        return rt

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        n, _, h, w = x.shape
        dev = x.device
        p = self.p.to(dev)

        def mask():
            return (torch.rand(n, 1, 1, 1, device=dev) < p).to(x.dtype)

        if "brightness" in self.ops:
            x = x + mask() * (torch.rand(n, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5) * 0.4
        if "contrast" in self.ops:
            m = x.mean(dim=[1, 2, 3], keepdim=True)
            f = 0.7 + torch.rand(n, 1, 1, 1, device=dev, dtype=x.dtype) * 0.7
            x = torch.lerp(x, (x - m) * f + m, mask())
        if "translation" in self.ops:
            shift = max(1, h // 8)
            t = torch.randint(-shift, shift + 1, (n, 2), device=dev).to(x.dtype) * mask().reshape(n, 1)
            theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
            theta[:, 0, 0] = 1
            theta[:, 1, 1] = 1
            theta[:, 0, 2] = -t[:, 0] * 2 / w
            theta[:, 1, 2] = -t[:, 1] * 2 / h
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 1
        if "cutout" in self.ops:
            size = max(1, h // 4)
            cy = torch.randint(0, h, (n, 1, 1), device=dev)
            cx = torch.randint(0, w, (n, 1, 1), device=dev)
            yy = torch.arange(h, device=dev).reshape(1, h, 1)
            xx = torch.arange(w, device=dev).reshape(1, 1, w)
            box = ((yy - cy).abs() <= size // 2) & ((xx - cx).abs() <= size // 2)
            box = box.unsqueeze(1).to(x.dtype) * mask()
            m = x.mean(dim=[1, 2, 3], keepdim=True).detach()
            x = x * (1 - box) + m * box
        return x
