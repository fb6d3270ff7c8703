"""The per-view networks with their fixed pre- and post-processing folded in (SPEC §2, §3).

Each wraps one Zero123 sub-network so that an engine (or an exported graph) takes float32 pixels or
latents and returns float32 results, whatever precision it computes in:

* :class:`ClipImage`  ``image (B, 3, H, W) in [-1, 1] -> (B, D)``: CLIP resize + normalisation, then the tower.
* :class:`VaeEncoder` ``image (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8)``: the posterior mean, not scaled.
* :class:`VaeDecoder` ``latent (B, 4, h, w) -> (B, 3, 8h, 8w)``: ``clamp(decode(latent / scale_factor), -1, 1)``.
"""
from __future__ import annotations

import torch
from torch import nn

from vfrt.models.clip import CLIPVisionTower, clip_preprocess
from vfrt.models.vae import AutoencoderKL


class ClipImage(nn.Module):
    def __init__(self, clip: CLIPVisionTower):
        super().__init__()
        self.clip = clip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dtype = next(self.clip.parameters()).dtype
        return self.clip(clip_preprocess(image.float(), self.clip.input_resolution).to(dtype)).float()


class VaeEncoder(nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode_mode(image.to(dtype)).float()


class VaeDecoder(nn.Module):
    def __init__(self, vae: AutoencoderKL, scale_factor: float):
        super().__init__()
        self.vae = vae
        self.scale_factor = float(scale_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        z = ((1.0 / self.scale_factor) * latent.float()).to(dtype)
        return torch.clamp(self.vae.decode(z).float(), -1.0, 1.0)
