"""Reading flat ``name -> tensor`` state dicts from files, and the names the original checkpoints use.

Shared by the original-checkpoint loader (:mod:`.checkpoint`) and the diffusers-folder loader
(:mod:`.diffusers_format`); imports neither.

Pickles run code when loaded: ``.ckpt`` files are read with ``torch.load(weights_only=True)``
and only an explicit ``trust_checkpoint=True`` allows a full unpickle - and only for a file that
is a PyTorch checkpoint at all.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Mapping, Union

import torch

from .errors import CheckpointError

log = logging.getLogger(__name__)

# Zero123 sub-module -> prefix of its tensors in the original LatentDiffusion state dict.
PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "clip": "cond_stage_model.model.visual.",
    "cc_projection": "cc_projection.",
}
MAX_LISTED = 8


def load_state_dict_file(path: Union[str, Path], trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat ``name -> tensor`` state dict from a ``.ckpt``/``.pt``/``.pth`` pickle or ``.safetensors``.

    Lightning checkpoints are unwrapped (``obj["state_dict"]``); other top-level entries
    (``optimizer_states``, ``global_step`` ...) are dropped.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file, a pickle that needs more than tensors (unless
            ``trust_checkpoint``), or no state dict inside.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: read a diffusers folder with vfrt.models.load_zero123 (or "
                              "vfrt.models.diffusers_format.diffusers_folder_to_original for its tensors)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    else:
        obj = _torch_load(path, trust_checkpoint)
    return _unwrap_state_dict(obj, path)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle: protocol 2+ starts with 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _torch_load(path: Path, trust_checkpoint: bool):
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle; "
                              f"{path.stat().st_size} bytes). Pass the Zero123 .ckpt, a .safetensors file or a "
                              "diffusers folder.")
    try:
        return _load_maybe_mmap(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_checkpoint:
            raise CheckpointError(
                f"{path} contains Python objects besides tensors, and unpickling them can run arbitrary code. "
                "It was not loaded. If you trust the file, pass trust_checkpoint=True (CLI: --trust-checkpoint), "
                f"or convert it to .safetensors. (torch.load(weights_only=True) said: {str(exc).splitlines()[0]})"
            ) from exc
        log.warning("loading %s with a full unpickle (trust_checkpoint=True)", path)
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        return _load_maybe_mmap(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - anything an arbitrary pickle raises
        raise CheckpointError(f"cannot unpickle checkpoint {path}: {exc}") from exc


def _load_maybe_mmap(path: Path, weights_only: bool):
    """torch.load, memory-mapped when the file allows it (zip format): a 15 GB checkpoint then stays
    in the page cache instead of being copied into RAM next to the model being filled from it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)  # legacy (non-zip) file


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (expected a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} state-dict entries are not tensors, e.g. {[str(k) for k in bad[:MAX_LISTED]]}"
        )
    return dict(obj)


def fmt_shape(t) -> str:
    """A tensor's (or a shape's) shape as a tuple string, for error messages."""
    return str(tuple(t.shape) if hasattr(t, "shape") else tuple(t))


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {s}" for s in items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {len(items)} {title}:\n{shown}{more}"


def mismatch_report(missing: list[str], unexpected: list[str], mis_shaped: list[str]) -> str:
    """One readable block naming the first few missing / unexpected / mis-shaped tensors ("" if none)."""
    parts = [_listing(title, items) for title, items in (("missing tensors", missing),
                                                         ("unexpected tensors", unexpected),
                                                         ("tensors with the wrong shape", mis_shaped)) if items]
    return "\n".join(parts)
