"""The eager executor: a network's PyTorch module, called as it is.

It is the reference every other executor of the same spec is compared with, and the smallest
complete example of an executor (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from vfrt.engines.executors.base import ExecutorBase
from vfrt.engines.specs import NetworkSpec


class EagerExecutor(ExecutorBase):
    """Runs ``module(**inputs)``; capturable in a CUDA graph when the module is on a CUDA device."""

    kind = "eager"

    def __init__(self, spec: NetworkSpec, module: nn.Module):
        super().__init__(spec)
        self.module = module
        first = next(module.parameters(), None)
        self.capturable = first is not None and first.device.type == "cuda"

    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        return self._named(self.module(**inputs))
