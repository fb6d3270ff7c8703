"""Loading Zero123 weights saved in the diffusers folder format (SPEC section 7).

A diffusers Zero123 folder (``kxic/zero123-xl``, ``bennyguo/zero123-xl-diffusers``,
``ashawkey/zero123-xl-diffusers`` ...) looks like::

    model_index.json
    unet/config.json            + diffusion_pytorch_model.{safetensors,bin}   (UNet2DConditionModel)
    vae/config.json             + diffusion_pytorch_model.{safetensors,bin}   (AutoencoderKL)
    image_encoder/config.json   + model.{safetensors,bin}     (transformers CLIPVisionModelWithProjection)
    clip_camera_projection/     + diffusion_pytorch_model.*   keys proj.weight / proj.bias (threestudio layout)
      or cc_projection/         + diffusion_pytorch_model.*   keys projection.weight / .bias (community pipeline)
    scheduler/scheduler_config.json
    feature_extractor/          (not used: vfrt does its own CLIP preprocessing)

:func:`load_zero123_diffusers` builds the :class:`Zero123Config` from the ``config.json`` files,
renames every tensor to vfrt's (= the original ldm / OpenAI CLIP) names with an explicit,
config-driven name map, and loads strictly: every missing, unused or mis-shaped tensor is
reported in one :class:`CheckpointError`.

No EMA: a diffusers folder holds a single set of UNet weights (the converted releases hold
the EMA weights of the original checkpoint), so ``use_ema`` has nothing to choose from.

This module imports neither ``diffusers`` nor ``transformers``; only ``safetensors``/``torch``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from .state_dict import PREFIXES, load_state_dict_file, mismatch_report
from .config import CLIPConfig, ScheduleConfig, UNetConfig, VAEConfig, Zero123Config
from .errors import CheckpointError
from .zero123 import Zero123

__all__ = [
    "load_zero123_diffusers",
    "read_diffusers_folder",
    "diffusers_folder_to_original",
    "is_diffusers_folder",
    "config_from_diffusers_folder",
    "unet_config_from_diffusers",
    "vae_config_from_diffusers",
    "clip_config_from_transformers",
    "schedule_from_diffusers",
    "conversion_rules",
    "convert_diffusers_state_dicts",
]

log = logging.getLogger(__name__)

# Sub-folders holding the camera projection, in order of preference, and the key prefix of its Linear.
_PROJECTION_FOLDERS: dict[str, str] = {"clip_camera_projection": "proj.", "cc_projection": "projection."}
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Non-persistent buffers that older library versions saved; they carry no weights.
_IGNORED_KEYS = {"image_encoder": frozenset({"vision_model.embeddings.position_ids"})}


# --------------------------------------------------------------------------- small helpers
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _per_block(value: Any, n: int, name: str, where: str) -> list:
    """diffusers allows ``int`` or one entry per block for several options."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise CheckpointError(f"{where}: {name} has {len(value)} entries, expected {n} (one per block)")
        return list(value)
    return [value] * n


def _flat_ints(value: Any) -> list[int]:
    """``3`` / ``[1, 2]`` / ``[[1, 1], [2]]`` -> flat list of ints."""
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _flat_ints(v)]
    return [int(value)]


def _require(cfg: Mapping[str, Any], where: str, checks: Mapping[str, Any]) -> None:
    """Options that would build a different network than vfrt's: ``name -> the only accepted value(s)``.

    A missing key counts as the diffusers default, which is always the first accepted value.
    """
    bad = []
    for key, accepted in checks.items():
        accepted = accepted if isinstance(accepted, tuple) else (accepted,)
        value = cfg.get(key, accepted[0])
        if isinstance(value, list):
            value = tuple(value)
        if value not in accepted and not (isinstance(value, tuple) and all(v in accepted for v in value)):
            bad.append(f"{key}={value!r} (supported: {', '.join(repr(a) for a in accepted)})")
    if bad:
        raise CheckpointError(f"{where}: unsupported options for vfrt's networks: " + "; ".join(bad))


# --------------------------------------------------------------------------- configs
_UNET_FIXED = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": (1e-5,),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": (1.0, 1),
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "downsample_padding": 1,
    "mid_block_scale_factor": (1, 1.0),
    "attention_type": "default",
    "cross_attention_norm": None,
    "mid_block_only_cross_attention": (None, False),
    "class_embeddings_concat": False,
}


def unet_config_from_diffusers(
    cfg: Mapping[str, Any], where: str = "unet/config.json"
) -> tuple[UNetConfig, list[bool]]:
    """``UNet2DConditionModel`` config -> (:class:`UNetConfig`, per-level "has cross-attention" flags).

    Mapping: ``block_out_channels -> model_channels * channel_mult``, ``layers_per_block ->
    num_res_blocks``, the levels whose down block is ``CrossAttnDownBlock2D`` -> ``attention_resolutions``
    (downsample factor ``2**level``), ``attention_head_dim`` (really the head *count* in SD1-style
    UNets when ``num_attention_heads`` is unset) -> ``num_heads`` (or ``num_head_channels`` when it
    varies per level at a constant head width), ``transformer_layers_per_block -> transformer_depth``,
    ``cross_attention_dim -> context_dim``, ``sample_size -> image_size``.
    """
    if cfg.get("use_linear_projection", False):
        raise CheckpointError(
            f"{where}: use_linear_projection=True (Linear proj_in/proj_out, SD2-style) is not supported: "
            "Zero123's SpatialTransformer uses 1x1 Conv2d proj_in/proj_out"
        )
    _require(cfg, where, _UNET_FIXED)
    boc = [int(c) for c in cfg.get("block_out_channels", (320, 640, 1280, 1280))]
    n = len(boc)
    mc = boc[0]
    if any(c % mc for c in boc):
        raise CheckpointError(f"{where}: block_out_channels {boc} are not multiples of the first entry")
    tdim = cfg.get("time_embedding_dim")
    if tdim is not None and int(tdim) != 4 * mc:
        raise CheckpointError(f"{where}: time_embedding_dim={tdim} is not 4 x block_out_channels[0] ({4 * mc})")

    down = list(cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]))
    up = list(cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    if len(down) != n or len(up) != n:
        raise CheckpointError(f"{where}: need {n} down and up block types, got {len(down)} and {len(up)}")
    has_attn = []
    for level, kind in enumerate(down):
        if kind not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise CheckpointError(f"{where}: down block type {kind!r} is not supported")
        has_attn.append(kind == "CrossAttnDownBlock2D")
    want_up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    if up != want_up:
        raise CheckpointError(
            f"{where}: up_block_types {up} do not mirror down_block_types {down} (expected {want_up}); "
            "the ldm UNet puts attention at the same resolutions on both paths"
        )

    layers = [int(v) for v in _per_block(cfg.get("layers_per_block", 2), n, "layers_per_block", where)]
    num_res_blocks: Union[int, tuple[int, ...]] = layers[0] if len(set(layers)) == 1 else tuple(layers)

    heads_raw = cfg.get("num_attention_heads")
    if heads_raw is None:
        heads_raw = cfg.get("attention_head_dim", 8)  # diffusers' historical misnomer: a head count
    heads = [int(h) for h in _per_block(heads_raw, n, "attention_head_dim", where)]
    # Levels whose heads matter: those with attention, and the last one (the mid block uses heads[-1]).
    used = sorted({lv for lv in range(n) if has_attn[lv]} | {n - 1})
    num_heads, num_head_channels = heads[-1], -1
    if len({heads[lv] for lv in used}) > 1:
        widths = {boc[lv] // heads[lv] for lv in used}
        if len(widths) != 1 or any(boc[lv] % heads[lv] for lv in used):
            raise CheckpointError(
                f"{where}: head counts {heads} per level are neither constant nor a constant head width; "
                "the ldm UNet cannot express this"
            )
        num_heads, num_head_channels = -1, widths.pop()

    depth_raw = cfg.get("transformer_layers_per_block", 1)
    depths = set(_flat_ints(_per_block(depth_raw, n, "transformer_layers_per_block", where)))
    for extra in ("reverse_transformer_layers_per_block", "transformer_layers_per_mid_block"):
        value = cfg.get(extra)
        if value is not None:
            depths |= set(_flat_ints(value))
    if len(depths) != 1:
        raise CheckpointError(f"{where}: transformer depths {sorted(depths)} vary; only one depth is supported")

    ctx = cfg.get("cross_attention_dim", 1280)
    ctx_set = {int(c) for c in (ctx if isinstance(ctx, (list, tuple)) else [ctx])}
    if len(ctx_set) != 1:
        raise CheckpointError(f"{where}: cross_attention_dim {ctx} varies per block; not supported")

    try:
        unet = UNetConfig(
            image_size=int(cfg.get("sample_size", 32)),
            in_channels=int(cfg.get("in_channels", 4)),
            out_channels=int(cfg.get("out_channels", 4)),
            model_channels=mc,
            attention_resolutions=tuple(2**lv for lv in reversed(range(n)) if has_attn[lv]),  # ldm order: 4,2,1
            num_res_blocks=num_res_blocks,
            channel_mult=tuple(c // mc for c in boc),
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            transformer_depth=depths.pop(),
            context_dim=ctx_set.pop(),
            legacy=True,
            use_spatial_transformer=True,
            use_linear_in_transformer=False,
        )
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return unet, has_attn


_VAE_FIXED = {
    "act_fn": "silu",
    "norm_num_groups": 32,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": (None, 0, 0.0),
    "latents_mean": None,
    "latents_std": None,
}


def vae_config_from_diffusers(cfg: Mapping[str, Any], where: str = "vae/config.json") -> tuple[VAEConfig, float]:
    """``AutoencoderKL`` config -> (:class:`VAEConfig`, ``scaling_factor``).

    ``block_out_channels -> ch * ch_mult``, ``layers_per_block -> num_res_blocks``,
    ``latent_channels -> z_channels = embed_dim``, ``sample_size -> resolution``.
    """
    _require(cfg, where, _VAE_FIXED)
    boc = [int(c) for c in cfg.get("block_out_channels", (64,))]
    n = len(boc)
    down = list(cfg.get("down_block_types", ["DownEncoderBlock2D"] * n))
    up = list(cfg.get("up_block_types", ["UpDecoderBlock2D"] * n))
    if down != ["DownEncoderBlock2D"] * n or up != ["UpDecoderBlock2D"] * n:
        raise CheckpointError(
            f"{where}: only DownEncoderBlock2D / UpDecoderBlock2D VAEs (no per-level attention) are supported, "
            f"got {down} / {up}"
        )
    ch = boc[0]
    if any(c % ch for c in boc):
        raise CheckpointError(f"{where}: block_out_channels {boc} are not multiples of the first entry")
    latent = int(cfg.get("latent_channels", 4))
    sample = cfg.get("sample_size", 256)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    try:
        vae = VAEConfig(
            embed_dim=latent,
            double_z=True,
            z_channels=latent,
            resolution=int(sample),
            in_channels=int(cfg.get("in_channels", 3)),
            out_ch=int(cfg.get("out_channels", 3)),
            ch=ch,
            ch_mult=tuple(c // ch for c in boc),
            num_res_blocks=int(cfg.get("layers_per_block", 1)),
            attn_resolutions=(),
        )
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return vae, float(cfg.get("scaling_factor", 0.18215))


def clip_config_from_transformers(cfg: Mapping[str, Any], where: str = "image_encoder/config.json") -> CLIPConfig:
    """transformers ``CLIPVisionConfig`` (or a full ``CLIPConfig`` with ``vision_config``) -> :class:`CLIPConfig`.

    ``hidden_size -> width``, ``num_hidden_layers -> layers``, ``num_attention_heads -> heads``,
    ``patch_size``, ``image_size -> image_resolution``, ``projection_dim -> output_dim``.
    """
    vision = cfg.get("vision_config")
    if isinstance(vision, Mapping):  # full CLIPConfig: projection_dim lives at the top level
        vision = {**vision, "projection_dim": vision.get("projection_dim", cfg.get("projection_dim", 512))}
    else:
        vision = cfg
    act = vision.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise CheckpointError(
            f"{where}: hidden_act={act!r}; vfrt's CLIP tower (OpenAI CLIP) uses QuickGELU, so only "
            "hidden_act='quick_gelu' gives the same outputs"
        )
    width = int(vision.get("hidden_size", 768))
    inter = int(vision.get("intermediate_size", 3072))
    if inter != 4 * width:
        raise CheckpointError(f"{where}: intermediate_size={inter} is not 4 x hidden_size ({4 * width}); not supported")
    eps = float(vision.get("layer_norm_eps", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        raise CheckpointError(f"{where}: layer_norm_eps={eps}; OpenAI CLIP uses 1e-5")
    if int(vision.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{where}: num_channels must be 3")
    try:
        return CLIPConfig(
            image_resolution=int(vision.get("image_size", 224)),
            patch_size=int(vision.get("patch_size", 32)),
            width=width,
            layers=int(vision.get("num_hidden_layers", 12)),
            heads=int(vision.get("num_attention_heads", 12)),
            output_dim=int(vision.get("projection_dim", 512)),
        )
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def schedule_from_diffusers(
    cfg: Mapping[str, Any], scale_factor: float, where: str = "scheduler/scheduler_config.json"
) -> ScheduleConfig:
    """Scheduler config -> :class:`ScheduleConfig`.

    diffusers ``"scaled_linear"`` (``linspace(sqrt(b0), sqrt(b1), T) ** 2``) is ldm's ``"linear"``;
    diffusers' own ``"linear"`` (betas linear in t) has no ldm counterpart and is rejected.
    """
    sched = cfg.get("beta_schedule", "linear")
    if sched != "scaled_linear":
        raise CheckpointError(
            f"{where}: beta_schedule={sched!r}; only 'scaled_linear' (= ldm's 'linear') is supported"
        )
    if cfg.get("trained_betas") is not None:
        raise CheckpointError(f"{where}: trained_betas are not supported")
    pred = cfg.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise CheckpointError(f"{where}: prediction_type={pred!r}; only 'epsilon' is supported")
    try:
        return ScheduleConfig(
            timesteps=int(cfg.get("num_train_timesteps", 1000)),
            linear_start=float(cfg.get("beta_start", 0.0001)),
            linear_end=float(cfg.get("beta_end", 0.02)),
            scale_factor=scale_factor,
            beta_schedule="linear",
        )
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def _projection_folder(folder: Path) -> tuple[str, str]:
    index = folder / "model_index.json"
    names: list[str] = list(_PROJECTION_FOLDERS)
    if index.is_file():
        listed = [k for k in _read_json(index) if k in _PROJECTION_FOLDERS]
        names = listed + [k for k in names if k not in listed]
    for name in names:
        if (folder / name).is_dir():
            return name, _PROJECTION_FOLDERS[name]
    raise CheckpointError(
        f"{folder}: no camera projection sub-folder ({' or '.join(_PROJECTION_FOLDERS)}); is this a Zero123 folder?"
    )


def is_diffusers_folder(path: Union[str, Path]) -> bool:
    """True for a directory with ``model_index.json`` or a ``unet/config.json``."""
    p = Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file())


def config_from_diffusers_folder(folder: Union[str, Path]) -> Zero123Config:
    """The :class:`Zero123Config` described by a diffusers folder's ``config.json`` files."""
    return _read_configs(Path(folder))[0]


def _read_configs(folder: Path) -> tuple[Zero123Config, list[bool], str, str]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory")
    for sub in ("unet", "vae", "image_encoder", "scheduler"):
        if not (folder / sub).is_dir():
            raise CheckpointError(f"{folder}: no {sub}/ sub-folder; is this a diffusers Zero123 folder?")
    proj_name, proj_prefix = _projection_folder(folder)
    unet_cfg, has_attn = unet_config_from_diffusers(
        _read_json(folder / "unet" / "config.json"), f"{folder}/unet/config.json"
    )
    vae_cfg, scale = vae_config_from_diffusers(_read_json(folder / "vae" / "config.json"), f"{folder}/vae/config.json")
    clip_cfg = clip_config_from_transformers(
        _read_json(folder / "image_encoder" / "config.json"), f"{folder}/image_encoder/config.json"
    )
    sched_path = folder / "scheduler" / "scheduler_config.json"
    schedule = schedule_from_diffusers(_read_json(sched_path), scale, str(sched_path))
    # The projection's config.json (if any) is not trusted for shapes: the shape check does that.
    try:
        cfg = Zero123Config(unet=unet_cfg, vae=vae_cfg, schedule=schedule, clip=clip_cfg, use_ema=False)
    except ValueError as exc:
        raise CheckpointError(f"{folder}: the sub-models do not fit together: {exc}") from exc
    return cfg, has_attn, proj_name, proj_prefix


# --------------------------------------------------------------------------- name map
@dataclass(frozen=True)
class _Rule:
    """How one vfrt tensor is made: from ``sources`` (``"<sub-folder>/<key>"``) through ``fn``."""

    sources: tuple[str, ...]
    fn: Optional[Callable[[list[torch.Tensor]], torch.Tensor]] = None

    def apply(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0] if self.fn is None else self.fn(tensors)


def _conv1x1(ts: list[torch.Tensor]) -> torch.Tensor:
    """diffusers VAE attention Linear ``(C, C)`` -> ldm 1x1 Conv2d ``(C, C, 1, 1)`` (biases pass through)."""
    t = ts[0]
    return t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t


def _cat0(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(ts, dim=0)


def _transpose(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0].t().contiguous()


_UNET_RESNET = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
                "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
_VAE_RESNET = {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.",
               "nin_shortcut.": "conv_shortcut."}
_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}
# Names of the VAE attention in diffusers < 0.14 -> current names (applied to the file's keys).
_VAE_ATTN_LEGACY = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def _unet_prefixes(cfg: UNetConfig, has_attn: list[bool]) -> dict[str, tuple[str, Optional[dict[str, str]]]]:
    """ldm module prefix -> (diffusers module prefix, suffix renames or None for identical names)."""
    per_level = cfg.res_blocks_per_level
    n = len(cfg.channel_mult)
    pre: dict[str, tuple[str, Optional[dict[str, str]]]] = {
        "time_embed.0.": ("time_embedding.linear_1.", None),
        "time_embed.2.": ("time_embedding.linear_2.", None),
        "input_blocks.0.0.": ("conv_in.", None),
        "middle_block.0.": ("mid_block.resnets.0.", _UNET_RESNET),
        "middle_block.1.": ("mid_block.attentions.0.", None),
        "middle_block.2.": ("mid_block.resnets.1.", _UNET_RESNET),
        "out.0.": ("conv_norm_out.", None),
        "out.2.": ("conv_out.", None),
    }
    idx = 1
    for level in range(n):
        for j in range(per_level[level]):
            pre[f"input_blocks.{idx}.0."] = (f"down_blocks.{level}.resnets.{j}.", _UNET_RESNET)
            if has_attn[level]:
                # SpatialTransformer names equal Transformer2DModel's (norm, proj_in, transformer_blocks.k.
                # {norm1..3, attn1/attn2.to_q/k/v/to_out.0, ff.net.0.proj, ff.net.2}, proj_out).
                pre[f"input_blocks.{idx}.1."] = (f"down_blocks.{level}.attentions.{j}.", None)
            idx += 1
        if level != n - 1:
            pre[f"input_blocks.{idx}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", None)
            idx += 1
    idx = 0
    for level in reversed(range(n)):
        u = n - 1 - level  # diffusers numbers up blocks from the bottom
        for j in range(per_level[level] + 1):
            pre[f"output_blocks.{idx}.0."] = (f"up_blocks.{u}.resnets.{j}.", _UNET_RESNET)
            k = 1
            if has_attn[level]:
                pre[f"output_blocks.{idx}.1."] = (f"up_blocks.{u}.attentions.{j}.", None)
                k = 2
            if level and j == per_level[level]:
                pre[f"output_blocks.{idx}.{k}.conv."] = (f"up_blocks.{u}.upsamplers.0.conv.", None)
            idx += 1
    return pre


def _vae_prefixes(cfg: VAEConfig) -> dict[str, tuple[str, Optional[dict[str, str]], bool]]:
    """ldm prefix -> (diffusers prefix, suffix renames, is-attention (reshape Linear -> 1x1 conv))."""
    n = len(cfg.ch_mult)
    pre: dict[str, tuple[str, Optional[dict[str, str]], bool]] = {
        "quant_conv.": ("quant_conv.", None, False),
        "post_quant_conv.": ("post_quant_conv.", None, False),
    }
    for part in ("encoder", "decoder"):
        pre[f"{part}.conv_in."] = (f"{part}.conv_in.", None, False)
        pre[f"{part}.norm_out."] = (f"{part}.conv_norm_out.", None, False)
        pre[f"{part}.conv_out."] = (f"{part}.conv_out.", None, False)
        pre[f"{part}.mid.block_1."] = (f"{part}.mid_block.resnets.0.", _VAE_RESNET, False)
        pre[f"{part}.mid.attn_1."] = (f"{part}.mid_block.attentions.0.", _VAE_ATTN, True)
        pre[f"{part}.mid.block_2."] = (f"{part}.mid_block.resnets.1.", _VAE_RESNET, False)
    for i in range(n):
        for j in range(cfg.num_res_blocks):
            pre[f"encoder.down.{i}.block.{j}."] = (f"encoder.down_blocks.{i}.resnets.{j}.", _VAE_RESNET, False)
        if i != n - 1:
            pre[f"encoder.down.{i}.downsample.conv."] = (f"encoder.down_blocks.{i}.downsamplers.0.conv.", None, False)
        u = n - 1 - i  # ldm's decoder.up is indexed by resolution level, diffusers' up_blocks top-down
        for j in range(cfg.num_res_blocks + 1):
            pre[f"decoder.up.{i}.block.{j}."] = (f"decoder.up_blocks.{u}.resnets.{j}.", _VAE_RESNET, False)
        if i != 0:
            pre[f"decoder.up.{i}.upsample.conv."] = (f"decoder.up_blocks.{u}.upsamplers.0.conv.", None, False)
    return pre


def _split(name: str, prefixes: Mapping[str, Any]) -> tuple[str, str]:
    """Longest prefix of ``name`` in ``prefixes`` and the rest."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut]) + "."
        if head in prefixes:
            return head, name[len(head):]
    raise KeyError(name)


def _rename_suffix(rest: str, renames: Optional[Mapping[str, str]]) -> str:
    if renames is None:
        return rest
    for old, new in renames.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(rest)


_CLIP_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_CLIP_BLOCK_MAP = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_CLIP_TOP = {
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}


def _clip_rule(name: str) -> _Rule:
    if name == "proj":  # OpenAI: x @ proj with proj (width, out); transformers: Linear weight (out, width), no bias
        return _Rule(("image_encoder/visual_projection.weight",), _transpose)
    if name in _CLIP_TOP:
        return _Rule((f"image_encoder/{_CLIP_TOP[name]}",))
    m = _CLIP_BLOCK.fullmatch(name)
    if m is None:
        raise KeyError(name)
    layer, rest = m.group(1), m.group(2)
    base = f"image_encoder/vision_model.encoder.layers.{layer}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        return _Rule(tuple(f"{base}self_attn.{p}_proj.{kind}" for p in "qkv"), _cat0)
    return _Rule((base + _CLIP_BLOCK_MAP[rest],))


def conversion_rules(
    model: Zero123, has_attn: Sequence[bool], projection: tuple[str, str] = ("clip_camera_projection", "proj.")
) -> dict[str, _Rule]:
    """The explicit name map: every tensor of ``model.state_dict()`` -> its diffusers source(s).

    Keys are vfrt names (``"unet.input_blocks.1.0.in_layers.0.weight"``); sources are
    ``"<sub-folder>/<key in that folder's weights>"``. Raises ``KeyError`` for a vfrt tensor
    no rule covers (a bug, not a checkpoint problem).
    """
    rules: dict[str, _Rule] = {}
    unet_pre = _unet_prefixes(model.config.unet, list(has_attn))
    vae_pre = _vae_prefixes(model.config.vae)
    proj_dir, proj_prefix = projection
    for full in model.state_dict():
        module, name = full.split(".", 1)
        if module == "unet":
            head, rest = _split(name, unet_pre)
            target, renames = unet_pre[head]
            rules[full] = _Rule((f"unet/{target}{_rename_suffix(rest, renames)}",))
        elif module == "vae":
            head, rest = _split(name, vae_pre)
            target, renames, is_attn = vae_pre[head]
            src = f"vae/{target}{_rename_suffix(rest, renames)}"
            rules[full] = _Rule((src,), _conv1x1 if is_attn else None)
        elif module == "clip":
            rules[full] = _clip_rule(name)
        elif module == "cc_projection":
            rules[full] = _Rule((f"{proj_dir}/{proj_prefix}{name}",))
        else:
            raise KeyError(full)
    return rules


# --------------------------------------------------------------------------- weights
def _weights_file(sub: Path, names: Sequence[str]) -> list[Path]:
    """The weight file(s) of one component: plain, sharded (``*.index.json``) or ``fp16`` variant."""
    candidates = list(names)
    candidates += [n.replace(".safetensors", ".fp16.safetensors").replace(".bin", ".fp16.bin") for n in names]
    for name in candidates:
        if (sub / name).is_file():
            return [sub / name]
        index = sub / (name + ".index.json")
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, Mapping) or not weight_map:
                raise CheckpointError(f"{index}: no weight_map")
            return [sub / f for f in sorted(set(weight_map.values()))]
    raise CheckpointError(f"{sub}: no weights file (looked for {', '.join(names)}, sharded and fp16 variants)")


def _read_weights(folder: Path, projection_dir: str, trust_checkpoint: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The state dict of each component: ``{"unet": {...}, "vae": {...}, "image_encoder": {...}, <proj>: {...}}``."""
    parts = {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "image_encoder": _TRANSFORMERS_WEIGHTS,
             projection_dir: _DIFFUSERS_WEIGHTS}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for sub, names in parts.items():
        out[sub] = {}
        for path in _weights_file(folder / sub, names):
            out[sub].update(load_state_dict_file(path, trust_checkpoint=trust_checkpoint))
    return out


def _legacy_vae_key(key: str) -> str:
    if ".mid_block.attentions.0." not in key:
        return key
    head, _, tail = key.rpartition(".attentions.0.")
    for old, new in _VAE_ATTN_LEGACY.items():
        if tail.startswith(old):
            return f"{head}.attentions.0.{new}{tail[len(old):]}"
    return key


def _fmt(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def convert_diffusers_state_dicts(
    model: Zero123,
    has_attn: Sequence[bool],
    parts: Mapping[str, Mapping[str, torch.Tensor]],
    projection: tuple[str, str] = ("clip_camera_projection", "proj."),
    where: str = "diffusers weights",
) -> dict[str, torch.Tensor]:
    """Rename and reshape the components' state dicts into ``model``'s names, strictly.

    Args:
        model: the target (may live on the meta device); only names and shapes are used.
        has_attn: per UNet level, whether its down block has cross-attention.
        parts: ``{"unet": sd, "vae": sd, "image_encoder": sd, <projection folder>: sd}``.
        projection: (sub-folder, key prefix) of the camera projection Linear.
    Returns:
        ``model.state_dict()``-complete mapping of vfrt names to tensors.
    Raises:
        CheckpointError: one error listing missing, unexpected and mis-shaped tensors
            (``"<sub-folder>/<key>"`` names, with the vfrt tensor each one feeds).
    """
    files: dict[str, torch.Tensor] = {}
    for sub, sd in parts.items():
        for key, tensor in sd.items():
            files[f"{sub}/{_legacy_vae_key(key) if sub == 'vae' else key}"] = tensor
    rules = conversion_rules(model, has_attn, projection)

    missing: list[str] = []
    mis_shaped: list[str] = []
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    for target, ref in model.state_dict().items():
        rule = rules[target]
        used.update(rule.sources)
        absent = [s for s in rule.sources if s not in files]
        if absent:
            missing.extend(f"{s} (for {target})" for s in absent)
            continue
        srcs = [files[s] for s in rule.sources]
        try:
            tensor = rule.apply(srcs)
        except RuntimeError as exc:  # e.g. q/k/v of different widths
            mis_shaped.append(f"{', '.join(rule.sources)} {[_fmt(t) for t in srcs]}: {exc}")
            continue
        if tensor.shape != ref.shape:
            mis_shaped.append(
                f"{', '.join(rule.sources)} {', '.join(_fmt(t) for t in srcs)} -> {target}: expected {_fmt(ref)}"
            )
            continue
        state[target] = tensor
    ignored = {f"{sub}/{k}" for sub, keys in _IGNORED_KEYS.items() for k in keys}
    unexpected = [k for k in files if k not in used and k not in ignored]

    problems = mismatch_report(missing, unexpected, mis_shaped)
    if problems:
        raise CheckpointError(f"{where} do not fit the Zero123 model described by the config.json files:\n" + problems)
    return state


def read_diffusers_folder(
    folder: Union[str, Path], *, trust_checkpoint: bool = False
) -> tuple[Zero123Config, dict[str, torch.Tensor]]:
    """Read and convert a diffusers Zero123 folder without building real weights.

    Returns:
        ``(config, state)`` where ``state`` maps vfrt names (``"unet.…"``, ``"vae.…"``,
        ``"clip.…"``, ``"cc_projection.…"``) to tensors, complete and shape-checked.

    Raises:
        CheckpointError: unsupported configs, or one error listing missing, unused and
            mis-shaped tensors (diffusers names, with the vfrt name each one feeds).
    """
    folder = Path(folder)
    cfg, has_attn, proj_dir, proj_prefix = _read_configs(folder)
    try:
        with torch.device("meta"):
            model = Zero123(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{folder}: cannot build the configured model: {exc}") from exc
    parts = _read_weights(folder, proj_dir, trust_checkpoint)
    state = convert_diffusers_state_dicts(
        model, has_attn, parts, (proj_dir, proj_prefix), where=f"the weights in {folder}"
    )
    return cfg, state


def diffusers_folder_to_original(
    folder: Union[str, Path], *, trust_checkpoint: bool = False
) -> dict[str, torch.Tensor]:
    """A diffusers folder's tensors under the original ldm checkpoint names (``model.diffusion_model.…`` etc.)."""
    _, state = read_diffusers_folder(folder, trust_checkpoint=trust_checkpoint)
    out = {}
    for full, tensor in state.items():
        module, name = full.split(".", 1)
        out[PREFIXES[module] + name] = tensor
    return out


def load_zero123_diffusers(
    folder: Union[str, Path],
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_checkpoint: bool = False,
) -> Zero123:
    """Load a diffusers-format Zero123 folder into a :class:`Zero123` (eval mode, no grads).

    The config comes from the folder (``unet/``, ``vae/``, ``image_encoder/`` ``config.json`` and
    ``scheduler/scheduler_config.json``); weights from ``.safetensors`` or ``.bin`` files (the
    latter read with ``torch.load(weights_only=True)``; ``trust_checkpoint=True`` allows a full
    unpickle). There is no EMA choice: the folder's UNet weights are used as they are.

    Raises:
        CheckpointError: unsupported options (e.g. ``use_linear_projection``, non-QuickGELU CLIP,
            a non-``scaled_linear`` schedule), or one error listing all missing, unexpected and
            mis-shaped tensors.
    """
    cfg, state = read_diffusers_folder(folder, trust_checkpoint=trust_checkpoint)
    with torch.device("meta"):
        model = Zero123(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded diffusers folder %s (%d tensors)", folder, len(state))
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
