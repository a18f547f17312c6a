"""Text-conditioned latent diffusion (Stable-Diffusion-format local checkpoints such as RoentGen)."""

from .loader import HashMismatch, LatentDiffusionGenerator, load, load_path, make_descriptor, verify_folder

__all__ = ["HashMismatch", "LatentDiffusionGenerator", "load", "load_path", "make_descriptor", "verify_folder"]
