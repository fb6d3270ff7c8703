"""vfrt - the ViewFusion Runtime.

``from vfrt import Pipeline, NoiseBank`` is the public entry point. Heavy modules load lazily so
``import vfrt`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Pipeline", "NoiseBank", "GenerationResult", "__version__"]


def __getattr__(name):
    if name in ("Pipeline", "GenerationResult"):
        from vfrt.runtime import pipeline
        return getattr(pipeline, name)
    if name == "NoiseBank":
        from vfrt.runtime.noise import NoiseBank
        return NoiseBank
    raise AttributeError(f"module 'vfrt' has no attribute {name!r}")
