"""The Zero123 denoiser: ldm ``openaimodel.UNetModel`` with ``SpatialTransformer`` cross-attention.

A from-scratch PyTorch port that is numerically identical in fp32 to the original
(``ldm/modules/diffusionmodules/openaimodel.py``, ``util.py`` and ``ldm/modules/attention.py``)
and has the same state-dict names, so an original checkpoint loads with a prefix strip.

Op order kept from the original where it changes rounding:

* timestep embedding: ``exp(-ln(max_period) * arange(half) / half)``, **cos first, then sin**;
* ResBlock / UNet-output norms: ``GroupNorm32`` (32 groups, eps 1e-5, computed in fp32);
  the ``SpatialTransformer`` input norm is a plain ``GroupNorm(32, eps=1e-6)``;
* attention: ``softmax((q @ k^T) * dim_head ** -0.5) @ v`` per head; GEGLU feed-forward.

Module names (``to_q``, ``to_k``, ``to_v``, ``to_out``, ``attn1``, ``attn2``, ``ff`` ...) are
the original ones so fast paths can reach into the structure.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig

__all__ = [
    "UNet",
    "timestep_embedding",
    "GroupNorm32",
    "ResBlock",
    "Downsample",
    "Upsample",
    "CrossAttention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "TimestepEmbedSequential",
]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding, **cos first, then sin** (ldm ``util.timestep_embedding``).

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = exp(-ln(max_period) * i / half)``, ``half = dim // 2``; odd ``dim`` gets a zero column.

    The frequency table is built on ``timesteps.device`` (no host-to-device copy), so the
    function can be captured in a CUDA graph.

    Args:
        timesteps: ``(B,)`` int64 or float timesteps (may be fractional).
        dim: embedding width.
    Returns:
        ``(B, dim)`` float32.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (B,), got shape {tuple(timesteps.shape)}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """``GroupNorm`` evaluated in (at least) float32 and cast back (ldm ``normalization()``: 32 groups, eps 1e-5).

    fp16/bf16 inputs and weights are upcast to fp32; fp32 is the original computation; fp64 stays fp64.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = torch.promote_types(x.dtype, torch.float32)
        return F.group_norm(x.to(ct), self.num_groups, self.weight.to(ct), self.bias.to(ct), self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then an optional 3x3 ``conv``. ``(B, C, h, w) -> (B, C', 2h, 2w)``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 conv ``op`` (or 2x2 average pool). ``(B, C, h, w) -> (B, C', h/2, w/2)``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (ldm ``openaimodel.ResBlock``).

    ``h = in_layers(x)``; ``h = h + emb_layers(emb)[..., None, None]``; ``h = out_layers(h)``;
    returns ``skip_connection(x) + h``. ``(B, C, h, w), (B, E) -> (B, C_out, h', w')``.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False)
            self.x_upd = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_rest(x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = in_conv(h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
            h = out_rest(h)
        else:
            h = h + emb_out
            h = self.out_layers(h)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention of ldm ``attention.CrossAttention``.

    ``out = to_out(concat_h softmax((q_h k_h^T) * dim_head**-0.5) v_h)`` with
    ``q = to_q(x)``, ``k = to_k(ctx)``, ``v = to_v(ctx)`` and ``ctx = x`` when no context is given.

    Shapes: ``x (B, N, query_dim)``, ``context (B, L, context_dim)`` -> ``(B, N, query_dim)``.
    With a single context token (``L == 1``) the softmax is exactly 1 and the output equals
    ``to_out(to_v(context))`` for every query (SPEC section 6).
    """

    def __init__(
        self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # 'b n (h d) -> (b h) n d'
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3).reshape(b * self.heads, n, self.dim_head)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(context)
        b, n, _ = q.shape
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        sim = torch.bmm(q, k.transpose(1, 2)) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.bmm(attn, v)
        # '(b h) n d -> b n (h d)'
        out = out.reshape(b, self.heads, n, self.dim_head).permute(0, 2, 1, 3).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class GEGLU(nn.Module):
    """``x, gate = proj(x).chunk(2, -1)``; returns ``x * gelu(gate)``. ``(..., dim_in) -> (..., dim_out)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Gated feed-forward ``net = [GEGLU(dim, 4 dim), Dropout, Linear(4 dim, dim)]``. ``(B, N, dim) -> (B, N, dim)``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention ``attn1``, cross-attention ``attn2``, GEGLU ``ff``. ``(B, N, dim) -> (B, N, dim)``.

    With ``disable_self_attn`` the first attention also attends to the context.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: Optional[int] = None,
        disable_self_attn: bool = False,
    ):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(
            dim, context_dim=context_dim if disable_self_attn else None, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer(nn.Module):
    """Transformer on image tokens: GroupNorm(eps 1e-6) -> 1x1 ``proj_in`` -> blocks -> 1x1 ``proj_out`` + input.

    ``x (B, C, h, w)``, ``context (B, L, context_dim)`` -> ``(B, C, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: Optional[int] = None,
        disable_self_attn: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim, disable_self_attn=disable_self_attn
                )
                for _ in range(depth)
            ]
        )
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        x = self.proj_in(x)
        inner = x.shape[1]
        x = x.reshape(b, inner, h * w).permute(0, 2, 1).contiguous()  # 'b c h w -> b (h w) c'
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = x.permute(0, 2, 1).reshape(b, inner, h, w).contiguous()  # 'b (h w) c -> b c h w'
        x = self.proj_out(x)
        return x + x_in


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container passing ``emb`` to ResBlocks and ``context`` to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """ldm ``openaimodel.UNetModel`` (spatial-transformer variant), built from a :class:`UNetConfig`.

    Zero123 (SPEC section 1): ``in 8 = [noisy latent (4), conditioning latent (4)]``, out 4
    (eps), model_channels 320, channel_mult (1,2,4,4), 2 res blocks, attention at 4,2,1,
    8 heads, context_dim 768.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        ted = cfg.time_embed_dim
        per_level = cfg.res_blocks_per_level
        self.model_channels = mc
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))

        def make_attention(ch: int, level: Optional[int]) -> SpatialTransformer:
            layout = cfg.attention_layout(ch)
            disabled_sa = (
                cfg.disable_self_attentions[level]
                if (level is not None and cfg.disable_self_attentions is not None)
                else False
            )
            return SpatialTransformer(
                ch,
                layout.heads,
                layout.dim_head,
                depth=cfg.transformer_depth,  # (the original passes no dropout to transformers)
                context_dim=cfg.context_dim,
                disable_self_attn=disabled_sa,
            )

        def make_res(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(
                ch_in, ted, cfg.dropout, out_channels=ch_out, use_scale_shift_norm=cfg.use_scale_shift_norm, **kw
            )

        def wants_attention(ds: int, level: int, index: int) -> bool:
            if ds not in cfg.attention_resolutions:
                return False
            return cfg.num_attention_blocks is None or index < cfg.num_attention_blocks[level]

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        input_block_chans = [mc]
        ch = mc
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for nr in range(per_level[level]):
                layers: list[nn.Module] = [make_res(ch, mult * mc)]
                ch = mult * mc
                if wants_attention(ds, level, nr):
                    layers.append(make_attention(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = make_res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2

        # The middle transformer always has self-attention (disable_self_attn is not passed).
        self.middle_block = TimestepEmbedSequential(make_res(ch, ch), make_attention(ch, None), make_res(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(per_level[level] + 1):
                ich = input_block_chans.pop()
                layers = [make_res(ch + ich, mc * mult)]
                ch = mc * mult
                if wants_attention(ds, level, i):
                    layers.append(make_attention(ch, level))
                if level and i == per_level[level]:
                    layers.append(make_res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: ``(B, in_channels, h, w)``; for Zero123 ``cat([x_t, c_concat], 1)``, h and w
                multiples of ``downsample_factor``.
            timesteps: ``(B,)`` int64 or float.
            context: ``(B, L, context_dim)`` cross-attention tokens (Zero123: ``L == 1``).
        Returns:
            ``(B, out_channels, h, w)`` in ``x.dtype``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, h, w), got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be a multiple of {f}")
        hs = []
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb, context)
        return self.out(h)
