"""The AOTInductor exporter: one network spec -> one ``.pt2`` package (kernels + weights).

``torch.export`` traces the network's module with the spec's dynamic axes as symbolic sizes
(``strict=True``: TorchDynamo, the tracer ``torch.compile`` uses on the same modules), then
``aoti_compile_and_package`` compiles the graph and its C++ wrapper into a package that
:class:`vfrt.engines.executors.aoti.AOTIExecutor` loads.

The traced modules use the plain kernels (no Triton custom ops: those would need Python at run
time, and the packages must also serve the C++ runtime). Tracing and compiling run with cuDNN's
SDPA disabled, so the attention kernel baked into the package is flash / memory-efficient
attention: cuDNN's plans every new row count once, and an orbit meets 25 of them.

Before anything is compiled, :func:`prepare` makes sure this process can load what the compiler
will produce (:mod:`vfrt.engines.toolchain`): when the compiler's libstdc++ is not the one this
process uses, a tiny package is compiled once per toolchain and probe-loaded in a child.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._inductor
from torch import nn

from vfrt.engines.executors.aoti import SUFFIX  # noqa: F401 - the exporter's artifact suffix (build.py reads it here)
from vfrt.engines.fingerprint import cache_dir
from vfrt.engines.specs import AxisRange, NetworkSpec
from vfrt.engines.toolchain import LoadabilityCheck, Toolchain, describe_compiler, loaded_libstdcxx

log = logging.getLogger(__name__)



def inductor_compiler() -> str:
    """The C++ compiler Inductor will call (``$CXX``, else g++)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - an internal API; its answer is only a default
        return os.environ.get("CXX", "g++")


@dataclass(frozen=True)
class ToolchainReport:
    """Whether packages built by ``toolchain`` load in this process; ``preload``: libstdc++ files that
    made them load in a child (for ``LD_PRELOAD``)."""

    toolchain: Toolchain
    loaded: str | None
    ok: bool
    detail: str
    preload: tuple[str, ...]


def _probe_package(toolchain: Toolchain) -> Path:
    """A tiny CPU package built by ``toolchain`` (compiled once, kept in the cache)."""
    key = hashlib.sha256(json.dumps(toolchain.to_dict(), sort_keys=True).encode() + torch.__version__.encode())
    root = cache_dir() / "probes" / key.hexdigest()[:16]
    package = root / "probe.pt2"
    if package.is_file():
        return package
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}.pt2"
    log.warning("compiling a tiny package to check that code built by %s loads here (once per compiler)",
                toolchain.cxx)
    module = nn.Linear(4, 4).eval()
    program = torch.export.export(module, (torch.randn(2, 4),), strict=True)
    torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    os.replace(tmp, package)
    return package


def check_toolchain(check: LoadabilityCheck | None = None) -> ToolchainReport:
    """Can this process load packages the current compiler builds? Compiles and probes only when the
    compiler's libstdc++ is not the one loaded here (and caches the verdict)."""
    toolchain = describe_compiler(inductor_compiler())
    check = check or LoadabilityCheck()
    loaded = check.loaded
    if toolchain.libstdcxx is not None and toolchain.libstdcxx == loaded:
        return ToolchainReport(toolchain, loaded, True, "same libstdc++", ())
    verdict = check.verdict(toolchain, _probe_package(toolchain))
    return ToolchainReport(toolchain, loaded, bool(verdict["ok"]), str(verdict["detail"]), tuple(verdict["preload"]))


class ToolchainError(RuntimeError):
    """The C++ compiler Inductor needs is missing or broken."""


def prepare(device: torch.device) -> dict:
    """Check the toolchain before a build (raises :class:`~vfrt.engines.engine_errors.EngineLoadError` with
    the fix when this process could not load the packages, :class:`ToolchainError` when the compiler
    fails); returns the manifest's toolchain record."""
    try:
        report = check_toolchain()
    except Exception as exc:  # noqa: BLE001 - a compiler missing or broken, in whatever way it fails
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise ToolchainError(f"{first}; is a C++ compiler installed ($CXX, else g++)?") from exc
    if not report.ok:
        LoadabilityCheck().ensure(report.toolchain, _probe_package(report.toolchain), rebuild="vfrt build-engines ...")
    return {**report.toolchain.to_dict(), "loaded_libstdcxx": report.loaded or loaded_libstdcxx()}


def _example_sizes(spec: NetworkSpec) -> dict[str, int]:
    """Trace-time sizes: at least 2 where the range allows (a traced size of 1 would be specialised)."""
    return {name: min(rng.max, max(2, rng.opt)) for name, rng in spec.axes}


def export_network(spec: NetworkSpec, module: nn.Module, path: Path, device: torch.device) -> NetworkSpec:
    """Trace ``module`` (the network of ``spec``) and compile it into the package ``path``.

    Returns the spec the package was built for (the given one; an axis whose minimum cannot be traced
    symbolically is narrowed, with a warning).
    """
    import torch._dynamo
    generator = torch.Generator().manual_seed(0)
    inputs = spec.sample_inputs(_example_sizes(spec), device=device, generator=generator)
    axes = dict(spec.axes)
    try:
        program = _trace(spec, module, inputs, axes)
    except torch._dynamo.exc.UserError as exc:      # e.g. a size-1 minimum the tracer specialises
        narrowed = {n: AxisRange(max(2, r.min), max(2, r.opt), r.max) if r.max >= 2 else r for n, r in axes.items()}
        log.warning("%s: tracing with the axis minimum failed (%s); building for %s", spec.name,
                    str(exc).splitlines()[0][:200], {n: (r.min, r.max) for n, r in narrowed.items()})
        axes = narrowed
        program = _trace(spec, module, inputs, axes)
        spec = NetworkSpec(spec.name, spec.inputs, spec.outputs, tuple(axes.items()))
    with torch.no_grad(), _without_cudnn_attention():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return spec


@contextmanager
def _without_cudnn_attention():
    """Keep SDPA from choosing cuDNN while a package is traced and compiled (the choice is baked in)."""
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)


def _trace(spec: NetworkSpec, module: nn.Module, inputs: dict, axes: dict[str, AxisRange]):
    from torch.export import Dim
    dims = {name: Dim(name, min=rng.min, max=rng.max) for name, rng in axes.items() if rng.max > rng.min}
    dynamic = {t.name: {i: dims[a] for i, a in spec.dynamic_dims(t).items() if a in dims} or None
               for t in spec.inputs}
    with torch.no_grad(), _without_cudnn_attention():
        return torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic, strict=True)
