"""The TensorRT executor: one serialized plan (built by ``vfrt.export.tensorrt``) in a TensorRT execution context.

Two flavours share this code, imported by module name (same API family): ``tensorrt`` (data-centre
GPUs and Jetson; a plan is built on, and for, the GPU it runs on) and ``tensorrt_rtx`` (RTX GPUs;
builds without a GPU for a list of target compute capabilities). Both are strongly typed: a plan
computes in the precision of the ONNX graph it was built from.

Loading is refused, before any plan byte is deserialized, when the plan was built by another
flavour or version, or for other compute capabilities than this GPU's (:func:`check_plan_compatible`,
from the build record :class:`PlanInfo`); the runtime's own header check (``get_engine_validity``)
runs next where the flavour has it. Each refusal is a :class:`PlanIncompatibleError` that says what
was built and what is here.

Running binds the caller's device tensors and freshly allocated outputs by address, sets input
shapes only when they change, and enqueues with ``execute_async_v3`` on PyTorch's current stream:
no host synchronisation and no allocation outside PyTorch's caching allocator, so the executor is
``capturable`` and the shared step (``vfrt.engines.step``) records it in its CUDA graphs (after two
warm-up runs, so shape changes and lazy kernel compilation happen outside the capture).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping

import torch

from vfrt.engines.executors.base import ExecutorBase, ExecutorLoadError
from vfrt.engines.specs import NetworkSpec, SpecMismatchError

log = logging.getLogger(__name__)

Flavour = Literal["tensorrt", "tensorrt_rtx"]
#: import order of "auto": the full TensorRT first (it runs on every GPU it was built on)
FLAVOURS: tuple[str, ...] = ("tensorrt", "tensorrt_rtx")
#: TensorRT ``DataType`` member names of the dtypes a spec uses
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8}


class TensorRTUnavailableError(ExecutorLoadError):
    """No TensorRT flavour (or not the one a plan needs) is installed."""


class TensorRTLoadError(ExecutorLoadError):
    """A plan could not be loaded: missing or unreadable file, no CUDA device, inputs/outputs unlike the spec."""


class PlanIncompatibleError(TensorRTLoadError):
    """A plan was built by another TensorRT flavour/version or for another GPU (compute capability)."""


def import_tensorrt(flavour: str = "auto"):
    """The TensorRT module: ``flavour`` "tensorrt" or "tensorrt_rtx", or "auto" (the first of :data:`FLAVOURS`
    that imports)."""
    if flavour not in ("auto", *FLAVOURS):
        raise ValueError(f"flavour must be auto, {' or '.join(FLAVOURS)}; got {flavour!r}")
    for name in FLAVOURS if flavour == "auto" else (flavour,):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    wanted = "TensorRT" if flavour == "auto" else flavour
    raise TensorRTUnavailableError(
        f"{wanted} is not installed: pip install 'vfrt[tensorrt]' (TensorRT: data-centre GPUs, Jetson) or "
        "'vfrt[tensorrt-rtx]' (TensorRT-RTX: GeForce/RTX GPUs, builds without a GPU)")


def capability_name(capability: tuple[int, int]) -> str:
    """(8, 6) -> "8.6"."""
    return f"{capability[0]}.{capability[1]}"


def rtx_targets(trt) -> dict[str, object]:
    """{"8.6": ComputeCapability.SM86, ...}: the targets a TensorRT-RTX module can build for; {} for TensorRT
    (which builds for the GPU it runs on)."""
    enum = getattr(trt, "ComputeCapability", None)
    if enum is None:
        return {}
    out = {}
    for name, member in enum.__members__.items():
        digits = name[2:]
        if name.startswith("SM") and digits.isdigit() and len(digits) >= 2:
            out[f"{int(digits[:-1])}.{digits[-1]}"] = member
    return out


def make_logger(trt):
    """A ``trt.ILogger`` that forwards to :mod:`logging` and keeps the errors (for exception messages)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("%s: %s", trt.__name__, msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("%s: %s", trt.__name__, msg)
            else:
                log.debug("%s: %s", trt.__name__, msg)

    return _Logger()


def torch_dtype(trt_dtype) -> torch.dtype | None:
    """The torch dtype of a TensorRT ``DataType`` (None for types no spec uses)."""
    return TORCH_DTYPES.get(trt_dtype.name)


def io_problems(spec: NetworkSpec, io: Mapping[str, tuple[bool, torch.dtype | None]]) -> list[str]:
    """Every way ``io`` ({tensor name: (is input, dtype)}, of a parsed network or an engine) differs from the spec."""
    problems = []
    for kind, declared, is_input in (("inputs", spec.inputs, True), ("outputs", spec.outputs, False)):
        names = sorted(name for name, (inp, _) in io.items() if inp == is_input)
        if names != sorted(t.name for t in declared):
            problems.append(f"{kind} {names}, the spec has {sorted(t.name for t in declared)}")
            continue
        problems += [f"{t.name} is {io[t.name][1]}, the spec has {t.dtype}" for t in declared if io[t.name][1] != t.dtype]
    return problems


@dataclass(frozen=True)
class PlanInfo:
    """What built a plan and for what: the record a loader checks before deserializing it.

    Attributes:
        plan: the plan's file name, relative to the engine directory.
        flavour: "tensorrt" or "tensorrt_rtx" (the module that built it).
        version: that module's ``__version__``; a plan loads only in the same version.
        compute_capabilities: GPUs the plan runs on ("8.6", ...): the building GPU for TensorRT, the
            targets given to the builder for TensorRT-RTX.
        precision: the ONNX graph's precision ("float16" / "float32"; strongly typed build).
        profile: {input: [min shape, opt shape, max shape]} of the optimisation profile.
        bytes: plan size.
        build_seconds: builder time (the ONNX export not included).
        onnx: the source graph's record (``vfrt.export.onnx.OnnxArtifact.to_dict``), for the manifest.
    """

    plan: str
    flavour: str
    version: str
    compute_capabilities: tuple[str, ...]
    precision: str
    profile: dict[str, list[list[int]]]
    bytes: int
    build_seconds: float
    onnx: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "compute_capabilities": list(self.compute_capabilities)}

    @classmethod
    def from_dict(cls, record: Mapping) -> "PlanInfo":
        required = ("plan", "flavour", "version", "compute_capabilities", "precision")
        missing = [key for key in required if key not in record]
        if missing:
            raise TensorRTLoadError(f"the plan record lacks {', '.join(missing)}: rebuild the engines")
        return cls(plan=record["plan"], flavour=record["flavour"], version=record["version"],
                   compute_capabilities=tuple(record["compute_capabilities"]), precision=record["precision"],
                   profile=dict(record.get("profile", {})), bytes=int(record.get("bytes", 0)),
                   build_seconds=float(record.get("build_seconds", 0.0)), onnx=dict(record.get("onnx", {})))


def check_plan_compatible(info: PlanInfo, flavour: str, version: str, capability: tuple[int, int]) -> None:
    """Refuse a plan that this TensorRT module (``flavour``, ``version``) on a GPU of ``capability`` cannot run.

    Raises:
        PlanIncompatibleError: listing every mismatch, and what to do (rebuild here).
    """
    problems = []
    if info.flavour != flavour:
        problems.append(f"it was built by {info.flavour}, this process runs {flavour}")
    elif info.version != version:
        problems.append(f"it was built by {info.flavour} {info.version}, this is {version}")
    here = capability_name(capability)
    if here not in info.compute_capabilities:
        problems.append(f"it was built for compute capability {', '.join(info.compute_capabilities)}, "
                        f"this GPU is {here}")
    if problems:
        raise PlanIncompatibleError(f"plan {info.plan} cannot run here: {'; '.join(problems)}. Rebuild the engines "
                                    "on this machine (vfrt build-engines --backend tensorrt)")


class TensorRTExecutor(ExecutorBase):
    """Runs a TensorRT plan of ``spec`` on a CUDA device.

    Args:
        spec: the network's spec (the plan's inputs/outputs must have its names and dtypes).
        plan_path: the serialized plan.
        info: its build record (checked against this process and GPU before deserializing).
        device: the CUDA device.

    Output ownership: ``run`` returns freshly allocated tensors the caller owns. Captured in a CUDA
    graph, a run freezes the addresses of its inputs and outputs and the input shapes.
    """

    kind = "tensorrt"

    def __init__(self, spec: NetworkSpec, plan_path: str | Path, info: PlanInfo, device="cuda"):
        super().__init__(spec)
        self.plan_path = Path(plan_path)
        self.info = info
        self.device = torch.device(device)
        self.capturable = self.device.type == "cuda"
        self._engine = None
        self._context = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _load_impl(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise TensorRTLoadError(f"{self.spec.name}: a TensorRT plan runs on a CUDA device; {self.device} "
                                    f"{'is not one' if self.device.type != 'cuda' else 'is not available here'}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        trt = import_tensorrt(self.info.flavour)
        check_plan_compatible(self.info, trt.__name__, trt.__version__, torch.cuda.get_device_capability(self.device))
        try:
            plan = self.plan_path.read_bytes()
        except OSError as exc:
            raise TensorRTLoadError(f"{self.spec.name}: cannot read the plan {self.plan_path}: {exc}") from exc
        logger = make_logger(trt)
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(logger)
            self._check_header(trt, runtime, plan)
            self._engine = runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise TensorRTLoadError(f"{self.spec.name}: {trt.__name__} could not deserialize {self.plan_path}: "
                                        + ("; ".join(logger.errors) or "no message"))
            io = {}
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                io[name] = (self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                            torch_dtype(self._engine.get_tensor_dtype(name)))
            problems = io_problems(self.spec, io)
            if problems:
                raise TensorRTLoadError(f"{self.plan_path} does not fit the {self.spec.name} spec: " + "; ".join(problems))
            self._context = self._engine.create_execution_context()
        self._shapes.clear()

    def _check_header(self, trt, runtime, plan: bytes) -> None:
        """The runtime's own verdict on the plan header (flavours that have ``get_engine_validity``)."""
        if not hasattr(runtime, "get_engine_validity"):
            return
        validity, diagnostics = runtime.get_engine_validity(plan[:runtime.engine_header_size])
        if validity == trt.EngineValidity.INVALID:
            reasons = [d.name for d in trt.EngineInvalidityDiagnostics.__members__.values() if int(diagnostics) & int(d)]
            raise PlanIncompatibleError(f"plan {self.plan_path.name} is invalid here according to {trt.__name__} "
                                        f"({', '.join(reasons) or 'no diagnostics'}); rebuild the engines on this machine")

    def _close_impl(self) -> None:
        self._context = None
        self._engine = None

    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        self._refuse_other_devices(inputs, self.device)
        # contiguous copies may be freed on return: the allocator reuses their blocks only for later work
        # on this stream, which runs after the plan
        bound = {name: value.contiguous() for name, value in inputs.items()}
        for name, value in bound.items():
            shape = tuple(value.shape)
            if self._shapes.get(name) != shape:
                if not self._context.set_input_shape(name, shape):
                    raise SpecMismatchError(f"{self.spec.name}: the plan does not take {name} of shape {shape}")
                self._shapes[name] = shape
            self._context.set_tensor_address(name, value.data_ptr())
        outputs = {t.name: torch.empty(self.spec.shape(t, sizes), dtype=t.dtype, device=self.device)
                   for t in self.spec.outputs}
        for name, value in outputs.items():
            self._context.set_tensor_address(name, value.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"{self.spec.name}: TensorRT could not enqueue the plan")
        return outputs


def load_tensorrt_executors(engine_dir: Path, artifacts: Mapping[str, Mapping], specs: Mapping[str, NetworkSpec],
                            device) -> dict[str, TensorRTExecutor]:
    """Executors (not yet loaded: ``load`` does the compatibility check) of every plan in ``artifacts``
    (what :func:`vfrt.export.tensorrt.build_tensorrt_engine` returned) found in ``engine_dir``.

    Raises:
        TensorRTLoadError: a network has no spec, a record is incomplete, or a plan file is missing.
    """
    engine_dir = Path(engine_dir)
    problems, infos = [], {}
    for name, record in artifacts.items():
        if name not in specs:
            problems.append(f"{name}: no spec for this network")
            continue
        try:
            infos[name] = PlanInfo.from_dict(record)
        except TensorRTLoadError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if not (engine_dir / infos[name].plan).is_file():
            problems.append(f"{name}: {engine_dir / infos[name].plan} is missing")
    if problems:
        raise TensorRTLoadError(f"TensorRT engine in {engine_dir} is incomplete: " + "; ".join(problems))
    return {name: TensorRTExecutor(specs[name], engine_dir / info.plan, info, device) for name, info in infos.items()}


# ---------------------------------------------------------------------- the engine directory's backend
def backend_version() -> str:
    """The TensorRT flavour and version that loads plans here ("auto": TensorRT, else TensorRT-RTX)."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailableError:
        return "TensorRT not installed"
    return f"{trt.__name__} {trt.__version__}"


def plan_problems(records: Mapping[str, Mapping], device: torch.device) -> list[str]:
    """Why the plans of ``records`` ({network: its :class:`PlanInfo` record}) cannot run on the CUDA
    ``device``, from the records alone (nothing is deserialized): a record is incomplete, the flavour
    that built them does not import here, or :func:`check_plan_compatible` refuses them (another
    version, or this GPU's compute capability is not among their targets).

    Plans built together share flavour, version and targets, so each such group is checked once.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return [f"TensorRT plans run on a CUDA device, not {device.type}"]
    problems, groups = [], {}
    for name, record in records.items():
        try:
            info = PlanInfo.from_dict(record)
        except TensorRTLoadError as exc:
            problems.append(f"{name}: {exc}")
            continue
        groups.setdefault((info.flavour, info.version, info.compute_capabilities), info)
    return problems + _group_problems(groups.values(), tuple(torch.cuda.get_device_capability(device)))


def _group_problems(infos: Iterable[PlanInfo], capability: tuple[int, int]) -> list[str]:
    problems = []
    for info in infos:
        try:
            trt = import_tensorrt(info.flavour)
        except TensorRTUnavailableError as exc:
            problems.append(f"the plans were built by {info.flavour} {info.version}, which does not import here: {exc}")
            continue
        try:
            check_plan_compatible(info, trt.__name__, trt.__version__, capability)
        except PlanIncompatibleError as exc:
            here, known = capability_name(capability), rtx_targets(trt)
            hint = (f" ({trt.__name__} cannot target compute capability {here} at all: on this GPU use TensorRT, "
                    "pip install 'vfrt[tensorrt]', or --backend aoti / onnxruntime)") if known and here not in known else ""
            problems.append(f"{exc}{hint}")
    return problems
