"""Build TensorRT plans from the exported ONNX graphs (``vfrt.export.onnx``), one per network.

One code path for both flavours (:func:`vfrt.engines.executors.tensorrt.import_tensorrt`):

* ``tensorrt`` builds on the GPU the plan will run on (Jetson, data-centre GPUs); the plan records
  that GPU's compute capability. A timing cache file (``BuildConfig.timing_cache``) carries kernel
  timings from one build to the next.
* ``tensorrt_rtx`` builds ahead of time without a GPU for target compute capabilities (all Ampere+
  targets it knows when no GPU is here, else this GPU's); kernels are specialised on the target at
  first run. It has no timing cache (a no-op there).

Both build strongly typed networks: the precision is the ONNX graph's (fp16 graphs give fp16
engines), with no precision flags. Each network gets one optimisation profile over its spec's
dynamic axes (min/opt/max rows for the UNet step). The parsed network's inputs and outputs are
checked against the spec before building; a plan is written under a temporary name and renamed
when complete.

``vfrt build-engines --backend tensorrt`` builds network by network into its engine directory
(:class:`PlanExporter`, registered in :data:`vfrt.export.build.EXPORTERS`); :func:`build_tensorrt_engine`
builds all six into a folder and returns their records (Python API).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vfrt.engines.executors.tensorrt import (PlanInfo, TensorRTUnavailableError, capability_name, import_tensorrt,
                                             io_problems, make_logger, rtx_targets, torch_dtype)
from vfrt.engines.specs import NETWORK_NAMES, NetworkSpec, Networks
from vfrt.export.onnx import OnnxExportConfig, check_precision, export_checked, tools

log = logging.getLogger(__name__)

__all__ = ["PlanExporter", "TensorRTBuildConfig", "TensorRTBuildError", "TensorRTUnavailableError", "build_plan",
           "build_tensorrt_engine", "profile_shapes", "rtx_targets", "target_capabilities"]


class TensorRTBuildError(RuntimeError):
    """A plan could not be built (parser or builder errors, a graph unlike its spec, impossible targets)."""


@dataclass(frozen=True)
class TensorRTBuildConfig:
    """How plans are built.

    Attributes:
        flavour: "tensorrt", "tensorrt_rtx", or "auto" (TensorRT if installed, else TensorRT-RTX).
        compute_capabilities: TensorRT-RTX targets ("8.6", "12.0", ...); None: this GPU's, or every
            Ampere+ target the installed TensorRT-RTX knows when there is no GPU. TensorRT builds for
            the GPU it runs on only (None or that GPU's).
        timing_cache: file read before and written after each build (TensorRT only; created if absent).
        optimization_level: builder optimisation level 0..5 (None: the builder's default).
        keep_onnx: keep the intermediate ONNX graphs in ``<out_dir>/onnx`` (else removed after building).
        onnx: how the graphs are exported and compared.
    """

    flavour: Literal["auto", "tensorrt", "tensorrt_rtx"] = "auto"
    compute_capabilities: tuple[str, ...] | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = None
    keep_onnx: bool = False
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)

    def __post_init__(self):
        if self.flavour not in ("auto", "tensorrt", "tensorrt_rtx"):
            raise ValueError(f"flavour must be auto, tensorrt or tensorrt_rtx, got {self.flavour!r}")
        if self.compute_capabilities is not None:
            bad = [c for c in self.compute_capabilities if not _is_capability(c)]
            if bad or not self.compute_capabilities:
                raise ValueError(f"compute_capabilities are like '8.6' (major.minor), got {self.compute_capabilities!r}")
        if self.optimization_level is not None and self.optimization_level not in range(6):
            raise ValueError(f"optimization_level must be 0..5, got {self.optimization_level!r}")


def _is_capability(text) -> bool:
    parts = str(text).split(".")
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def target_capabilities(trt, requested: tuple[str, ...] | None, device_capability: tuple[int, int] | None
                        ) -> tuple[str, ...]:
    """The compute capabilities a build targets (see :class:`TensorRTBuildConfig`).

    Raises:
        TensorRTBuildError: TensorRT without a GPU, a TensorRT target other than this GPU, or a
            TensorRT-RTX target it does not know.
    """
    here = capability_name(device_capability) if device_capability is not None else None
    known = rtx_targets(trt)
    if not known:
        if here is None:
            raise TensorRTBuildError(f"{trt.__name__} builds on the GPU the plan will run on, and there is none here; "
                                     "use tensorrt_rtx to build for RTX GPUs without one")
        if requested is not None and tuple(requested) != (here,):
            raise TensorRTBuildError(f"{trt.__name__} builds for this GPU ({here}) only, not {', '.join(requested)}")
        return (here,)
    if requested is not None:
        unknown = [c for c in requested if c not in known]
        if unknown:
            raise TensorRTBuildError(f"{trt.__name__} {trt.__version__} cannot target compute capability "
                                     f"{', '.join(unknown)}; it knows {', '.join(known)}")
        return tuple(dict.fromkeys(requested))
    if here in known:
        return (here,)
    if here is not None:
        log.warning("%s cannot target this GPU (compute capability %s); building for the GPUs it supports",
                    trt.__name__, here)
    return tuple(c for c in known if int(c.split(".")[0]) >= 8)


def profile_shapes(spec: NetworkSpec) -> dict[str, list[list[int]]]:
    """{input: [min shape, opt shape, max shape]}: the optimisation profile of a spec's dynamic axes."""
    points = [spec.input_shapes(p) for p in ("min", "opt", "max")]
    return {t.name: [list(shapes[t.name]) for shapes in points] for t in spec.inputs}


def build_plan(trt, onnx_path: Path, spec: NetworkSpec, plan_path: Path, targets: tuple[str, ...],
               config: TensorRTBuildConfig, onnx_record: dict | None = None) -> PlanInfo:
    """Parse ``onnx_path``, check it against ``spec``, build for ``targets`` and write ``plan_path``.

    Raises:
        TensorRTBuildError: parser errors, inputs/outputs unlike the spec, or the builder failing.
    """
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if typed is None else 1 << int(typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"{trt.__name__} cannot parse {onnx_path.name}: {'; '.join(errors) or 'no message'}")
    io = {}
    for tensors, is_input in (([network.get_input(i) for i in range(network.num_inputs)], True),
                              ([network.get_output(i) for i in range(network.num_outputs)], False)):
        io.update({t.name: (is_input, torch_dtype(t.dtype)) for t in tensors})
    problems = io_problems(spec, io)
    if problems:
        raise TensorRTBuildError(f"{onnx_path.name} does not fit the {spec.name} spec: " + "; ".join(problems))

    build_config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(spec)
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    build_config.add_optimization_profile(profile)
    known = rtx_targets(trt)
    if known:
        build_config.num_compute_capabilities = len(targets)
        for i, capability in enumerate(targets):
            build_config.set_compute_capability(known[capability], i)
    if config.optimization_level is not None:
        build_config.builder_optimization_level = config.optimization_level
    if known and config.timing_cache is not None:
        log.info("%s has no timing cache (kernels are specialised at first run); %s is not used", trt.__name__,
                 config.timing_cache)
    cache = _load_timing_cache(build_config, config.timing_cache) if not known else None

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, build_config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise TensorRTBuildError(f"{trt.__name__} could not build {spec.name}: "
                                 + ("; ".join(logger.errors) or "no message"))
    data = memoryview(serialized)
    partial = plan_path.with_name(plan_path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, plan_path)
    if cache is not None:
        _save_timing_cache(cache, config.timing_cache)
    log.info("built %s with %s %s for %s in %.1f s (%.1f MB)", spec.name, trt.__name__, trt.__version__,
             ", ".join(targets), seconds, len(data) / 1e6)
    return PlanInfo(plan=plan_path.name, flavour=trt.__name__, version=trt.__version__, compute_capabilities=targets,
                    precision=(onnx_record or {}).get("precision", "unknown"), profile=shapes, bytes=len(data),
                    build_seconds=round(seconds, 3), onnx=dict(onnx_record or {}))


def _load_timing_cache(build_config, path: Path | None):
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = build_config.create_timing_cache(data)
    build_config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(cache, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(memoryview(cache.serialize()))
    os.replace(partial, path)


def build_plans(networks: Networks, specs: dict[str, NetworkSpec], out_dir: Path, device,
                config: TensorRTBuildConfig | None = None, names: tuple[str, ...] = NETWORK_NAMES
                ) -> dict[str, PlanInfo]:
    """Export (``out_dir/onnx`` with ``keep_onnx``, else a temporary folder), check and compare every network in
    ``names``, and build ``out_dir/<name>.plan`` from each graph (:class:`PlanExporter`)."""
    config = config or TensorRTBuildConfig()
    out_dir = Path(out_dir)
    exporter = PlanExporter(config, onnx_dir=out_dir / "onnx" if config.keep_onnx else None)
    exporter.prepare(device)
    return {name: exporter.export(specs[name], networks.module(name), out_dir / f"{name}.plan", device)
            for name in names}


# ---------------------------------------------------------------------- adapter for the engine directory
def build_tensorrt_engine(networks: Networks, specs: dict[str, NetworkSpec], out_dir: Path, precision: str, device,
                          *, config: TensorRTBuildConfig | None = None) -> dict[str, dict]:
    """The TensorRT backend of ``vfrt build-engines``: one plan per network in ``out_dir``.

    ``precision`` must be the networks' (see :func:`vfrt.export.onnx.check_precision`). Returns
    {network: :meth:`PlanInfo.to_dict`} (plan file names relative to ``out_dir``; flavour, version
    and compute capabilities the loader checks), which
    :func:`vfrt.engines.executors.tensorrt.load_tensorrt_executors` takes back.

    Raises:
        ValueError: wrong precision. TensorRTUnavailableError: no flavour installed.
        TensorRTBuildError, OnnxExportError, OnnxMismatchError: a step failed (see the message).
    """
    check_precision(networks, precision)
    plans = build_plans(networks, specs, out_dir, device, config)
    return {name: info.to_dict() for name, info in plans.items()}


# ------------------------------------------------------------ the `tensorrt` backend of `vfrt build-engines`
class PlanExporter:
    """Plans one network at a time (``vfrt build-engines``, :func:`build_plans`): the network's ONNX graph
    (exported, checked and compared with PyTorch in ONNX Runtime), then the plan built from it.

    :meth:`prepare` chooses the flavour and the targets once (see :class:`TensorRTBuildConfig`);
    :meth:`export` builds each plan for them. The graphs go to ``onnx_dir`` when given, else to a
    temporary folder beside the plan, removed once the plan is built.
    """

    suffix = ".plan"

    def __init__(self, config: TensorRTBuildConfig | None = None, onnx_dir: Path | None = None):
        self.config = config or TensorRTBuildConfig()
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self._trt = None
        self._targets: tuple[str, ...] = ()

    def check_tools(self) -> None:
        """Raise :class:`TensorRTUnavailableError` / :class:`~vfrt.export.onnx.OnnxExportError` (with what to
        install) unless a TensorRT flavour, onnx and ONNX Runtime import."""
        import_tensorrt(self.config.flavour)
        tools(self.config.onnx)

    def builds_without_gpu(self) -> bool:
        """Can plans be built here for GPUs that are not here (an installed TensorRT-RTX)?"""
        try:
            return bool(rtx_targets(import_tensorrt(self.config.flavour)))
        except TensorRTUnavailableError:
            return False

    def prepare(self, device) -> dict:
        """Choose the flavour and the targets for plans built on ``device`` (where the graphs are traced; a
        CUDA device is the GPU the plans are for, unless the config names targets); returns the record of
        the build tools (flavour, version, targets, ONNX tools) for the manifest.

        Raises:
            TensorRTUnavailableError: no flavour installed. TensorRTBuildError: no target fits (TensorRT
                without a GPU; TensorRT-RTX on a GPU it cannot target). OnnxExportError: onnx / ONNX Runtime missing.
        """
        trt = import_tensorrt(self.config.flavour)
        device = torch.device(device)
        here = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        targets = target_capabilities(trt, self.config.compute_capabilities, here)
        if here is not None and self.config.compute_capabilities is None and capability_name(here) not in targets:
            raise TensorRTBuildError(
                f"{trt.__name__} {trt.__version__} cannot build plans for this GPU (compute capability "
                f"{capability_name(here)}; it targets {', '.join(rtx_targets(trt))}): use TensorRT "
                "(pip install 'vfrt[tensorrt]') or another backend here; TensorRT-RTX plans for RTX GPUs also "
                "build on a machine without a GPU")
        record = {"flavour": trt.__name__, "version": trt.__version__, "compute_capabilities": list(targets),
                  "onnx": tools(self.config.onnx)}
        self._trt, self._targets = trt, targets
        return record

    def export(self, spec: NetworkSpec, module, path: Path, device) -> PlanInfo:
        """Export ``module`` (the network of ``spec``) to ONNX and build the plan ``path`` from it."""
        if self._trt is None:
            raise RuntimeError("PlanExporter.prepare() chooses the flavour and the targets: call it first")
        path = Path(path)
        work = self.onnx_dir or path.parent / f".onnx-{spec.name}"
        try:
            artifact = export_checked(module, spec, work, self.config.onnx, device=device)
            gpu = torch.cuda.device(device) if torch.device(device).type == "cuda" else contextlib.nullcontext()
            with gpu:                   # TensorRT builds on the current CUDA device
                return build_plan(self._trt, work / artifact.model, spec, path, self._targets, self.config,
                                  artifact.to_dict())
        finally:
            if self.onnx_dir is None:
                shutil.rmtree(work, ignore_errors=True)
