"""Zero123's image encoder: the OpenAI CLIP ``VisionTransformer`` (ViT-L/14), ported from scratch.

State-dict names equal ``clip.model.VisionTransformer``'s (``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``), so the
``visual.*`` part of a checkpoint loads after a prefix strip.

Numerics follow the original: LayerNorm computed in fp32, QuickGELU ``x * sigmoid(1.702 x)``,
sequence-first (``LND``) transformer, and attention with the op order of
``torch.nn.MultiheadAttention`` (packed in-projection, scaled-dot-product attention, out-projection).

:func:`clip_preprocess` reproduces ``FrozenCLIPImageEmbedder.preprocess`` (SPEC section 2).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig

__all__ = ["CLIPVisionTower", "clip_preprocess", "CLIP_MEAN", "CLIP_STD", "LayerNorm", "QuickGELU"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(img: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """CLIP input from an image in [-1, 1] (SPEC section 2, ``FrozenCLIPImageEmbedder.preprocess``).

    Bicubic resize to ``resolution`` with ``align_corners=True`` and no antialiasing (what
    ``kornia.geometry.resize(..., 'bicubic', align_corners=True, antialias=False)`` does), then
    ``(x + 1) / 2``, then ``(x - mean) / std`` per channel with the CLIP statistics.

    Args:
        img: ``(B, 3, H, W)`` float in [-1, 1].
    Returns:
        ``(B, 3, resolution, resolution)`` in ``img.dtype``.
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"img must be (B, 3, H, W), got {tuple(img.shape)}")
    if tuple(img.shape[-2:]) != (resolution, resolution):  # kornia returns the input unchanged otherwise
        img = F.interpolate(img, size=(resolution, resolution), mode="bicubic", align_corners=True)
    x = (img + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` evaluated in (at least) fp32 and cast back (CLIP's fp16-safe LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = torch.promote_types(x.dtype, torch.float32)
        out = F.layer_norm(x.to(ct), self.normalized_shape, self.weight.to(ct), self.bias.to(ct), self.eps)
        return out.type(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters and op order (no mask, no dropout).

    Parameters: ``in_proj_weight (3E, E)``, ``in_proj_bias (3E,)``, ``out_proj: Linear(E, E)``.
    ``x (L, B, E)`` sequence-first -> ``(L, B, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # nn.MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, B, E = x.shape
        H, D = self.num_heads, self.head_dim
        proj = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        proj = proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        q, k, v = proj[0], proj[1], proj[2]
        q = q.view(L, B * H, D).transpose(0, 1).view(B, H, L, D)
        k = k.view(L, B * H, D).transpose(0, 1).view(B, H, L, D)
        v = v.view(L, B * H, D).transpose(0, 1).view(B, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(2, 0, 1, 3).reshape(L * B, E)
        out = self.out_proj(out)
        return out.view(L, B, E)


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` with ``mlp = c_fc, QuickGELU, c_proj``. ``(L, B, E)``."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = SelfAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d_model, d_model * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(d_model * 4, d_model))
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class CLIPVisionTower(nn.Module):
    """CLIP ``VisionTransformer``: ``pixels (B, 3, R, R)`` (already :func:`clip_preprocess`-ed) -> ``(B, output_dim)``.

    ``forward`` equals ``CLIP.encode_image``: patch conv, class token, positional embedding,
    ``ln_pre``, transformer, ``ln_post`` of the class token, ``@ proj``.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        width = cfg.width
        self.input_resolution = cfg.image_resolution
        self.output_dim = cfg.output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.output_dim))

    @staticmethod
    def config_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "") -> CLIPConfig:
        """Infer a :class:`CLIPConfig` from ``{prefix}conv1.weight`` etc. the way ``clip.build_model`` does.

        ``width = conv1.weight.shape[0]``, ``patch = conv1.weight.shape[-1]``, ``layers`` = number
        of ``.attn.in_proj_weight`` keys, ``grid = round(sqrt(positional_embedding.shape[0] - 1))``,
        ``resolution = patch * grid``, ``heads = width // 64``, ``output_dim = proj.shape[1]``.
        """
        needed = ["conv1.weight", "positional_embedding", "proj"]
        missing = [prefix + k for k in needed if prefix + k not in sd]
        if missing:
            raise KeyError(f"cannot infer the CLIP vision tower: missing {missing}")
        conv = sd[prefix + "conv1.weight"]
        width = int(conv.shape[0])
        patch = int(conv.shape[-1])
        layers = len(
            [k for k in sd if k.startswith(prefix + "transformer.resblocks.") and k.endswith(".attn.in_proj_weight")]
        )
        n_pos = int(sd[prefix + "positional_embedding"].shape[0])
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise ValueError(f"positional_embedding has {n_pos} rows, not grid**2 + 1")
        heads = max(width // 64, 1)
        return CLIPConfig(
            image_resolution=patch * grid,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=heads,
            output_dim=int(sd[prefix + "proj"].shape[1]),
        )

    @classmethod
    def from_state_dict_shapes(cls, sd: Mapping[str, torch.Tensor], prefix: str = "") -> "CLIPVisionTower":
        """Build an (uninitialised-weights) tower whose shapes match ``sd`` (see :meth:`config_from_state_dict`)."""
        return cls(cls.config_from_state_dict(sd, prefix))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels (B, 3, R, R)`` normalised CLIP input -> ``(B, output_dim)`` image embedding."""
        R = self.input_resolution
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (R, R):
            raise ValueError(f"pixels must be (B, 3, {R}, {R}), got {tuple(pixels.shape)}")
        x = pixels.type(self.conv1.weight.dtype)
        x = self.conv1(x)  # (B, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
        cls_tok = self.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls_tok, x], dim=1)  # (B, grid**2 + 1, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj
