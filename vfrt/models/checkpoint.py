"""Loading original Zero123 checkpoints (SPEC section 7).

Supported: the Lightning ``.ckpt`` of the original code (``{"state_dict": ...}``) or a bare
state dict pickle, and ``.safetensors`` files holding the same flat state dict. Names are the
original ldm ones:

=================================  ==========================================================
prefix in the checkpoint           goes to
=================================  ==========================================================
``model.diffusion_model.``         ``Zero123.unet``
``first_stage_model.``             ``Zero123.vae``
``cond_stage_model.model.visual.`` ``Zero123.clip`` (text-tower leftovers are ignored)
``cc_projection.``                 ``Zero123.cc_projection``
``model_ema.<name without dots>``  EMA copy of ``model.<name>`` (UNet), used when ``use_ema``
``betas``, ``alphas_cumprod``, ... schedule buffers: ignored, but checked against the config
=================================  ==========================================================

Pickles run code when loaded: ``.ckpt`` files are read with ``torch.load(weights_only=True)``
and only an explicit ``trust_checkpoint=True`` allows a full unpickle.

Reading the file is :mod:`.state_dict`'s job; :func:`vfrt.models.load_zero123` (:mod:`.loading`)
chooses between this loader and the diffusers-folder one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from .clip import CLIPVisionTower
from .config import ScheduleConfig, Zero123Config
from .errors import CheckpointError
from .state_dict import PREFIXES, fmt_shape, load_state_dict_file, mismatch_report
from .zero123 import Zero123

__all__ = [
    "load_original_checkpoint",
    "split_original_state_dict",
    "to_original_state_dict",
    "ema_key",
    "SCHEDULE_BUFFERS",
]

log = logging.getLogger(__name__)

EMA_PREFIX = "model_ema."
EMA_META = ("decay", "num_updates")
# Buffers of ldm DDPM.register_schedule (+ logvar / lvlb_weights / scale_factor in some versions).
SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
        "cond_ids",
        "scale_factor",
    }
)
# What FrozenCLIPImageEmbedder keeps of the CLIP text tower after `del model.transformer`,
# plus the metadata entries of OpenAI's JIT state dicts.
_CLIP_TEXT_LEFTOVERS = ("transformer.", "token_embedding.", "ln_final.")
_CLIP_TEXT_SCALARS = frozenset(
    {"positional_embedding", "text_projection", "logit_scale", "input_resolution", "context_length", "vocab_size"}
)
# Training-only VAE loss weights (LPIPS / discriminator) that some first stages carry.
_VAE_LOSS_PREFIX = "first_stage_model.loss."
_SCHEDULE_ATOL = 1e-6


def ema_key(unet_param_name: str) -> str:
    """``model_ema`` key of a UNet parameter: ``"model_ema." + ("diffusion_model." + name).replace(".", "")``.

    (ldm ``LitEma`` keeps the DiffusionWrapper's parameter names with the dots removed.)
    """
    return EMA_PREFIX + ("diffusion_model." + unet_param_name).replace(".", "")


def split_original_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split an original LatentDiffusion state dict into groups (prefixes stripped).

    Returns a dict with keys ``unet``, ``vae``, ``clip``, ``cc_projection`` (module state dicts),
    ``ema`` (``model_ema`` entries without the prefix, ``decay``/``num_updates`` dropped),
    ``schedule`` (schedule buffers), ``ignored`` (text-tower / loss leftovers, metadata) and
    ``unexpected`` (everything else, full names).
    """
    out: dict[str, dict[str, torch.Tensor]] = {
        k: {} for k in ("unet", "vae", "clip", "cc_projection", "ema", "schedule", "ignored", "unexpected")
    }
    clip_root = "cond_stage_model.model."
    for name, tensor in sd.items():
        module = next((m for m, prefix in PREFIXES.items() if name.startswith(prefix)), None)
        if name.startswith(_VAE_LOSS_PREFIX):
            out["ignored"][name] = tensor
        elif module is not None:
            out[module][name[len(PREFIXES[module]):]] = tensor
        elif name.startswith(EMA_PREFIX):
            rest = name[len(EMA_PREFIX):]
            if rest in EMA_META:
                out["ignored"][name] = tensor
            else:
                out["ema"][rest] = tensor
        elif name.startswith(clip_root):
            rest = name[len(clip_root):]
            if rest.startswith(_CLIP_TEXT_LEFTOVERS) or rest in _CLIP_TEXT_SCALARS:
                out["ignored"][name] = tensor
            else:
                out["unexpected"][name] = tensor
        elif name in SCHEDULE_BUFFERS:
            out["schedule"][name] = tensor
        else:
            out["unexpected"][name] = tensor
    return out


def to_original_state_dict(model: Zero123, ema: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """The inverse of the loader's prefix strip: ``model``'s tensors under the original names.

    ``ema`` (UNet parameter name -> tensor), if given, is written as ``model_ema.*`` entries
    (without ``decay`` / ``num_updates``).
    """
    out: dict[str, torch.Tensor] = {}
    for module, prefix in PREFIXES.items():
        for k, v in getattr(model, module).state_dict().items():
            out[prefix + k] = v
    if ema is not None:
        for k, v in ema.items():
            out[ema_key(k)] = v
    return out


def _ema_name_map(unet: nn.Module) -> dict[str, str]:
    """``dot-free EMA name -> UNet parameter name``, built from the model's own parameter list.

    Dots cannot be re-inserted by parsing (``input_blocks11...`` could be ``input_blocks.1.1.``
    or ``input_blocks.11.``), so each real parameter name is mapped forward instead.
    """
    mapping: dict[str, str] = {}
    for name, _ in unet.named_parameters():
        key = ema_key(name)[len(EMA_PREFIX):]
        if key in mapping:
            raise CheckpointError(
                f"UNet parameters {mapping[key]!r} and {name!r} have the same EMA name {key!r}; "
                "EMA weights cannot be assigned unambiguously"
            )
        mapping[key] = name
    return mapping


def _expected_schedule(schedule: ScheduleConfig) -> dict[str, torch.Tensor]:
    betas = schedule.betas()
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1.0 - betas, dim=0).float()}


def _check_schedule(buffers: Mapping[str, torch.Tensor], schedule: ScheduleConfig) -> list[str]:
    problems = []
    for name, want in _expected_schedule(schedule).items():
        if name not in buffers:
            continue
        got = buffers[name].detach().to(torch.float32)
        if got.shape != want.shape:
            problems.append(f"{name}: {tuple(got.shape)} entries, config has {schedule.timesteps} timesteps")
            continue
        err = (got - want).abs().max().item()
        if not err <= _SCHEDULE_ATOL:
            problems.append(
                f"{name} differs from the configured linear schedule (start={schedule.linear_start}, "
                f"end={schedule.linear_end}, T={schedule.timesteps}) by up to {err:.3g}"
            )
    if "scale_factor" in buffers:
        got_sf = float(buffers["scale_factor"].float().reshape(-1)[0])
        if abs(got_sf - schedule.scale_factor) > 1e-6 * max(1.0, abs(schedule.scale_factor)):
            problems.append(f"scale_factor buffer {got_sf} differs from the configured {schedule.scale_factor}")
    return problems


def _resolve_config(config: Union[None, str, Path, Zero123Config]) -> tuple[Zero123Config, bool]:
    if config is None:
        return Zero123Config.default(), True
    if isinstance(config, Zero123Config):
        return config, False
    if isinstance(config, (str, Path)):
        return Zero123Config.from_yaml(config), False
    raise TypeError(f"config must be None, a YAML path or a Zero123Config, got {type(config).__name__}")


def load_original_checkpoint(
    path: Union[str, Path],
    config: Union[None, str, Path, Zero123Config] = None,
    *,
    trust_checkpoint: bool = False,
    use_ema: bool = True,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Zero123:
    """Load an original Zero123 ``.ckpt`` / ``.safetensors`` into a :class:`Zero123` (eval mode, no grads).

    See :func:`vfrt.models.load_zero123` for the arguments. The CLIP tower is inferred from the weights;
    the UNet gets the ``model_ema`` weights when ``use_ema`` and the checkpoint has them.

    Raises:
        CheckpointError: one error listing all missing, unexpected and mis-shaped tensors, or schedule
            buffers that disagree with the configured schedule.
    """
    cfg, defaulted = _resolve_config(config)
    groups = split_original_state_dict(load_state_dict_file(path, trust_checkpoint=trust_checkpoint))
    hint = ("\n  The checkpoint does not match the default (full-size Zero123) config; pass the model's original "
            "YAML as config=... (CLI: --config)." if defaulted else "")
    cfg = cfg.with_clip(_clip_config(groups, path, cfg, defaulted))
    try:
        with torch.device("meta"):
            model = Zero123(cfg)
    except ValueError as exc:  # e.g. head counts that do not divide the channels
        raise CheckpointError(f"{path}: cannot build the configured model: {exc}{hint}") from exc

    flat, missing, unexpected, mis_shaped = _module_weights(model, groups)
    apply_ema = use_ema and cfg.use_ema and bool(groups["ema"])
    if apply_ema:
        ema, ema_problems = _ema_weights(model.unet, groups["ema"])
        for kind, items in zip((missing, unexpected, mis_shaped), ema_problems):
            kind.extend(items)
    elif groups["ema"]:
        log.info("ignoring %d EMA tensors (use_ema=False)", len(groups["ema"]))

    problems = mismatch_report(missing, unexpected, mis_shaped)
    if problems:
        raise CheckpointError(f"{path} does not fit the Zero123 model:\n" + problems + hint)
    sched_problems = _check_schedule(groups["schedule"], cfg.schedule)
    if sched_problems:
        raise CheckpointError(
            f"{path}: schedule buffers disagree with the config:\n" + "\n".join(f"  {p}" for p in sched_problems)
            + (hint if defaulted else "\n  Check linear_start / linear_end / timesteps in the YAML."))
    if apply_ema:
        flat.update({"unet." + name: tensor for name, tensor in ema.items()})
        log.info("using EMA weights for the UNet (%d tensors)", len(ema))
    elif use_ema and cfg.use_ema:
        log.info("no EMA weights in %s; using the raw UNet weights", path)

    model.load_state_dict(flat, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def _clip_config(groups, path, cfg: Zero123Config, defaulted: bool):
    """The CLIP tower's config, inferred from its weights (the ldm YAML does not describe it)."""
    if not groups["clip"]:
        raise CheckpointError(
            f"{path}: no CLIP image tower ({PREFIXES['clip']}*) in the checkpoint; is this a Zero123 checkpoint?")
    try:
        clip_cfg = CLIPVisionTower.config_from_state_dict(groups["clip"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot infer the CLIP tower: {exc}") from exc
    if not defaulted and cfg.clip is not None and cfg.clip != clip_cfg:  # only an explicit Zero123Config can disagree
        raise CheckpointError(f"{path}: the checkpoint's CLIP tower is {clip_cfg}, the config says {cfg.clip}")
    return clip_cfg


def _module_weights(model: Zero123, groups):
    """``{"unet.x": tensor, ...}`` for every module tensor, and the missing / unexpected / mis-shaped names."""
    missing, mis_shaped, unexpected = [], [], list(groups["unexpected"])
    flat: dict[str, torch.Tensor] = {}
    for module, prefix in PREFIXES.items():
        got = groups[module]
        expected = getattr(model, module).state_dict()
        for name, ref in expected.items():
            if name not in got:
                missing.append(prefix + name)
            elif got[name].shape != ref.shape:
                mis_shaped.append(f"{prefix}{name}: expected {fmt_shape(ref)}, got {fmt_shape(got[name])}")
            else:
                flat[f"{module}.{name}"] = got[name]
        unexpected.extend(prefix + name for name in got if name not in expected)
    return flat, missing, unexpected, mis_shaped


def _ema_weights(unet: nn.Module, ema_group: Mapping[str, torch.Tensor]):
    """UNet parameter name -> EMA tensor, and the (missing, unexpected, mis-shaped) EMA names."""
    name_map = _ema_name_map(unet)
    params = dict(unet.named_parameters())
    values, unexpected, mis_shaped = {}, [], []
    for key, tensor in ema_group.items():
        pname = name_map.get(key)
        if pname is None:
            unexpected.append(EMA_PREFIX + key)
        elif tensor.shape != params[pname].shape:
            mis_shaped.append(f"{EMA_PREFIX}{key} (EMA of unet {pname}): expected {fmt_shape(params[pname])}, "
                              f"got {fmt_shape(tensor)}")
        else:
            values[pname] = tensor
    missing = [f"{EMA_PREFIX}{k} (EMA of unet {p})" for k, p in name_map.items() if k not in ema_group]
    return values, (missing, unexpected, mis_shaped)
