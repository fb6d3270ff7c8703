"""Errors raised by :mod:`vfrt.recon`.

Every error carries a message a user can act on; the CLI turns them into
``click.ClickException`` without a traceback.
"""
from __future__ import annotations


class ReconError(Exception):
    """Base class of every error :mod:`vfrt.recon` raises on purpose."""


class InputDataError(ReconError):
    """The input folder cannot be used (too few views, missing cameras, bad images...)."""


class ConfigError(ReconError, ValueError):
    """A :class:`~vfrt.recon.config.ReconConfig` field is out of range."""


class TrainingDivergedError(ReconError):
    """The NeuS loss became NaN or infinite; ``step`` is the first bad step (0-based)."""

    def __init__(self, step: int, detail: str = "") -> None:
        self.step = step
        msg = f"training diverged: non-finite loss at step {step}"
        if detail:
            msg += f" ({detail})"
        msg += "; try a lower --lr, more warm-up steps, or --no-mixed-precision"
        super().__init__(msg)


class EmptySurfaceError(ReconError):
    """The trained SDF has no zero crossing inside the bounding volume."""


class BackendUnavailableError(ReconError):
    """A requested hash-grid backend (triton, tcnn) cannot run here."""


class OutputDirError(ReconError):
    """The output folder cannot be used (a file in the way, foreign contents, not writable)."""
