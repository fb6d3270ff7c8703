"""``load_zero123``: one entry point for every weight format (SPEC §7).

A directory is a diffusers folder (:mod:`.diffusers_format`); a file is an original ``.ckpt`` or
``.safetensors`` (:mod:`.checkpoint`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import torch

from .checkpoint import load_original_checkpoint
from .config import Zero123Config
from .diffusers_format import config_from_diffusers_folder, is_diffusers_folder, load_zero123_diffusers
from .errors import CheckpointError
from .zero123 import Zero123

log = logging.getLogger(__name__)


def load_zero123(
    path: Union[str, Path],
    config: Union[None, str, Path, Zero123Config] = None,
    *,
    trust_checkpoint: bool = False,
    use_ema: bool = True,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Zero123:
    """Load Zero123 weights into a :class:`Zero123` (eval mode, no grads).

    Args:
        path: ``.ckpt`` (Lightning or bare state dict) or ``.safetensors``; a directory is read as a
            diffusers folder (``config`` must then be ``None``; ``use_ema`` has no effect).
        config: ``None`` (Zero123 full size), a path to the original ldm YAML, or a
            :class:`Zero123Config`. The CLIP tower is always inferred from the weights.
        trust_checkpoint: allow a full (code-executing) unpickle when a ``.ckpt`` holds more than tensors.
        use_ema: put the ``model_ema`` weights into the UNet when present (the original samples
            inside ``ema_scope()``); ignored if the YAML says ``use_ema: false``.
        device, dtype: where and in which precision to put the model.

    Raises:
        CheckpointError: one clear error for anything that does not fit (see the two loaders).
        FileNotFoundError: ``path`` does not exist.
    """
    if not Path(path).is_dir():
        return load_original_checkpoint(path, config, trust_checkpoint=trust_checkpoint, use_ema=use_ema,
                                        device=device, dtype=dtype)
    if not is_diffusers_folder(path):
        raise CheckpointError(f"{path} is a directory but not a diffusers folder (no model_index.json or "
                              "unet/config.json); pass a diffusers Zero123 folder, the original .ckpt or a "
                              ".safetensors file")
    if config is not None:
        raise CheckpointError(f"{path} is a diffusers folder, which carries its own config (unet/config.json ...); "
                              "do not pass config=... (CLI: --config) with it")
    if use_ema:
        log.info("%s: diffusers folders hold one set of UNet weights; use_ema has no effect", path)
    return load_zero123_diffusers(path, device=device, dtype=dtype, trust_checkpoint=trust_checkpoint)


def peek_config(path: Union[str, Path], config: Union[None, str, Path, Zero123Config] = None) -> Zero123Config:
    """The architecture ``load_zero123(path, config)`` will build, read cheaply (the YAML or the diffusers
    folder's config files; the default full-size Zero123 for a ``.ckpt`` without YAML), without the weights.

    Raises:
        CheckpointError: an unreadable or unsupported YAML / diffusers config.
    """
    try:
        if Path(path).is_dir() and is_diffusers_folder(path):
            return config_from_diffusers_folder(path)
        if isinstance(config, Zero123Config):
            return config
        return Zero123Config.from_yaml(config) if config is not None else Zero123Config.default()
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(str(exc)) from exc
