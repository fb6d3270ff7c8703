"""Exceptions raised by :mod:`vfrt.models`."""
from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: unreadable, untrusted pickle, or tensors that do not fit the model."""
