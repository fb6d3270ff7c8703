"""vfrt - the ViewFusion Runtime.

``from vfrt import Pipeline, SamplerConfig, EngineConfig, NoiseBank`` is the public entry point.
Heavy modules load lazily so ``import vfrt`` stays cheap.
"""
from __future__ import annotations

from vfrt.version import __version__

__all__ = ["Pipeline", "GenerationResult", "SamplerConfig", "EngineConfig", "NoiseBank", "__version__"]

_LAZY = {
    "Pipeline": "vfrt.runtime.pipeline",
    "GenerationResult": "vfrt.runtime.pipeline",
    "SamplerConfig": "vfrt.runtime.sampler",
    "EngineConfig": "vfrt.engines.config",
    "NoiseBank": "vfrt.runtime.noise",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vfrt' has no attribute {name!r}")
