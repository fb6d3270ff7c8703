"""Seeded tiny Zero123 checkpoints in the original formats, for tests and demos (STYLE pattern 7).

:func:`write_tiny_checkpoint` writes a Lightning-style ``.ckpt``, a ``.safetensors`` with the
same flat state dict, and the matching original-style ldm YAML. Every parameter is
initialised non-trivially (the original zero-initialises output convolutions, which would
make eps identically 0), EMA weights differ from the raw UNet weights, and the file carries
the leftovers real checkpoints carry (schedule buffers, CLIP text-tower scraps, EMA
metadata, optimizer state), so loaders are exercised on realistic input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .checkpoint import EMA_PREFIX, to_original_state_dict
from .config import CLIPConfig, ScheduleConfig, UNetConfig, VAEConfig, Zero123Config
from .zero123 import Zero123

__all__ = ["TinyCheckpoint", "tiny_config", "write_tiny_checkpoint", "init_nontrivial_", "schedule_buffers"]


@dataclass(frozen=True)
class TinyCheckpoint:
    """Paths written by :func:`write_tiny_checkpoint` and the config they describe."""

    ckpt: Path
    safetensors: Path
    yaml: Path
    config: Zero123Config


def tiny_config(image_size: int = 64) -> Zero123Config:
    """A Zero123 small enough for CPU tests that still exercises every kind of layer.

    UNet: 32 channels, ``channel_mult (1, 2)``, 1 res block, attention (self + cross) at both
    levels with 2 heads, context 32. VAE: ``ch 32``, ``ch_mult (1, 2, 2, 2)`` (8x). CLIP: 32 px,
    patch 8, width 128 (2 heads), 2 layers, output 32. ``image_size`` must be a multiple of 16.
    """
    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (8x VAE, 2x UNet), got {image_size}")
    return Zero123Config(
        unet=UNetConfig(
            image_size=image_size // 8,
            in_channels=8,
            out_channels=4,
            model_channels=32,
            attention_resolutions=(2, 1),
            num_res_blocks=1,
            channel_mult=(1, 2),
            num_heads=2,
            transformer_depth=1,
            context_dim=32,
            legacy=False,
        ),
        vae=VAEConfig(
            embed_dim=4,
            z_channels=4,
            resolution=image_size,
            ch=32,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(),
        ),
        schedule=ScheduleConfig(),
        clip=CLIPConfig(image_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=32),
    )


@torch.no_grad()
def init_nontrivial_(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded init that keeps activations O(1) and leaves no parameter at 0 or 1.

    Weights of convs / linears: ``N(0, 1 / fan_in)``; norm scales ``1 + 0.1 N``; biases ``0.1 N``;
    embeddings / projections ``N(0, 1 / width)``-like scales.
    """
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and leaf == "weight":  # GroupNorm / LayerNorm scale
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
        elif p.ndim == 1:  # biases, class embedding
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        else:
            fan_in = p[0].numel() if leaf != "proj" else p.shape[0]
            if leaf == "positional_embedding":
                fan_in = p.shape[1]
            p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)


def schedule_buffers(schedule: ScheduleConfig) -> dict[str, torch.Tensor]:
    """The float32 buffers ldm ``DDPM.register_schedule`` stores (eps parameterisation, v_posterior 0)."""
    betas = schedule.betas()
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: v.float() for k, v in bufs.items()}


def _yaml_text(cfg: Zero123Config) -> str:
    u, v, s = cfg.unet, cfg.vae, cfg.schedule

    def lst(xs) -> str:
        return "[ " + ", ".join(str(x) for x in xs) + " ]"

    return f"""model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: {s.linear_start}
    linear_end: {s.linear_end}
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: {s.timesteps}
    first_stage_key: "image_target"
    cond_stage_key: "image_cond"
    image_size: {u.image_size}
    channels: {v.embed_dim}
    cond_stage_trainable: false
    conditioning_key: hybrid
    monitor: val/loss_simple_ema
    scale_factor: {s.scale_factor}

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: {u.image_size} # unused
        in_channels: {u.in_channels}
        out_channels: {u.out_channels}
        model_channels: {u.model_channels}
        attention_resolutions: {lst(u.attention_resolutions)}
        num_res_blocks: {u.num_res_blocks}
        channel_mult: {lst(u.channel_mult)}
        num_heads: {u.num_heads}
        use_spatial_transformer: True
        transformer_depth: {u.transformer_depth}
        context_dim: {u.context_dim}
        use_checkpoint: True
        legacy: {u.legacy}

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {v.embed_dim}
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: {v.z_channels}
          resolution: {v.resolution}
          in_channels: {v.in_channels}
          out_ch: {v.out_ch}
          ch: {v.ch}
          ch_mult: {lst(v.ch_mult)}
          num_res_blocks: {v.num_res_blocks}
          attn_resolutions: {lst(v.attn_resolutions)}
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPImageEmbedder
"""


def write_tiny_checkpoint(
    out_dir: Union[str, Path], *, seed: int = 0, image_size: int = 64, ema: bool = True
) -> TinyCheckpoint:
    """Write ``tiny.ckpt``, ``tiny.safetensors`` and ``tiny.yaml`` for :func:`tiny_config` into ``out_dir``.

    The ``.ckpt`` is ``{"state_dict": sd, "global_step": 0, "epoch": 0, "optimizer_states": [], ...}``
    with the original prefixes; ``sd`` has raw UNet weights plus (``ema=True``) different
    ``model_ema.*`` weights with ``decay`` / ``num_updates``, the schedule buffers and CLIP
    text-tower leftovers. Both files load with ``torch.load(weights_only=True)`` / safetensors.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(image_size)
    gen = torch.Generator().manual_seed(seed)
    model = Zero123(cfg)
    init_nontrivial_(model, gen)

    ema_weights = None
    if ema:
        ema_weights = {}
        for name, p in model.unet.named_parameters():
            scale = p.detach().std().item() if p.numel() > 1 else 1.0
            ema_weights[name] = p.detach() + 0.05 * scale * torch.randn(p.shape, generator=gen)
    sd = to_original_state_dict(model, ema_weights)
    if ema:
        sd[EMA_PREFIX + "decay"] = torch.tensor(0.9999, dtype=torch.float32)
        sd[EMA_PREFIX + "num_updates"] = torch.tensor(1234, dtype=torch.int32)
    sd.update(schedule_buffers(cfg.schedule))
    text_width = 16
    clip_root = "cond_stage_model.model."
    sd.update(
        {
            clip_root + "positional_embedding": 0.01 * torch.randn(8, text_width, generator=gen),
            clip_root + "token_embedding.weight": 0.02 * torch.randn(10, text_width, generator=gen),
            clip_root + "ln_final.weight": torch.ones(text_width),
            clip_root + "ln_final.bias": torch.zeros(text_width),
            clip_root + "text_projection": torch.randn(text_width, cfg.clip.output_dim, generator=gen),
            clip_root + "logit_scale": torch.tensor(4.6052),
        }
    )
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}

    paths = TinyCheckpoint(
        ckpt=out / "tiny.ckpt", safetensors=out / "tiny.safetensors", yaml=out / "tiny.yaml", config=cfg
    )
    torch.save(
        {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "1.8.3.post0",
            "state_dict": sd,
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        paths.ckpt,
    )
    save_file(sd, str(paths.safetensors), metadata={"format": "pt", "source": "vfrt.models.testing"})
    paths.yaml.write_text(_yaml_text(cfg))
    return paths

