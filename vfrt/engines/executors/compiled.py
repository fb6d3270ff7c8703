"""The compiled executor: a network's module through ``torch.compile`` (TorchInductor).

The dynamic axes of the spec (the row count of the UNet step) are marked dynamic, so one compiled
graph serves every K; the forward always runs without autograd, so the grad mode of the caller
cannot trigger a second compile. Compiling happens at the first ``run`` (tens of seconds at full
size, cached on disk by Inductor for later processes: docs/PERF.md, "Cold start"); if it fails the
executor logs one warning and runs the module eagerly from then on (same results).
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn

from vfrt.engines.executors.base import ExecutorBase
from vfrt.engines.specs import NetworkSpec

log = logging.getLogger(__name__)


class CompiledExecutor(ExecutorBase):
    """``torch.compile(module)`` with the spec's dynamic axes; ``compiled`` turns False if it fell back.

    Args:
        backend: torch.compile's backend ("inductor"; another one only for tests and debugging).
    """

    kind = "compiled"

    def __init__(self, spec: NetworkSpec, module: nn.Module, backend="inductor"):
        super().__init__(spec)
        self.module = module
        self.backend = backend
        first = next(module.parameters(), None)
        self.capturable = first is not None and first.device.type == "cuda"
        self.compiled = True
        self._verified = False
        self._dynamic = {t.name: list(spec.dynamic_dims(t)) for t in spec.inputs}
        self._forward = None

    def _load_impl(self) -> None:
        self._forward = self._compile(self.module)

    def _compile(self, module):
        """The compiled callable (subclasses may compile differently, e.g. benchmarks' Inductor options)."""
        return torch.compile(module, backend=self.backend, dynamic=None)

    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        if not self.compiled:
            return self._named(self.module(**inputs))
        for name, dims in self._dynamic.items():
            for dim in dims:
                torch._dynamo.mark_dynamic(inputs[name], dim)
        if self._verified:
            return self._named(self._forward(**inputs))
        try:        # the first call compiles: fall back to eager if that fails
            result = self._forward(**inputs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure; eager gives the same result
            first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
            log.warning("torch.compile of %s failed (%s: %s); running it uncompiled (slower)", self.spec.name,
                        type(exc).__name__, first_line)
            self.compiled = False
            return self._named(self.module(**inputs))
        self._verified = True
        return self._named(result)
