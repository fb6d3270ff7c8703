"""Helpers shared by the CLI commands: checkpoint discovery and error translation."""
from __future__ import annotations

import os
from pathlib import Path

import click

#: where `vfrt run` looks for weights when --checkpoint is not given (in order)
DEFAULT_CHECKPOINT_PATHS = (
    Path("checkpoints/zero123-xl.ckpt"),
    Path("~/.cache/vfrt/zero123-xl.ckpt").expanduser(),
    Path("checkpoints/105000.ckpt"),
)

MISSING_WEIGHTS = """No Zero123 checkpoint found.

vfrt needs the Zero123 weights; they cannot be bundled. Get one of them (an original .ckpt /
.safetensors, or a diffusers folder such as zero123-xl-diffusers), e.g. zero123-xl.ckpt
(Zero-1-to-3 XL, ~15.5 GB; the original authors publish it with cvlab-columbia/zero123 -
e.g. https://huggingface.co/cvlab/zero123-weights/resolve/main/zero123-xl.ckpt), then either
  * put it at ./checkpoints/zero123-xl.ckpt or ~/.cache/vfrt/zero123-xl.ckpt, or
  * pass --checkpoint /path/to/zero123-xl.ckpt (or set VFRT_CHECKPOINT).
To try the tool without weights, make a tiny random checkpoint (its views are noise):
  vfrt make-test-checkpoint /tmp/vfrt-tiny && vfrt run IMAGE --checkpoint /tmp/vfrt-tiny/tiny.ckpt --config /tmp/vfrt-tiny/tiny.yaml"""


def checkpoint_candidates(path: str | None = None) -> list[Path]:
    """Where to look, in order: ``path`` if given, else ``$VFRT_CHECKPOINT`` if set, else the defaults."""
    given = path or os.environ.get("VFRT_CHECKPOINT")
    return [Path(given).expanduser()] if given else list(DEFAULT_CHECKPOINT_PATHS)


def find_checkpoint(path: str | None = None) -> Path | None:
    """The checkpoint `vfrt run` would use (a file, or a diffusers folder when named), or None."""
    return next((p for p in checkpoint_candidates(path) if p.exists()), None)


def resolve_checkpoint(path: str | None) -> tuple[Path, str]:
    """The checkpoint to use and where its name came from (" (from $VFRT_CHECKPOINT)", " (default location)"
    or ""), or a ClickException explaining where to get one."""
    source = "" if path else " (from $VFRT_CHECKPOINT)" if os.environ.get("VFRT_CHECKPOINT") else " (default location)"
    found = find_checkpoint(path)
    if found is not None:
        return found, source
    given = path or os.environ.get("VFRT_CHECKPOINT")
    if given:
        raise click.ClickException(f"checkpoint not found: {Path(given).expanduser()}{source}\n\n{MISSING_WEIGHTS}")
    raise click.ClickException(MISSING_WEIGHTS)


def load_pipeline(checkpoint, config, engine, trust_checkpoint: bool, use_ema: bool, source: str = ""):
    """Build a Pipeline (``engine``: an :class:`vfrt.engines.config.EngineConfig`), turning every expected
    failure into a one-line ClickException that names the checkpoint (and where its name came from). Without
    a checkpoint, ``engine.engines`` names the engines to run."""
    from vfrt.engines.engine_dir import EngineError
    from vfrt.models import CheckpointError
    from vfrt.runtime.pipeline import Pipeline
    try:
        if checkpoint is None:
            return Pipeline.from_engines(engine.engines, engine=engine)
        return Pipeline.from_checkpoint(checkpoint, config=config, engine=engine, trust_checkpoint=trust_checkpoint,
                                        use_ema=use_ema)
    except (CheckpointError, EngineError) as exc:
        raise click.ClickException(f"{exc}{source}" if source else str(exc)) from exc
    except (RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(f"could not set up the pipeline from {checkpoint}{source}: {exc}") from exc
