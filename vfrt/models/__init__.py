"""Zero123 networks in plain PyTorch and original-checkpoint loading (SPEC sections 1, 2, 7).

This package imports nothing else from ``vfrt``.
"""
from __future__ import annotations

from .clip import CLIPVisionTower, clip_preprocess
from .config import CLIPConfig, ScheduleConfig, UNetConfig, VAEConfig, Zero123Config
from .diffusers_format import load_zero123_diffusers
from .errors import CheckpointError
from .loading import load_zero123, peek_config
from .state_dict import load_state_dict_file
from .testing import TinyCheckpoint, tiny_config, write_tiny_checkpoint
from .unet import UNet, timestep_embedding
from .vae import AutoencoderKL
from .zero123 import Zero123

__all__ = [
    "Zero123",
    "Zero123Config",
    "UNetConfig",
    "VAEConfig",
    "CLIPConfig",
    "ScheduleConfig",
    "UNet",
    "AutoencoderKL",
    "CLIPVisionTower",
    "clip_preprocess",
    "timestep_embedding",
    "load_zero123",
    "peek_config",
    "load_state_dict_file",
    "load_zero123_diffusers",
    "CheckpointError",
    "TinyCheckpoint",
    "write_tiny_checkpoint",
    "tiny_config",
]
