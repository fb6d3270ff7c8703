"""The executor protocol and a base class with the lifecycle every executor shares.

Lifecycle (Polygraphy's runners): construct (cheap), ``load()`` (allocate, deserialize, warm up),
``run()`` any number of times, ``close()``; ``with executor:`` does load and close. Public methods
check the state and the inputs against the spec; subclasses implement ``_load_impl`` and
``_run_impl`` only.

Ownership: ``run`` returns tensors the caller owns unless ``outputs`` is given, in which case the
results are written into those caller-owned tensors and returned. A CUDA graph that captures a
``run`` freezes the shapes and the addresses of every tensor involved: the step (``vfrt.engines.step``)
feeds an executor from static buffers for that reason, and captures it only if ``capturable``.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Protocol, runtime_checkable

import torch

from vfrt.engines.specs import NetworkSpec, SpecMismatchError


class ExecutorStateError(RuntimeError):
    """An executor was used before ``load()`` or after ``close()``."""


class ExecutorLoadError(RuntimeError):
    """An executor could not load its artifact: the runtime it needs is missing, or refuses the file.
    Each backend's load errors derive from it, so an engine load reports them in one way."""


@runtime_checkable
class Executor(Protocol):
    """What the engine needs of a way to run one network."""

    spec: NetworkSpec
    #: short name of the way it runs ("eager", "compiled", ...), shown in benchmarks and `vfrt doctor`
    kind: str
    #: True when ``run`` may be captured in a CUDA graph (no host synchronisation, no allocation
    #: outside PyTorch's caching allocator, no CPU-side control flow on tensor values)
    capturable: bool

    def load(self) -> "Executor": ...

    def run(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None,
            stream: torch.cuda.Stream | None = None) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


class ExecutorBase:
    """Shared lifecycle and checks; subclasses set ``kind``/``capturable`` and implement the ``_impl`` methods."""

    kind = "base"
    capturable = False

    def __init__(self, spec: NetworkSpec):
        self.spec = spec
        self._state = "new"

    @property
    def loaded(self) -> bool:
        return self._state == "loaded"

    def load(self) -> "ExecutorBase":
        if self._state == "closed":
            raise ExecutorStateError(f"{self.kind} executor of {self.spec.name} was closed; make a new one")
        if self._state == "new":
            self._load_impl()
            self._state = "loaded"
        return self

    def close(self) -> None:
        if self._state == "loaded":
            self._close_impl()
        self._state = "closed"

    def __enter__(self):
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None,
            stream: torch.cuda.Stream | None = None) -> dict[str, torch.Tensor]:
        """Run the network on ``inputs`` (named as the spec says); see the module docstring for ownership."""
        if not self.loaded:
            raise ExecutorStateError(f"{self.kind} executor of {self.spec.name} is not loaded: call load() first")
        sizes = self.spec.check_inputs(inputs)
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            results = self._run_impl(inputs, sizes)
            if outputs is None:
                return results
            for name, target in outputs.items():
                target.copy_(results[name])
        return dict(outputs)

    def _named(self, result) -> dict[str, torch.Tensor]:
        """A module's return value (one tensor or a tuple in spec order) as {output name: tensor}."""
        values = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return dict(zip(self.spec.output_names, values))

    # ------------------------------------------------------------------ for subclasses
    def _load_impl(self) -> None:
        pass

    def _close_impl(self) -> None:
        pass

    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """The outputs for ``inputs``, already checked against the spec; ``sizes``: the axis sizes they imply."""
        raise NotImplementedError

    def _refuse_other_devices(self, inputs: Mapping[str, torch.Tensor], device: torch.device) -> None:
        """For executors that bind inputs by address: every input must already be on ``device``."""
        foreign = [name for name, value in inputs.items() if value.device != device]
        if foreign:
            raise SpecMismatchError(f"{self.spec.name}: inputs {foreign} are not on {device}")
