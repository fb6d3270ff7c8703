"""Executors: how a network spec is run. One protocol (:class:`Executor`), one class per way of running.

* :class:`EagerExecutor`    - the PyTorch module as it is (the reference for every other executor).
* :class:`CompiledExecutor` - the module through ``torch.compile`` (dynamic rows), eager if compiling fails.

A new backend (an AOTInductor package, an ONNX Runtime session, a TensorRT engine) is one more
executor of the same specs: docs/ARCHITECTURE.md walks through the eager one.
"""
from __future__ import annotations

from vfrt.engines.executors.base import Executor, ExecutorBase, ExecutorStateError
from vfrt.engines.executors.compiled import CompiledExecutor
from vfrt.engines.executors.eager import EagerExecutor

__all__ = ["Executor", "ExecutorBase", "ExecutorStateError", "EagerExecutor", "CompiledExecutor"]
