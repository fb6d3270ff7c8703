"""The AOTInductor exporter: one network spec -> one ``.pt2`` package (kernels + weights).

``torch.export`` traces the network's module with the spec's dynamic axes as symbolic sizes
(``strict=True``: TorchDynamo, the tracer ``torch.compile`` uses on the same modules), then
``aoti_compile_and_package`` compiles the graph and its C++ wrapper into a package that
:class:`vfrt.engines.executors.aoti.AOTIExecutor` loads.

The traced modules use the plain kernels (no Triton custom ops: those would need Python at run
time, and the packages must also serve the C++ runtime). Tracing and compiling run with cuDNN's
SDPA disabled, so the attention kernel baked into the package is flash / memory-efficient
attention: cuDNN's plans every new row count once, and an orbit meets 25 of them.

A build with several jobs (``vfrt build-engines --jobs N``, :func:`export_in_children`) traces the networks
here and compiles each in a child process (:mod:`vfrt.export.aoti_compile`), up to N at once: a compile is
mostly single-threaded code generation and C++ / Triton compilation, so the build then takes about as long
as its longest compile (the UNet's) instead of the sum of all six.

Before anything is compiled, :func:`prepare` makes sure this process can load what the compiler
will produce (:mod:`vfrt.engines.toolchain`): when the compiler's libstdc++ is not the one this
process uses, a tiny package is compiled once per toolchain and probe-loaded in a child.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch._inductor
from torch import nn

import vfrt
from vfrt.engines.executors.aoti import SUFFIX  # noqa: F401 - the exporter's artifact suffix (build.py reads it here)
from vfrt.engines.fingerprint import cache_dir
from vfrt.engines.specs import AxisRange, NetworkSpec
from vfrt.engines.toolchain import LoadabilityCheck, Toolchain, describe_compiler, loaded_libstdcxx
from vfrt.export.jobs import ChildDone, ChildJob, ExportJob, ExportJobError, one_line, run_children

log = logging.getLogger(__name__)

#: the order of a parallel build's compiles: longest first (their compile times on a GPU), so that the UNet's,
#: the build's critical path, starts at once and the short ones fill the slots beside it
COMPILE_ORDER = ("unet_step", "clip_image", "vae_decoder", "vae_encoder", "conditioning", "time_embedding")


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
    """Trace ``module`` (the network of ``spec``) and compile it into the package ``path``, in this process.

    Returns the spec the package was built for (see :func:`trace_network`).
    """
    program, spec = trace_network(spec, module, device)
    compile_package(program, path, device)
    return spec


def trace_network(spec: NetworkSpec, module: nn.Module, device: torch.device):
    """``torch.export`` of ``module`` (the network of ``spec``) over the spec's dynamic axes.

    Returns ``(ExportedProgram, spec it was traced for)``: the given spec, or, when an axis whose minimum
    cannot be traced symbolically (a size-1 minimum the tracer specialises), that axis narrowed, with a warning.
    """
    import torch._dynamo
    generator = torch.Generator().manual_seed(0)
    inputs = spec.sample_inputs(_example_sizes(spec), device=device, generator=generator)
    axes = dict(spec.axes)
    try:
        return _trace(spec, module, inputs, axes), spec
    except torch._dynamo.exc.UserError as exc:
        narrowed = {n: AxisRange(max(2, r.min), max(2, r.opt), r.max) if r.max >= 2 else r for n, r in axes.items()}
        log.warning("%s: tracing with the axis minimum failed (%s); building for %s", spec.name,
                    str(exc).splitlines()[0][:200], {n: (r.min, r.max) for n, r in narrowed.items()})
        program = _trace(spec, module, inputs, narrowed)
        return program, NetworkSpec(spec.name, spec.inputs, spec.outputs, tuple(narrowed.items()))


def compile_package(program, path: Path, device: torch.device) -> None:
    """Compile a traced program (an ``ExportedProgram``) for ``device`` into the AOTInductor package ``path``."""
    with torch.no_grad(), _without_cudnn_attention(), cpu_isa_settings(device):
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


#: torch's switch for its CPU vector-ISA probe (see :func:`cpu_isa_settings`)
VEC_ISA_OK = "TORCHINDUCTOR_VEC_ISA_OK"


@contextmanager
def cpu_isa_settings(device: torch.device | str, environ: Mapping[str, str] = os.environ):
    """Inductor's choice of CPU vector instructions while compiling for ``device``.

    Every compiling process first probes which vector ISAs work here: per ISA a test build and a fresh
    Python that loads it (docs/PERF.md: the larger part of a minute per process on the H200 machine, once per
    child in a parallel build). The ISA only sets the flags of CPU kernels, and a CUDA package holds none
    (the C++ wrapper aside), so CUDA builds take the ISAs the processor advertises (``cpp.vec_isa_ok``)
    instead of probing; CPU builds keep the probe, and so does a build whose environment sets
    ``TORCHINDUCTOR_VEC_ISA_OK`` itself.
    """
    if torch.device(device).type != "cuda" or VEC_ISA_OK in environ:
        yield
        return
    import torch._inductor.config as inductor_config
    with inductor_config.patch({"cpp.vec_isa_ok": True}):
        yield


def export_in_children(jobs: Sequence[ExportJob], device: torch.device, workers: int,
                       on_done: ChildDone) -> dict[str, NetworkSpec]:
    """Export ``jobs`` with up to ``workers`` compiles at once, each in a child process.

    The networks are traced here one after another, in :data:`COMPILE_ORDER`, each saved into a staging
    folder beside the packages and handed to a ``python -m vfrt.export.aoti_compile`` child as soon as a
    slot is free: the UNet's compile, the build's longest, starts first and the rest run beside it. The
    staging folder is removed before this returns. ``on_done(network, seconds)`` is called as each
    package is written (seconds: its trace and compile). Returns {network: the spec its package was built for}.

    Raises:
        ExportJobError: naming the network whose trace or compile failed (the other children are stopped).
    """
    workers = max(1, min(workers, len(jobs)))
    rank = {name: i for i, name in enumerate(COMPILE_ORDER)}
    ordered = sorted(jobs, key=lambda job: rank.get(job.network, len(rank)))
    staging = Path(tempfile.mkdtemp(prefix=".traced-", dir=ordered[0].path.parent))
    specs: dict[str, NetworkSpec] = {}
    trace_seconds: dict[str, float] = {}

    def children():
        for job in ordered:
            started = time.perf_counter()
            program_path = staging / f"{job.network}.program.pt2"
            try:
                program, specs[job.network] = trace_network(job.spec, job.module, device)
                torch.export.save(program, str(program_path))
            except Exception as exc:  # noqa: BLE001 - tracer errors of every kind
                raise ExportJobError(job.network, one_line(exc)) from exc
            del program
            trace_seconds[job.network] = time.perf_counter() - started
            log.info("traced %s in %.1f s; compiling it in a child", job.network, trace_seconds[job.network])
            yield ChildJob(job.network, (sys.executable, "-m", "vfrt.export.aoti_compile", str(program_path),
                                         str(job.path), str(device)))
    try:
        run_children(children(), workers, env=child_environment(workers),
                     on_done=lambda name, seconds: on_done(name, trace_seconds[name] + seconds))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {job.network: specs[job.network] for job in jobs}


def child_environment(workers: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of a compiling child: this process's, with the machine's cores shared among
    ``workers`` children (``TORCHINDUCTOR_COMPILE_THREADS``, unless set) and this ``vfrt`` importable
    (``PYTHONPATH``: the parent may run from a source tree)."""
    env = dict(environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    source = str(Path(vfrt.__file__).resolve().parents[1])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if source not in paths and source not in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        env["PYTHONPATH"] = os.pathsep.join([source, *paths])
    return env


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
