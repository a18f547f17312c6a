"""The DDPM family's samplers (config-as-data, :mod:`..schedulers`) and the guided sampling loop.

:func:`make_scheduler` builds a fresh scheduler from the model's (immutable) training schedule for every
call of :func:`sample`; nothing here is module-level mutable state.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from services.generator.models import schedulers

from .model import null_codes

#: Sampler -> scheduler over the training ``DDPMScheduler`` config. "trailing" spacing keeps the first step
#: at t = T-1 with fewer than 1000 steps; DPM-Solver++(2M) uses dynamic thresholding, the recommended x0
#: clipping for pixel-space models.
SAMPLERS: dict[str, schedulers.SamplerSpec] = {
    "ddpm": schedulers.SamplerSpec("DDPMScheduler", {"clip_sample": True, "timestep_spacing": "trailing"}),
    "ddim": schedulers.SamplerSpec("DDIMScheduler", {"clip_sample": True, "set_alpha_to_one": True,
                                                     "timestep_spacing": "trailing"}),
    "dpmpp": schedulers.SamplerSpec("DPMSolverMultistepScheduler", {
        "algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": True, "sample_max_value": 1.0,
        "lower_order_final": True}),
}

#: ``denoise(x (B,1,R,R) float32, t (B,) float32, codes (B,4) int64) -> eps (B,1,R,R) float32``
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(name: str, schedule: dict[str, Any]):
    """A new scheduler instance for one request. ``schedule`` = the training ``DDPMScheduler`` kwargs."""
    return schedulers.make_scheduler(SAMPLERS, name, schedule)


def initial_noise(seeds: Sequence[int], resolution: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-image CPU generators seeded from ``seeds`` and each image's x_T drawn from its own generator.

    CPU generators make the noise identical on every device; a generator per image makes image ``i``
    independent of the rest of the batch (the DDPM sampler keeps drawing its per-step noise from the
    same generators, via diffusers' list-of-generators support).
    """
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    x = torch.cat([torch.randn((1, 1, resolution, resolution), generator=g) for g in gens], dim=0)
    return x, gens


@torch.no_grad()
def sample(
    denoise: Denoiser,
    codes: torch.Tensor,
    seeds: Sequence[int],
    *,
    resolution: int,
    schedule: dict[str, Any],
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    device: str | torch.device = "cpu",
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run one sampler; returns ``(N, 1, R, R)`` float32 in [-1, 1] on ``device``.

    Classifier-free guidance: ``eps = eps(null) + w * (eps(c) - eps(null))``; ``w = 1`` is the plain
    conditional model (one UNet pass per step), any other ``w`` batches [cond; null] in one pass.
    """
    n = len(seeds)
    if codes.shape != (n, 4):
        raise ValueError(f"codes must have shape ({n}, 4), got {tuple(codes.shape)}")
    num_train = int(schedule.get("num_train_timesteps", 1000))
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be in [1, {num_train}], got {steps}")
    sched = make_scheduler(sampler, schedule)
    sched.set_timesteps(steps, device=device)
    x, gens = initial_noise(seeds, resolution)
    x = x.to(device) * sched.init_noise_sigma
    codes = codes.to(device)
    use_cfg = float(guidance) != 1.0
    if use_cfg:
        codes_in = torch.cat([codes, null_codes(n, device)], dim=0)
    total = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        xin = sched.scale_model_input(x, t)
        if use_cfg:
            tt = t.float().expand(2 * n).to(device)
            eps_c, eps_u = denoise(torch.cat([xin, xin], dim=0), tt, codes_in).float().chunk(2)
            eps = eps_u + float(guidance) * (eps_c - eps_u)
        else:
            tt = t.float().expand(n).to(device)
            eps = denoise(xin, tt, codes).float()
        x = sched.step(eps, t, x, generator=gens).prev_sample
        if callback is not None:
            callback(i + 1, total)
    return x.clamp(-1.0, 1.0)
