"""Engines: one protocol (:mod:`vfrt.engines.base`), several backends.

* ``reference`` - fp32 eager PyTorch, op-for-op the original ViewFusion sampler (2K UNet batch).
* ``fast``      - exact-math GPU engine: K+1 evaluations, collapsed cross-attention, view cache,
                  fp16, fused DDIM update, CUDA-graph step (:mod:`vfrt.engines.fast`).
"""
from __future__ import annotations

BACKENDS = ("reference", "fast")


def create_engine(backend: str, model, device, **kwargs):
    """Build the engine named ``backend`` around a loaded :class:`vfrt.models.Zero123`."""
    if backend == "reference":
        from vfrt.engines.reference import ReferenceEngine
        return ReferenceEngine(model, device=device, **kwargs)
    if backend == "fast":
        from vfrt.engines.fast import FastEngine
        return FastEngine(model, device=device, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
