"""The Zero123 network bundle: UNet, VAE, CLIP image tower and the camera projection.

:class:`Zero123` holds the networks and the conditioning maths of SPEC section 2; it contains
no sampling logic (that lives in ``vfrt.runtime``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from .clip import CLIPVisionTower, clip_preprocess
from .config import CLIPConfig, Zero123Config
from .unet import UNet
from .vae import AutoencoderKL

__all__ = ["Zero123"]


class Zero123(nn.Module):
    """Zero123 / Zero123-XL networks (SPEC section 1).

    Attributes:
        unet: :class:`UNet`, the eps-predictor.
        vae: :class:`AutoencoderKL`.
        clip: :class:`CLIPVisionTower` (OpenAI ViT-L/14 visual tower).
        cc_projection: ``Linear(clip_dim + 4, context_dim)`` on ``cat([CLIP(I), T])``.
        config: the :class:`Zero123Config` (``config.clip`` always set).
    """

    def __init__(self, config: Zero123Config):
        super().__init__()
        clip_cfg = config.clip if config.clip is not None else CLIPConfig()
        self.config = replace(config, clip=clip_cfg)
        self.unet = UNet(config.unet)
        self.vae = AutoencoderKL(config.vae)
        self.clip = CLIPVisionTower(clip_cfg)
        self.cc_projection = nn.Linear(clip_cfg.output_dim + config.pose_dim, config.unet.context_dim)

    @classmethod
    def from_config(cls, config: Optional[Zero123Config] = None) -> "Zero123":
        """A randomly initialised (default torch init) model; ``None`` means :meth:`Zero123Config.default`."""
        return cls(config if config is not None else Zero123Config.default())

    @property
    def clip_dim(self) -> int:
        return self.clip.output_dim

    @property
    def context_dim(self) -> int:
        return self.cc_projection.out_features

    def embed_image(self, img: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (SPEC section 2). ``img (B, 3, H, W)`` in [-1, 1] -> ``(B, clip_dim)``."""
        return self.clip(clip_preprocess(img, self.clip.input_resolution))

    def encode_latent(self, img: torch.Tensor) -> torch.Tensor:
        """``c_concat``: VAE posterior mean, NOT scaled (SPEC section 2). ``(B, 3, H, W)`` -> ``(B, 4, H/8, W/8)``."""
        return self.vae.encode_mode(img)

    def project(self, clip_emb: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """``c_crossattn = cc_projection(cat([clip_emb, T], -1))`` as one token.

        Args:
            clip_emb: ``(B, clip_dim)``.
            T: ``(B, 4)`` = ``[d_polar, sin d_az, cos d_az, d_radius]``.
        Returns:
            ``(B, 1, context_dim)``.
        """
        if clip_emb.ndim != 2 or T.ndim != 2 or clip_emb.shape[0] != T.shape[0]:
            raise ValueError(f"need clip_emb (B, D) and T (B, 4), got {tuple(clip_emb.shape)} and {tuple(T.shape)}")
        if T.shape[1] != self.config.pose_dim:
            raise ValueError(f"T must have {self.config.pose_dim} entries per row, got {T.shape[1]}")
        return self.cc_projection(torch.cat([clip_emb, T.to(clip_emb.dtype)], dim=-1))[:, None]

    def denoise(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """eps prediction. ``x_in (B, 8, h, w) = cat([x_t, c_concat], 1)``, ``t (B,)``, ``context (B, 1, ctx)`` -> ``(B, 4, h, w)``."""
        return self.unet(x_in, t, context)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, 4, h, w)`` diffusion latent -> ``(B, 3, 8h, 8w)`` image, NOT clamped.

        Computes ``vae.decode((1 / scale_factor) * z)``, the original's op order
        (``LatentDiffusion.decode_first_stage``).
        """
        return self.vae.decode((1.0 / self.config.schedule.scale_factor) * z)
