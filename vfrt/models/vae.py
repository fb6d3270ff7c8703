"""The Zero123 first stage: ldm ``AutoencoderKL`` (kl-f8), ported from scratch.

Numerically identical in fp32 to ``ldm/modules/diffusionmodules/model.py`` (Encoder,
Decoder, ResnetBlock, AttnBlock, Downsample with asymmetric padding) and
``ldm/models/autoencoder.py``; state-dict names are the original ones
(``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``).

Norms are ``GroupNorm(32, eps=1e-6)``; the nonlinearity is ``x * sigmoid(x)`` written out as
in the original (not ``F.silu``, whose rounding can differ).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig

__all__ = ["AutoencoderKL", "Encoder", "Decoder", "ResnetBlock", "AttnBlock"]


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish, ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


def Normalize(in_channels: int) -> nn.GroupNorm:  # noqa: N802 - the original's name
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest 2x, then optional 3x3 ``conv``. ``(B, C, h, w) -> (B, C, 2h, 2w)``."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.with_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """Pad (0,1,0,1) then stride-2 3x3 ``conv`` (or 2x2 average pool). ``(B, C, h, w) -> (B, C, h/2, w/2)``."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
            return self.conv(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """``x + conv2(drop(swish(norm2(conv1(swish(norm1(x)))))))`` with a 1x1 ``nin_shortcut`` when channels change.

    ``(B, C_in, h, w) -> (B, C_out, h, w)``. (The VAE has no timestep embedding.)
    """

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = nonlinearity(h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = nonlinearity(h)
        h = self.dropout(h)
        h = self.conv2(h)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv ``q, k, v, proj_out``. ``(B, C, h, w) -> (B, C, h, w)``.

    ``w = softmax((q^T k) * C**-0.5)`` over keys; ``out = x + proj_out(v w^T)``.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q = self.q(h_)
        k = self.k(h_)
        v = self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)  # b, hw, c
        k = k.reshape(b, c, h * w)  # b, c, hw
        w_ = torch.bmm(q, k)  # b, hw(q), hw(k)
        w_ = w_ * (int(c) ** (-0.5))
        w_ = F.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        w_ = w_.permute(0, 2, 1)  # b, hw(k), hw(q)
        h_ = torch.bmm(v, w_)  # b, c, hw(q)
        h_ = h_.reshape(b, c, h, w)
        h_ = self.proj_out(h_)
        return x + h_


class Encoder(nn.Module):
    """``(B, in_channels, H, W) -> (B, 2 z_channels, H/f, W/f)`` moments (``f = 2**(len(ch_mult)-1)``)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, ch_mult = cfg.ch, cfg.ch_mult
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = cfg.resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, cfg.resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level in range(self.num_resolutions):
            down = self.down[i_level]
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_1(h)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        h = self.norm_out(h)
        h = nonlinearity(h)
        return self.conv_out(h)


class Decoder(nn.Module):
    """``(B, z_channels, h, w) -> (B, out_ch, h*f, w*f)``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, ch_mult = cfg.ch, cfg.ch_mult
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, cfg.resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # prepend: self.up[i_level] is level i_level
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_1(h)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        h = self.norm_out(h)
        h = nonlinearity(h)
        return self.conv_out(h)


class AutoencoderKL(nn.Module):
    """KL autoencoder: ``encoder``, ``quant_conv`` (1x1, 2z -> 2 embed_dim), ``post_quant_conv``, ``decoder``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def encode_moments(self, img: torch.Tensor) -> torch.Tensor:
        """``img (B, 3, H, W)`` in [-1, 1] -> ``(B, 2 embed_dim, H/8, W/8)`` = ``[mean, logvar]``."""
        f = self.downsample_factor
        if img.ndim != 4 or img.shape[1] != self.config.in_channels:
            raise ValueError(f"img must be (B, {self.config.in_channels}, H, W), got {tuple(img.shape)}")
        if img.shape[-1] % f or img.shape[-2] % f:
            raise ValueError(f"image size {tuple(img.shape[-2:])} must be a multiple of {f}")
        return self.quant_conv(self.encoder(img))

    def encode_mode(self, img: torch.Tensor) -> torch.Tensor:
        """Posterior mean (``DiagonalGaussianDistribution.mode()``), NOT scaled (SPEC section 2).

        ``img (B, 3, H, W)`` in [-1, 1] -> ``(B, embed_dim, H/8, W/8)``.
        """
        mean, _logvar = torch.chunk(self.encode_moments(img), 2, dim=1)
        return mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, embed_dim, h, w)`` (already divided by the scale factor) -> ``(B, 3, 8h, 8w)``; no clamp."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(f"z must be (B, {self.config.embed_dim}, h, w), got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean: ``decode(encode_mode(img))``."""
        return self.decode(self.encode_mode(img))
