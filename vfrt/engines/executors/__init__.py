"""Executors: how a network spec is run. One protocol (:class:`Executor`), one class per way of running.

* :class:`EagerExecutor`    - the PyTorch module as it is (the reference for every other executor).
* :class:`CompiledExecutor` - the module through ``torch.compile`` (dynamic rows), eager if compiling fails.

Built engines (``vfrt build-engines``) run through one more executor per backend, each in its own
module imported only when used: :mod:`.aoti` (AOTInductor packages), :mod:`.onnxruntime` (ONNX
Runtime sessions), :mod:`.tensorrt` (TensorRT / TensorRT-RTX plans). docs/ARCHITECTURE.md walks
through the eager one.
"""
from __future__ import annotations

from vfrt.engines.executors.base import Executor, ExecutorBase, ExecutorLoadError, ExecutorStateError
from vfrt.engines.executors.compiled import CompiledExecutor
from vfrt.engines.executors.eager import EagerExecutor

__all__ = ["Executor", "ExecutorBase", "ExecutorLoadError", "ExecutorStateError", "EagerExecutor", "CompiledExecutor"]
