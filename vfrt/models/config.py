"""Typed, frozen configuration of the Zero123 networks (SPEC section 1).

Every field mirrors a constructor argument of the original ldm / CLIP modules, so a
config parsed from an original ldm YAML (``Zero123Config.from_yaml``) builds networks
whose state-dict names and shapes equal the originals'.

Validation happens once, in ``__post_init__``: unsupported options of the original
constructors raise ``ValueError`` naming the option instead of silently building a
different network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

__all__ = [
    "UNetConfig",
    "VAEConfig",
    "CLIPConfig",
    "ScheduleConfig",
    "Zero123Config",
    "AttentionLayout",
]


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of integers, got {value!r}")
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a list of integers, got {value!r}") from exc


def _class_name(target: str) -> str:
    """``'ldm.models.diffusion.ddpm_swap_att.LatentDiffusion' -> 'LatentDiffusion'`` (any module path accepted)."""
    return target.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AttentionLayout:
    """Head layout of one ``SpatialTransformer``: ``heads * dim_head`` is its inner width."""

    heads: int
    dim_head: int


@dataclass(frozen=True)
class UNetConfig:
    """``ldm.modules.diffusionmodules.openaimodel.UNetModel`` arguments (defaults: Zero123, SPEC section 1).

    Only the spatial-transformer (cross-attention) variant used by Zero123 is supported;
    options of the original that would build other networks raise ``ValueError``.
    """

    image_size: int = 32  # unused by the network (as in the original)
    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: Union[int, tuple[int, ...]] = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = 8
    num_head_channels: int = -1
    num_heads_upsample: int = -1  # only used by the (unsupported) AttentionBlock path
    transformer_depth: int = 1
    context_dim: int = 768
    legacy: bool = True
    use_spatial_transformer: bool = True
    use_linear_in_transformer: bool = False
    disable_self_attentions: Optional[tuple[bool, ...]] = None
    num_attention_blocks: Optional[tuple[int, ...]] = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    dims: int = 2
    dropout: float = 0.0
    num_classes: Optional[int] = None
    n_embed: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", _int_tuple(self.channel_mult, "channel_mult"))
        object.__setattr__(
            self, "attention_resolutions", _int_tuple(self.attention_resolutions, "attention_resolutions")
        )
        if not isinstance(self.num_res_blocks, int):
            nrb = _int_tuple(self.num_res_blocks, "num_res_blocks")
            if len(nrb) != len(self.channel_mult):
                raise ValueError(
                    "provide num_res_blocks either as an int (globally constant) or as a list "
                    f"with the same length as channel_mult ({len(self.channel_mult)}), got {list(nrb)}"
                )
            object.__setattr__(self, "num_res_blocks", nrb)
        if self.disable_self_attentions is not None:
            dsa = tuple(bool(v) for v in self.disable_self_attentions)
            if len(dsa) != len(self.channel_mult):
                raise ValueError(
                    f"disable_self_attentions needs one entry per level ({len(self.channel_mult)}), got {list(dsa)}"
                )
            object.__setattr__(self, "disable_self_attentions", dsa)
        if self.num_attention_blocks is not None:
            nab = _int_tuple(self.num_attention_blocks, "num_attention_blocks")
            per_level = self.res_blocks_per_level
            if len(nab) != len(per_level) or any(n > r for n, r in zip(nab, per_level)):
                raise ValueError(
                    f"num_attention_blocks {list(nab)} must have one entry per level, each <= num_res_blocks "
                    f"{list(per_level)}"
                )
            object.__setattr__(self, "num_attention_blocks", nab)
        if not self.use_spatial_transformer:
            raise ValueError(
                "use_spatial_transformer=False (the AttentionBlock UNet) is not supported: Zero123 uses "
                "SpatialTransformer cross-attention"
            )
        if self.use_linear_in_transformer:
            raise ValueError(
                "use_linear_in_transformer=True is not supported: Zero123's SpatialTransformer uses 1x1 "
                "Conv2d proj_in/proj_out"
            )
        if self.dims != 2:
            raise ValueError(f"only dims=2 is supported, got dims={self.dims}")
        if self.num_classes is not None:
            raise ValueError("class-conditional UNets (num_classes) are not supported")
        if self.n_embed is not None:
            raise ValueError("n_embed (codebook-id prediction) is not supported")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if self.model_channels % 32:
            raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm(32)), got {self.model_channels}")
        if self.transformer_depth < 1:
            raise ValueError(f"transformer_depth must be >= 1, got {self.transformer_depth}")
        # Validate every attention layout now rather than at build time.
        for mult in self.channel_mult:
            self.attention_layout(mult * self.model_channels)

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        """``num_res_blocks`` expanded to one entry per ``channel_mult`` level."""
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channel_mult)
        return tuple(self.num_res_blocks)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def attention_layout(self, ch: int) -> AttentionLayout:
        """Heads and head width of a SpatialTransformer on ``ch`` channels.

        Reproduces ``UNetModel.__init__`` exactly: with ``num_head_channels == -1`` the head
        count is fixed (``num_heads``), otherwise it is ``ch // num_head_channels``; with
        ``legacy`` the head width is then recomputed as ``ch // heads`` (spatial transformer).
        """
        if self.num_head_channels == -1:
            heads = self.num_heads
            dim_head = ch // heads
        else:
            heads = ch // self.num_head_channels
            dim_head = self.num_head_channels
        if self.legacy:
            dim_head = ch // heads
        if heads < 1 or dim_head < 1:
            raise ValueError(
                f"attention on {ch} channels gives heads={heads}, dim_head={dim_head} "
                f"(num_heads={self.num_heads}, num_head_channels={self.num_head_channels})"
            )
        return AttentionLayout(heads=heads, dim_head=dim_head)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "UNetConfig":
        """Build from an ldm ``unet_config.params`` mapping; training-only keys are ignored."""
        # gradient checkpointing / fp16 flags do not change the network; the attention order
        # only matters for the (unsupported) AttentionBlock path.
        ignored = {"use_checkpoint", "use_fp16", "use_new_attention_order"}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(k for k in params if k not in known and k not in ignored)
        if unknown:
            raise ValueError(f"unsupported UNet options in config: {unknown}")
        return cls(**{k: v for k, v in params.items() if k in known})


@dataclass(frozen=True)
class VAEConfig:
    """``ldm.models.autoencoder.AutoencoderKL`` (``ddconfig`` + ``embed_dim``); defaults: kl-f8."""

    embed_dim: int = 4
    double_z: bool = True
    z_channels: int = 4
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", _int_tuple(self.ch_mult, "ch_mult"))
        object.__setattr__(self, "attn_resolutions", _int_tuple(self.attn_resolutions, "attn_resolutions"))
        if not self.double_z:
            raise ValueError("double_z=False is not supported (AutoencoderKL needs mean and log-variance)")
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm(32)), got {self.ch}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "VAEConfig":
        """Build from an ldm ``first_stage_config.params`` mapping (``ddconfig`` + ``embed_dim``)."""
        dd = dict(params.get("ddconfig") or {})
        if "embed_dim" not in params:
            raise ValueError("first_stage_config.params.embed_dim is missing")
        attn_type = dd.pop("attn_type", "vanilla")
        if dd.pop("use_linear_attn", False) or attn_type != "vanilla":
            raise ValueError(f"only vanilla VAE attention is supported, got attn_type={attn_type!r}")
        if dd.pop("give_pre_end", False) or dd.pop("tanh_out", False):
            raise ValueError("give_pre_end / tanh_out VAE decoders are not supported")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(k for k in dd if k not in known)
        if unknown:
            raise ValueError(f"unsupported VAE ddconfig options: {unknown}")
        return cls(embed_dim=int(params["embed_dim"]), **dd)


@dataclass(frozen=True)
class CLIPConfig:
    """OpenAI CLIP ``VisionTransformer`` (defaults: ViT-L/14 at 224 px)."""

    image_resolution: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    output_dim: int = 768

    def __post_init__(self) -> None:
        if self.image_resolution % self.patch_size:
            raise ValueError(
                f"image_resolution {self.image_resolution} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.patch_size


@dataclass(frozen=True)
class ScheduleConfig:
    """DDPM noise schedule and latent scale (SPEC section 3); only ``linear`` betas are supported."""

    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    scale_factor: float = 0.18215
    beta_schedule: Literal["linear"] = "linear"

    def __post_init__(self) -> None:
        if self.beta_schedule != "linear":
            raise ValueError(f"only the 'linear' beta schedule is supported, got {self.beta_schedule!r}")
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if not (0 < self.linear_start <= self.linear_end < 1):
            raise ValueError(f"need 0 < linear_start <= linear_end < 1, got {self.linear_start}, {self.linear_end}")
        if not (self.scale_factor > 0 and math.isfinite(self.scale_factor)):
            raise ValueError(f"scale_factor must be positive, got {self.scale_factor}")

    def betas(self):
        """``(T,)`` float64 torch tensor: ``linspace(sqrt(start), sqrt(end), T) ** 2`` (ldm ``make_beta_schedule``)."""
        import torch

        return torch.linspace(self.linear_start**0.5, self.linear_end**0.5, self.timesteps, dtype=torch.float64) ** 2

    def alphas_cumprod(self):
        """``(T,)`` float64 torch tensor ``cumprod(1 - betas)`` (the original stores it as float32)."""
        import torch

        return torch.cumprod(1.0 - self.betas(), dim=0)


@dataclass(frozen=True)
class Zero123Config:
    """Everything needed to build a :class:`vfrt.models.Zero123`.

    ``clip`` may be ``None``: the CLIP tower is then inferred from the checkpoint's shapes
    (the ldm YAML does not describe it) or, for :meth:`Zero123.from_config`, ViT-L/14.
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: Optional[CLIPConfig] = field(default_factory=CLIPConfig)
    use_ema: bool = True
    pose_dim: int = 4  # T = [d_polar, sin d_az, cos d_az, d_radius] (SPEC section 2)

    def __post_init__(self) -> None:
        if self.unet.in_channels != 2 * self.vae.embed_dim:
            raise ValueError(
                f"UNet in_channels ({self.unet.in_channels}) must be 2 x VAE embed_dim ({self.vae.embed_dim}): "
                "noisy latent and conditioning latent are concatenated"
            )
        if self.unet.out_channels != self.vae.embed_dim:
            raise ValueError(
                f"UNet out_channels ({self.unet.out_channels}) must equal VAE embed_dim ({self.vae.embed_dim})"
            )

    @classmethod
    def default(cls) -> "Zero123Config":
        """Zero123 / Zero123-XL at 256x256 (SPEC section 1)."""
        return cls()

    def with_clip(self, clip: Optional[CLIPConfig]) -> "Zero123Config":
        return replace(self, clip=clip)

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "Zero123Config":
        """Parse an original ldm YAML (e.g. ``sd-objaverse-finetune-c_concat-256.yaml``) from a file path.

        Raises ValueError (naming the file, and the line for YAML syntax errors) for anything unusable."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the config {path}: {exc}") from exc
        try:
            return cls.from_yaml_text(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_yaml_text(cls, text: str) -> "Zero123Config":
        """Parse the text of an original ldm YAML. ``clip`` is left ``None`` (inferred from weights)."""
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("model"), Mapping):
            raise ValueError("not an ldm config: no top-level 'model' mapping")
        model = doc["model"]
        target = str(model.get("target", ""))
        if _class_name(target) != "LatentDiffusion":
            raise ValueError(f"model.target must be a LatentDiffusion class, got {target!r}")
        p = model.get("params") or {}
        for key in ("unet_config", "first_stage_config"):
            if not isinstance(p.get(key), Mapping):
                raise ValueError(f"model.params.{key} is missing")
        unet_target = str(p["unet_config"].get("target", ""))
        if _class_name(unet_target) != "UNetModel":
            raise ValueError(f"unet_config.target must be an openaimodel UNetModel, got {unet_target!r}")
        vae_target = str(p["first_stage_config"].get("target", ""))
        if _class_name(vae_target) != "AutoencoderKL":
            raise ValueError(f"first_stage_config.target must be AutoencoderKL, got {vae_target!r}")
        cond_key = p.get("conditioning_key", "hybrid")
        if cond_key != "hybrid":
            raise ValueError(f"Zero123 uses conditioning_key 'hybrid', got {cond_key!r}")
        parameterization = p.get("parameterization", "eps")
        if parameterization != "eps":
            raise ValueError(f"only eps-prediction is supported, got parameterization={parameterization!r}")
        if p.get("given_betas") is not None:
            raise ValueError("given_betas is not supported; use linear_start / linear_end")
        if p.get("scale_by_std", False):
            raise ValueError(
                "scale_by_std=True stores a learned scale_factor in the checkpoint; not supported"
            )
        schedule = ScheduleConfig(
            timesteps=int(p.get("timesteps", 1000)),
            linear_start=float(p.get("linear_start", 1e-4)),
            linear_end=float(p.get("linear_end", 2e-2)),
            scale_factor=float(p.get("scale_factor", 1.0)),
            beta_schedule=p.get("beta_schedule", "linear"),
        )
        return cls(
            unet=UNetConfig.from_params(p["unet_config"].get("params") or {}),
            vae=VAEConfig.from_params(p["first_stage_config"].get("params") or {}),
            schedule=schedule,
            clip=None,
            use_ema=bool(p.get("use_ema", True)),
        )
