"""Export the engine networks (:mod:`vfrt.engines.specs`) to ONNX, check them, and compare them with PyTorch.

Each network is exported as the module the torch executors run - the UNet in its exact-rewrite form
(K+1 rows, collapsed cross-attention constants, cached first-conv share, precomputed time
embedding), CLIP with its resize and normalisation, the VAE halves with their scaling - so an
engine built from the file does the same minimum work. Per network:

1. **export** with ``torch.onnx`` (the dynamo exporter, or the TorchScript one where ``onnxscript``
   is missing), the spec's dynamic axes marked dynamic over their min..max;
2. **stamp** the graph's inputs and outputs with the spec's names, dtypes and axis names (exporters
   name derived dimensions their own way), refusing a graph whose names or dtypes differ;
3. **save**, weights in one external ``<name>.onnx.data`` file when they pass protobuf's 2 GiB limit;
4. **check** with ``onnx.checker`` and strict shape inference (:func:`check_onnx`);
5. **compare** an ONNX Runtime CPU session with the PyTorch module on fresh random inputs
   (:func:`compare_with_torch`): the largest difference, scaled by ``max(1, max |torch|)``, must be
   within :data:`TOLERANCE` of the graph's precision.

The precision of a graph is the precision of the modules it was traced from (``build_networks``'
``dtype`` / ``vae_dtype``): TensorRT-RTX and TensorRT 11 are strongly typed and take precision
from the graph, so an fp16 engine needs an fp16 graph. Spec inputs and outputs declared float32
stay float32 (images, latents, the noisy latent x).

``vfrt build-engines --backend onnxruntime`` exports network by network into its engine directory
(:func:`export_engine_network`, registered in :data:`vfrt.export.build.EXPORTERS`);
:func:`export_onnx_engine` exports all six into a folder and returns their records (Python API).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping, get_args

import torch
from torch import nn

from vfrt.engines.specs import NETWORK_NAMES, NetworkSpec, Networks, ProfilePoint

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "torchscript"]
GraphPrecision = Literal["float16", "float32"]

#: the ONNX opset: attention stays MatMul/Softmax, which every ONNX Runtime and TensorRT version here takes
OPSET = 18
#: weights above this go to an external data file (protobuf cannot serialise a message over 2 GiB)
EXTERNAL_DATA_THRESHOLD = 2 ** 31 - 1
#: max |onnx - torch| / max(1, max |torch|) accepted per graph precision (fp16: ~10 ulps at the scale
#: of the outputs, as the two runtimes order their sums differently)
TOLERANCE: dict[str, float] = {"float32": 1e-3, "float16": 3e-2}

TORCH_TO_ONNX = {torch.float32: 1, torch.float16: 10, torch.int64: 7}   # onnx.TensorProto element types
PRECISIONS: dict[torch.dtype, str] = {torch.float32: "float32", torch.float16: "float16"}


class OnnxExportError(RuntimeError):
    """A network could not be exported, or its graph does not fit its spec / fails the ONNX checks."""


class OnnxMismatchError(OnnxExportError):
    """An exported graph computes something else than its PyTorch module (beyond the stated tolerance)."""


@dataclass(frozen=True)
class OnnxExportConfig:
    """How networks are exported and checked.

    Attributes:
        exporter: "dynamo" (``torch.export`` based, needs ``onnxscript``), "torchscript" (the legacy
            tracer), or "auto" (dynamo where ``onnxscript`` is importable).
        opset: ONNX opset version.
        compare_at: spec profile points at which ONNX Runtime is compared with PyTorch (one set of
            fresh inputs each); empty: no comparison (checker and shape inference still run). The
            default, min, keeps a full-size build short (ONNX Runtime on the CPU runs the full UNet at
            seconds per row); the same graphs are compared at min, opt and max in the tests.
        seed: seed of the comparison inputs (the trace uses another).
        external_data_threshold: weight bytes above which weights go to ``<name>.onnx.data``.
    """

    exporter: Exporter = "auto"
    opset: int = OPSET
    compare_at: tuple[ProfilePoint, ...] = ("min",)
    seed: int = 1234
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD

    def __post_init__(self):
        if self.exporter not in get_args(Exporter):
            raise ValueError(f"exporter must be one of {', '.join(get_args(Exporter))}, got {self.exporter!r}")
        if not isinstance(self.opset, int) or self.opset < 17:
            raise ValueError(f"opset must be an integer >= 17, got {self.opset!r}")
        bad = [p for p in self.compare_at if p not in get_args(ProfilePoint)]
        if bad:
            raise ValueError(f"compare_at takes min, opt, max; got {bad}")
        if self.external_data_threshold < 0:
            raise ValueError("external_data_threshold must be >= 0")

    def resolved_exporter(self) -> Literal["dynamo", "torchscript"]:
        if self.exporter != "auto":
            return self.exporter
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            return "torchscript"
        return "dynamo"


@dataclass(frozen=True)
class OnnxArtifact:
    """One exported network: its files (relative to the export directory) and how it was made and checked.

    ``max_error`` maps a profile point to the scaled ONNX Runtime vs PyTorch difference measured there.
    """

    network: str
    model: str
    files: tuple[str, ...]
    precision: str
    exporter: str
    opset: int
    bytes: int
    export_seconds: float
    tolerance: float
    max_error: dict[str, float] = field(default_factory=dict)

    @property
    def extra_files(self) -> tuple[str, ...]:
        """The files beside the model (its external weight data, if any)."""
        return tuple(f for f in self.files if f != self.model)

    def to_dict(self) -> dict:
        """JSON-friendly record (what an engine manifest keeps)."""
        return {**asdict(self), "files": list(self.files)}

    @classmethod
    def from_dict(cls, record: Mapping) -> "OnnxArtifact":
        return cls(**{**record, "files": tuple(record["files"]), "max_error": dict(record.get("max_error", {}))})


def module_precision(module: nn.Module) -> str:
    """The precision a network computes in: the dtype of most of its floating-point weights."""
    counts: dict[torch.dtype, int] = {}
    for p in module.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return "float32"
    dtype = max(counts, key=counts.get)
    if dtype not in PRECISIONS:
        raise OnnxExportError(f"ONNX graphs here are float32 or float16, not {dtype}")
    return PRECISIONS[dtype]


def trace_sizes(spec: NetworkSpec) -> dict[str, int]:
    """Axis sizes the exporter traces with: the opt size, but at least 2 where the range allows
    (``torch.export`` specialises a dimension it sees as 1)."""
    return {name: min(rng.max, max(rng.opt, 2, rng.min)) for name, rng in spec.axes}


# ---------------------------------------------------------------------------------------------- export
def export_network(module: nn.Module, spec: NetworkSpec, out_dir: str | Path, config: OnnxExportConfig | None = None,
                   *, device=None) -> OnnxArtifact:
    """Export ``module`` (the network ``spec`` describes) to ``out_dir/<name>.onnx`` and check the file.

    The files appear in ``out_dir`` only once written completely. No comparison with PyTorch here
    (see :func:`compare_with_torch`; :func:`export_networks` does both).

    Raises:
        OnnxExportError: the exporter failed, the graph's inputs/outputs differ from the spec, or a check failed.
    """
    config = config or OnnxExportConfig()
    _check_plain_kernels(module, spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = config.resolved_exporter()
    device = torch.device(device) if device is not None else _module_device(module)
    inputs = spec.sample_inputs(trace_sizes(spec), device=device, generator=torch.Generator().manual_seed(0))
    work = Path(tempfile.mkdtemp(prefix=f".export-{spec.name}-", dir=out_dir))
    training = module.training
    module.eval()               # the networks hold no train-time layers; eval() says so to the exporter
    try:
        start = time.perf_counter()
        raw = work / "raw" / f"{spec.name}.onnx"
        raw.parent.mkdir()
        with torch.no_grad():
            _export_raw(module, spec, inputs, raw, exporter, config.opset)
        final = work / f"{spec.name}.onnx"
        files, nbytes = _finalize(raw, spec, final, config.external_data_threshold)
        check_onnx(final, spec)
        seconds = time.perf_counter() - start
        for name in sorted(files, key=lambda f: f.endswith(".onnx")):    # the model last: complete when it appears
            (work / name).replace(out_dir / name)
    finally:
        module.train(training)
        shutil.rmtree(work, ignore_errors=True)
    precision = module_precision(module)
    log.info("exported %s (%s, %s, %.1f MB) in %.1f s", spec.name, precision, exporter, nbytes / 1e6, seconds)
    return OnnxArtifact(network=spec.name, model=f"{spec.name}.onnx", files=tuple(files), precision=precision,
                        exporter=exporter, opset=config.opset, bytes=nbytes, export_seconds=round(seconds, 3),
                        tolerance=TOLERANCE[precision])


def _check_plain_kernels(module: nn.Module, spec: NetworkSpec) -> None:
    """Custom Triton kernels have no ONNX form: the exported UNet must use the plain ones."""
    custom = [name for name in ("fused_geglu", "triton_conv") if getattr(module, name, False)]
    if custom:
        raise OnnxExportError(f"{spec.name} uses custom kernels ({', '.join(custom)}) that ONNX cannot express: "
                              "build the networks with fused_geglu=False, triton_conv=False")


def _module_device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _export_raw(module: nn.Module, spec: NetworkSpec, inputs: dict[str, torch.Tensor], path: Path, exporter: str,
                opset: int) -> None:
    """The exporter's own file (names and derived dimensions as the exporter chose them)."""
    import warnings
    try:
        if exporter == "dynamo":
            from torch.export import Dim
            dims = {name: Dim(name, min=rng.min, max=rng.max) for name, rng in spec.axes}
            dynamic = {t.name: {i: dims[a] for i, a in spec.dynamic_dims(t).items()} or None for t in spec.inputs}
            program = torch.onnx.export(module, (), kwargs=inputs, dynamic_shapes=dynamic, dynamo=True,
                                        input_names=list(spec.input_names), output_names=list(spec.output_names),
                                        opset_version=opset, verbose=False)
            program.save(str(path), external_data=True)
        else:
            axes = {t.name: spec.dynamic_dims(t) for t in (*spec.inputs, *spec.outputs)}
            with warnings.catch_warnings():     # deprecation, and tracer notes on shape checks of static dims
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(module, tuple(inputs[n] for n in spec.input_names), str(path), dynamo=False,
                                  input_names=list(spec.input_names), output_names=list(spec.output_names),
                                  dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - exporters raise many types; one error with the first line
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        raise OnnxExportError(f"exporting {spec.name} with the {exporter} exporter failed: "
                              f"{type(exc).__name__}: {first}") from exc


def _finalize(raw: Path, spec: NetworkSpec, final: Path, threshold: int) -> tuple[list[str], int]:
    """Stamp the spec's I/O on the graph and save it (weights external above ``threshold`` bytes).

    Returns (file names written next to ``final``, weight bytes).
    """
    import onnx
    model = onnx.load(str(raw), load_external_data=True)
    stamp_io(model.graph, spec)
    nbytes = _weight_bytes(model)
    external = nbytes > threshold
    data_name = final.name + ".data"
    onnx.save_model(model, str(final), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return ([final.name, data_name] if external else [final.name]), nbytes


def _weight_bytes(model) -> int:
    from onnx import numpy_helper
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes
    return total


def stamp_io(graph, spec: NetworkSpec) -> None:
    """Give the graph's inputs/outputs the spec's axis names and sizes; refuse other names or dtypes.

    Raises:
        OnnxExportError: listing every name or dtype that differs from the spec.
    """
    problems = []
    for kind, declared, values in (("inputs", spec.inputs, graph.input), ("outputs", spec.outputs, graph.output)):
        names = [v.name for v in values]
        if kind == "inputs":     # exporters may list initializers as inputs; only the real ones count
            initializers = {t.name for t in graph.initializer}
            names = [n for n in names if n not in initializers]
        if names != [t.name for t in declared]:
            problems.append(f"{kind} {names}, the spec has {[t.name for t in declared]}")
            continue
        by_name = {v.name: v for v in values}
        for t in declared:
            tensor_type = by_name[t.name].type.tensor_type
            if tensor_type.elem_type != TORCH_TO_ONNX[t.dtype]:
                problems.append(f"{t.name} has ONNX element type {tensor_type.elem_type}, the spec has {t.dtype}")
                continue
            tensor_type.shape.Clear()
            for d in t.shape:
                dim = tensor_type.shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
    if problems:
        raise OnnxExportError(f"the exported {spec.name} graph does not fit its spec: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- checks
def check_onnx(path: str | Path, spec: NetworkSpec) -> None:
    """``onnx.checker`` and strict shape inference (which must agree with the spec's output shapes).

    Works for files with external data (both run on the path, not on an in-memory copy).

    Raises:
        OnnxExportError: with the checker's or the shape inference's message.
    """
    import onnx
    path = Path(path)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{path.name} fails onnx.checker: {str(exc).strip().splitlines()[0]}") from exc
    inferred = path.with_name(f".{path.stem}.inferred.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True, strict_mode=True,
                                               data_prop=True)
        graph = onnx.load(str(inferred), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and others
        raise OnnxExportError(f"{path.name} fails strict shape inference: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        inferred.unlink(missing_ok=True)
    declared = {t.name: t for t in spec.outputs}
    for value in graph.output:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims != list(declared[value.name].shape):
            raise OnnxExportError(f"{path.name}: output {value.name} has shape {dims} after shape inference, "
                                  f"the spec has {list(declared[value.name].shape)}")


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|), in float64 (NaN anywhere gives inf)."""
    got, want = got.double().cpu(), want.double().cpu()
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return float("inf")
    return float((got - want).abs().max() / max(1.0, float(want.abs().max())))


def compare_with_torch(path: str | Path, module: nn.Module, spec: NetworkSpec, point: ProfilePoint = "opt", *,
                       seed: int = 1234, device=None) -> float:
    """Run the graph in ONNX Runtime (CPU) and ``module`` in PyTorch on the same fresh random inputs at
    ``point``; returns the largest :func:`scaled_error` over the outputs."""
    from vfrt.engines.executors.onnxruntime import OnnxRuntimeExecutor
    device = torch.device(device) if device is not None else _module_device(module)
    inputs = spec.sample_inputs(spec.sizes_at(point), generator=torch.Generator().manual_seed(seed))
    with OnnxRuntimeExecutor(spec, path, "cpu") as session:
        got = session.run(inputs)
    with torch.no_grad():
        result = module(**{k: v.to(device) for k, v in inputs.items()})
    want = dict(zip(spec.output_names, (result,) if isinstance(result, torch.Tensor) else result))
    return max(scaled_error(got[name], want[name]) for name in spec.output_names)


def compare_points(path: str | Path, module: nn.Module, spec: NetworkSpec, config: OnnxExportConfig, *,
                   device=None) -> dict[str, float]:
    """{profile point: :func:`compare_with_torch` error} at each of ``config.compare_at``."""
    errors = {}
    for point in config.compare_at:
        errors[point] = compare_with_torch(path, module, spec, point, seed=config.seed, device=device)
        log.info("%s at %s: ONNX Runtime vs PyTorch scaled error %.2e (tolerance %.0e)", spec.name, point,
                 errors[point], TOLERANCE[module_precision(module)])
    return errors


def _export_compared(module: nn.Module, spec: NetworkSpec, out_dir: Path, config: OnnxExportConfig,
                     device) -> tuple[OnnxArtifact, list[str]]:
    """Export and compare one network: (its artifact with ``max_error``, the points beyond the tolerance)."""
    artifact = export_network(module, spec, out_dir, config, device=device)
    errors = compare_points(Path(out_dir) / artifact.model, module, spec, config, device=device)
    failures = [f"{spec.name} at {point}: {error:.3g} > {artifact.tolerance:g}" for point, error in errors.items()
                if not error <= artifact.tolerance]
    return OnnxArtifact(**{**asdict(artifact), "files": artifact.files, "max_error": errors}), failures


def export_checked(module: nn.Module, spec: NetworkSpec, out_dir: str | Path, config: OnnxExportConfig | None = None,
                   *, device=None) -> OnnxArtifact:
    """:func:`export_network`, then the comparison at ``config.compare_at`` (recorded in ``max_error``).

    Raises:
        OnnxExportError: see :func:`export_network`.
        OnnxMismatchError: ONNX Runtime differs from PyTorch beyond :data:`TOLERANCE` (the files stay).
    """
    artifact, failures = _export_compared(module, spec, Path(out_dir), config or OnnxExportConfig(), device)
    if failures:
        raise OnnxMismatchError("ONNX Runtime differs from PyTorch beyond the tolerance: " + "; ".join(failures))
    return artifact


def export_networks(networks: Networks, specs: Mapping[str, NetworkSpec], out_dir: str | Path,
                    config: OnnxExportConfig | None = None, *, names: tuple[str, ...] = NETWORK_NAMES,
                    device=None) -> dict[str, OnnxArtifact]:
    """Export, check and compare every network in ``names``; returns {name: artifact}.

    Raises:
        OnnxExportError: an export or check failed.
        OnnxMismatchError: ONNX Runtime differs from PyTorch beyond :data:`TOLERANCE` (every
            failing network and point listed; the files stay in ``out_dir`` for inspection).
    """
    config = config or OnnxExportConfig()
    out: dict[str, OnnxArtifact] = {}
    failures = []
    for name in names:
        out[name], beyond = _export_compared(networks.module(name), specs[name], Path(out_dir), config, device)
        failures += beyond
    if failures:
        raise OnnxMismatchError("ONNX Runtime differs from PyTorch beyond the tolerance: " + "; ".join(failures))
    return out


# ---------------------------------------------------------------------- adapter for the engine directory
def export_onnx_engine(networks: Networks, specs: dict[str, NetworkSpec], out_dir: Path, precision: str,
                       device, *, config: OnnxExportConfig | None = None) -> dict[str, dict]:
    """The ONNX backend of ``vfrt build-engines``: every network exported, checked and compared into ``out_dir``.

    ``precision`` is the graph precision the caller asked for; the networks must have been built in it
    (``build_networks(model, device, dtype, vae_dtype)``), since a graph's precision is its module's.
    Returns {network: :meth:`OnnxArtifact.to_dict`} (file names relative to ``out_dir``), which
    :func:`vfrt.engines.executors.onnxruntime.load_onnxruntime_executors` takes back.

    Raises:
        ValueError: ``precision`` is not float16/float32 or not the networks' precision.
        OnnxExportError / OnnxMismatchError: see :func:`export_networks`.
    """
    check_precision(networks, precision)
    artifacts = export_networks(networks, specs, out_dir, config, device=device)
    return {name: artifact.to_dict() for name, artifact in artifacts.items()}


def check_precision(networks: Networks, precision: str) -> None:
    """The UNet-side networks must compute in ``precision`` (the VAE may keep its own, e.g. float32)."""
    if precision not in get_args(GraphPrecision):
        raise ValueError(f"ONNX graphs are exported in {' or '.join(get_args(GraphPrecision))}, not {precision!r}")
    actual = module_precision(networks.unet_step)
    if actual != precision:
        raise ValueError(f"precision {precision!r} asked for, but the networks were built in {actual}: "
                         f"build them with dtype=torch.{precision}")


# ------------------------------------------------------------ the `onnxruntime` backend of `vfrt build-engines`
#: file name suffix of an exported graph (weights past 2 GiB go beside it, to ``<name>.onnx.data``)
SUFFIX = ".onnx"
#: how ``vfrt build-engines --backend onnxruntime`` exports: no comparison here, since the build then
#: verifies the engine in ONNX Runtime on the device it runs on, at the smallest and largest sizes
ENGINE_EXPORT = OnnxExportConfig(compare_at=())


def tools(config: OnnxExportConfig = ENGINE_EXPORT) -> dict:
    """The export tools (onnx, ONNX Runtime, the exporter) as a manifest records them.

    Raises:
        OnnxExportError: onnx or ONNX Runtime is not installed (with what to install).
    """
    from vfrt.engines.executors.onnxruntime import OnnxRuntimeUnavailableError, import_onnxruntime
    try:
        import onnx
    except ImportError as exc:
        raise OnnxExportError("ONNX export needs the onnx package: pip install 'vfrt[onnx]'") from exc
    try:
        ort = import_onnxruntime()
    except OnnxRuntimeUnavailableError as exc:
        raise OnnxExportError(f"ONNX export checks its graphs in ONNX Runtime: {exc}") from exc
    return {"exporter": config.resolved_exporter(), "opset": config.opset, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__}


def prepare(device) -> dict:
    """Check the export tools, and ONNX Runtime's provider for ``device`` (the build verifies the graphs
    there), before a build; returns the manifest's toolchain record.

    Raises:
        OnnxExportError: onnx or ONNX Runtime missing, or no CUDA provider for CUDA engines.
    """
    from vfrt.engines.executors.onnxruntime import runtime_problems
    record = tools(ENGINE_EXPORT)
    problems = runtime_problems(torch.device(device))
    if problems:
        raise OnnxExportError(f"{'; '.join(problems)}; or build CPU engines (--device cpu)")
    return record


def export_engine_network(spec: NetworkSpec, module: nn.Module, path: Path, device,
                          config: OnnxExportConfig | None = None) -> OnnxArtifact:
    """Export one network of an engine directory to ``path`` (``<directory>/<network>.onnx``, with its
    ``.onnx.data`` beside it when the weights need one); ``config`` default: :data:`ENGINE_EXPORT`."""
    path = Path(path)
    if path.name != spec.name + SUFFIX:
        raise ValueError(f"the {spec.name} graph is written as {spec.name}{SUFFIX}, not {path.name}")
    return export_checked(module, spec, path.parent, config or ENGINE_EXPORT, device=device)
