"""Class-conditional pixel diffusion (DDPM family): diffusers ``UNet2DModel`` + factored findings embedding,
classifier-free guidance, DDPM / DDIM / DPM-Solver++ samplers created per request; backends from
:mod:`services.generator.backends`."""

from .model import DEFAULT_SCHEDULE, UNET_PRESETS, ConditionalUNet, ConditionEmbedding, unet_config
from .sampling import SAMPLERS, make_scheduler, sample

__all__ = [
    "DEFAULT_SCHEDULE", "UNET_PRESETS", "ConditionalUNet", "ConditionEmbedding", "unet_config",
    "SAMPLERS", "make_scheduler", "sample",
]
