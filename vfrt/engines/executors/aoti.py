"""The AOTInductor executor: a network compiled ahead of time into a ``.pt2`` package.

``vfrt build-engines`` (:mod:`vfrt.export.aoti`) traces a network with ``torch.export`` (its
dynamic axes as symbolic sizes) and compiles it with ``torch._inductor.aoti_compile_and_package``:
a shared library with the kernels and the weights inside. Loading it takes about a second and
needs no checkpoint, no tracing and no compiling - the point of building once.

On CUDA the package is loaded with ``run_single_threaded=True``, which is what makes its ``run``
capturable: the step (:mod:`vfrt.engines.step`) records it in a CUDA graph with the guided update.
Inputs are handed over contiguous (the package was traced with contiguous inputs and assumes their
strides) and outputs are returned contiguous, so one package's output (e.g. the conditioning's h0,
kept in the step's static buffers) feeds the next without a copy; the caller owns them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from vfrt.engines.executors.base import ExecutorBase
from vfrt.engines.specs import NetworkSpec

#: file name suffix of an AOTInductor package
SUFFIX = ".pt2"


def backend_version() -> str:
    """AOTInductor packages load only in the torch that built them."""
    return f"torch {torch.__version__}"


class AOTIExecutor(ExecutorBase):
    """Runs one AOTInductor package; capturable in a CUDA graph on a CUDA device.

    Args:
        spec: the network's spec (from the engine's manifest).
        package: the ``.pt2`` file.
        device: where it runs (a CUDA package runs on the given GPU; a CPU package on the CPU).
    """

    kind = "aoti"

    def __init__(self, spec: NetworkSpec, package: Path, device: torch.device | str):
        super().__init__(spec)
        self.package = Path(package)
        self.device = torch.device(device)
        self.capturable = self.device.type == "cuda"
        self._run = None

    def _load_impl(self) -> None:
        index = -1
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._run = load_package(self.package, self.spec.input_names, run_single_threaded=self.capturable,
                                 device_index=index)

    def _close_impl(self) -> None:
        self._run = None

    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        outputs = self._run([inputs[name].contiguous() for name in self.spec.input_names])
        return {name: value.contiguous() for name, value in zip(self.spec.output_names, outputs)}


def load_package(path: Path, input_names: Sequence[str], *, run_single_threaded: bool,
                 device_index: int) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """Load an AOTInductor package; returns ``run(inputs in spec order) -> outputs in spec order``.

    ``torch._inductor.aoti_load_package`` imports all of Inductor and TorchDynamo first, about a second
    of a run's start-up (docs/PERF.md) that loading does not need. The package loader it wraps is
    called directly when the package's call signature is the one the exporter traced (the spec's
    inputs as keyword arguments, in order); the documented function is the fallback otherwise.
    """
    try:
        import torch.utils._pytree as pytree
        from torch._C._aoti import AOTIModelPackageLoader
        loader = AOTIModelPackageLoader(str(path), "model", run_single_threaded, 1, device_index)
        _, traced = pytree.tree_flatten(((), {name: 0 for name in input_names}))
        if pytree.treespec_loads(loader.get_call_spec()[0]) == traced:
            return lambda tensors: list(loader.boxed_run(list(tensors)))
    except (ImportError, AttributeError, TypeError, RuntimeError):
        pass
    import torch._inductor
    model = torch._inductor.aoti_load_package(str(path), run_single_threaded=run_single_threaded,
                                              device_index=device_index)

    def run(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        out = model(**dict(zip(input_names, tensors)))
        return [out] if isinstance(out, torch.Tensor) else list(out)
    return run


def load_executors(packages: Mapping[str, Path], specs: Mapping[str, NetworkSpec], device: torch.device, *,
                   toolchain: Mapping[str, Any] | None, rebuild: str) -> dict[str, AOTIExecutor]:
    """The executors (not loaded yet) of ``packages`` ({network: its ``.pt2`` file}), after making sure this
    process can load packages built with ``toolchain`` (the manifest's record; :mod:`vfrt.engines.toolchain`
    probes the smallest package in a child and raises :class:`~vfrt.engines.engine_errors.EngineLoadError`
    with the fix and ``rebuild`` instead of crashing)."""
    from vfrt.engines.toolchain import LoadabilityCheck, Toolchain
    smallest = min(packages.values(), key=lambda path: Path(path).stat().st_size)
    LoadabilityCheck().ensure(Toolchain.from_dict(toolchain) if toolchain else None, Path(smallest), rebuild)
    return {name: AOTIExecutor(specs[name], Path(path), device) for name, path in packages.items()}
