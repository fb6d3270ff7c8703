"""Engines: one protocol (:mod:`vfrt.engines.base`), two engines, pluggable executors.

* ``reference`` - fp32 eager PyTorch, op-for-op the original ViewFusion sampler (2K UNet batch).
* ``fast``      - exact identities (K+1 rows, collapsed cross-attention, cached first-conv share,
                  time-embedding tables, combined update) over executors of the network specs, with the
                  step in CUDA graphs (:mod:`vfrt.engines.fast`, docs/ARCHITECTURE.md).

Choices are made once, by :meth:`vfrt.engines.config.EngineConfig.resolve`. Networks built once
(``vfrt build-engines``) live in engine directories (:mod:`vfrt.engines.engine_dir`); whether a run
uses them is decided by :func:`vfrt.engines.engine_cache.select_engines`.
"""
from __future__ import annotations

from vfrt.engines.config import EngineConfig


def create_engine(model, requested: EngineConfig, *, copy_weights: bool = True, views_so_far: int = 0):
    """The engine ``requested`` resolves to, around a loaded :class:`vfrt.models.Zero123`.

    ``copy_weights=False`` lets the fast engine convert the model it is given in place (the caller
    gives up the model); the reference engine moves the model to its device either way.
    """
    config = requested.resolve(views_so_far)
    if config.backend == "reference":
        from vfrt.engines.reference import ReferenceEngine
        return ReferenceEngine(model, config)
    from vfrt.engines.fast import FastEngine
    return FastEngine.from_model(model, requested, copy_weights=copy_weights, views_so_far=views_so_far)
