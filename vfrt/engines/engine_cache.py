"""Finding built engines for a checkpoint: the cache's directory key, and the one policy that decides
whether a run uses built engines (:func:`select_engines`, shared by ``vfrt run`` and the Python API).

An engine directory in the cache is named after everything that changes what is built
(:func:`engine_key`): the weights' fingerprint, EMA or not, the model config, backend, precision,
device kind and GPU, and the spec sizes. Versions (torch, vfrt, backend) are *not* in the key but in
the manifest: after an upgrade, ``vfrt build-engines`` with the same options replaces the stale
directory instead of leaving it behind.

Finding engines for ``-c CKPT`` costs a few small JSON reads: manifests whose checkpoint has another
size, EMA choice or config are skipped without hashing anything, and the content hash of a
checkpoint is computed once per file state (:class:`~vfrt.engines.fingerprint.DigestIndex`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vfrt.engines.config import EngineConfig
from vfrt.engines.engine_dir import (MANIFEST_NAME, PRECISION_FLAGS, CheckpointEntry, CorruptEngineError,
                                     EngineLoadError, EngineMismatchError, Manifest, Platform, engines_root,
                                     load_engine, read_manifest)
from vfrt.engines.fingerprint import DigestIndex
from vfrt.hardware import resolve_device

if TYPE_CHECKING:
    from vfrt.engines.fast import FastEngine

log = logging.getLogger(__name__)


def config_digest(config) -> str | None:
    """What identifies the model config a checkpoint is read with: None (the default), the sha256 of a
    YAML file, or of a :class:`~vfrt.models.config.Zero123Config`'s fields."""
    if config is None:
        return None
    if isinstance(config, (str, Path)):
        return hashlib.sha256(Path(config).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()


def checkpoint_entry(checkpoint: Path, *, use_ema: bool, config=None,
                     digests: DigestIndex | None = None) -> CheckpointEntry:
    """The manifest's record of a checkpoint (hashes it unless its digest is known)."""
    digests = digests or DigestIndex()
    checkpoint = Path(checkpoint).expanduser()
    return CheckpointEntry(path=str(checkpoint.resolve()), fingerprint=digests.digest(checkpoint),
                           size=digests.total_size(checkpoint), use_ema=bool(use_ema),
                           config_path=str(Path(config).resolve()) if isinstance(config, (str, Path)) else None,
                           config_sha256=config_digest(config))


def engine_key(checkpoint: CheckpointEntry, *, backend: str, precision: str, platform: Platform, max_refs: int,
               max_batch: int) -> str:
    """The cache directory name of an engine: readable prefix + a short hash of the remaining choices."""
    cc = platform.compute_capability
    device = f"sm{cc.replace('.', '')}" if cc else platform.device       # e.g. sm90; cpu; cuda (no GPU at the build)
    rest = json.dumps([checkpoint.fingerprint, checkpoint.use_ema, checkpoint.config_sha256, platform.gpu_name,
                       platform.compute_capability, max_batch], sort_keys=True)
    return (f"{checkpoint.fingerprint[:12]}-{backend}-{PRECISION_FLAGS[precision]}-{device}-r{max_refs}-"
            f"{hashlib.sha256(rest.encode()).hexdigest()[:8]}")


def engine_dirs(root: Path | None = None) -> list[Path]:
    """Engine directories under ``root`` (default: the cache), temporary and hidden ones excluded."""
    root = Path(root) if root is not None else engines_root()
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST_NAME).exists())


def cached_manifests(root: Path | None = None) -> list[tuple[Path, Manifest | CorruptEngineError]]:
    """Every engine directory of the cache with its manifest, or the error reading it."""
    out = []
    for d in engine_dirs(root):
        try:
            out.append((d, read_manifest(d)))
        except CorruptEngineError as exc:
            out.append((d, exc))
    return out


@dataclass
class EngineSelection:
    """What :func:`select_engines` decided: a loaded ``engine`` (None: use PyTorch), and when engines were
    found but not used, ``note``: one line saying why and how to rebuild them."""

    engine: "FastEngine | None" = None
    note: str | None = None


def _weights_problems(manifest: Manifest, checkpoint: Path, use_ema: bool, config, digests: DigestIndex) -> list[str]:
    built = manifest.checkpoint
    problems = []
    if built.use_ema != use_ema:
        problems.append(f"built with{'' if built.use_ema else 'out'} the EMA weights")
    if built.config_sha256 != config_digest(config):
        problems.append("built with another model config (--config)")
    if built.size != digests.total_size(checkpoint) or built.fingerprint != digests.digest(checkpoint):
        problems.append(f"built from other weights ({built.path}, sha256 {built.fingerprint[:12]}...)")
    return problems


def select_engines(checkpoint: Path | None, requested: EngineConfig, *, use_ema: bool = True, config=None,
                   root: Path | None = None, digests: DigestIndex | None = None) -> EngineSelection:
    """The engine policy: which built engines a pipeline over ``checkpoint`` uses (``requested.engines``).

    * "off", or the reference backend: none.
    * a path: that directory, after every check (and, with a checkpoint, that it was built from those
      weights with that EMA choice and config); raises the typed
      :class:`~vfrt.engines.engine_dir.EngineError` otherwise.
    * "auto": a directory of the cache built from these weights for this run's device kind that fits
      this machine and the requested options; when only unfitting ones exist, none, with a ``note``
      naming the first reason and the rebuild.
    """
    digests = digests or DigestIndex()
    if requested.engines == "off" or requested.backend == "reference":
        return EngineSelection()
    if isinstance(requested.engines, Path):
        directory = requested.engines
        if checkpoint is not None:
            manifest = read_manifest(directory)
            problems = _weights_problems(manifest, Path(checkpoint), use_ema, config, digests)
            if problems:
                raise EngineMismatchError(directory, problems, f"vfrt build-engines -c {checkpoint} --out {directory}")
        return EngineSelection(load_engine(directory, requested))
    if checkpoint is None:
        return EngineSelection()
    checkpoint = Path(checkpoint)
    manifests = [(d, m) for d, m in cached_manifests(root) if isinstance(m, Manifest)]
    if not manifests or not checkpoint.exists():
        return EngineSelection()
    size, cfg = digests.total_size(checkpoint), config_digest(config)
    candidates = [(d, m) for d, m in manifests
                  if (m.checkpoint.size, m.checkpoint.use_ema, m.checkpoint.config_sha256) == (size, use_ema, cfg)]
    if not candidates:
        return EngineSelection()
    device = resolve_device(requested.device)
    candidates = [(d, m) for d, m in candidates if m.platform.device == device.type]    # engines for this run's device
    if not candidates:
        return EngineSelection()
    fingerprint = digests.digest(checkpoint)
    candidates = [(d, m) for d, m in candidates if m.checkpoint.fingerprint == fingerprint]
    default = "float16" if device.type == "cuda" else "float32"
    here = dataclasses.replace(requested, device=str(device))
    candidates.sort(key=lambda dm: dm[1].built_at, reverse=True)          # newest first, then the default precision
    candidates.sort(key=lambda dm: dm[1].precision != default)
    reasons = []
    for directory, _ in candidates:
        try:
            return EngineSelection(load_engine(directory, here))
        except (EngineMismatchError, CorruptEngineError, EngineLoadError) as exc:
            reasons.append(str(exc))
    if not reasons:
        return EngineSelection()
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return EngineSelection(note=f"not using the built engines for {checkpoint}: {reasons[0]}{more}; running the "
                                "PyTorch path")

