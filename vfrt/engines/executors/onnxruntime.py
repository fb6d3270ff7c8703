"""The ONNX Runtime executor: one exported network (``vfrt.export.onnx``) in an ONNX Runtime session.

Inputs and outputs are bound in place (IO binding): the session reads the caller's tensors and
writes into tensors allocated from the spec's output shapes, on the CPU or the GPU, with no copy
through numpy. On the CPU this is the ``CPUExecutionProvider`` (what CI runs). On CUDA it needs
the ``onnxruntime-gpu`` wheel (``CUDAExecutionProvider``): the session runs on a stream of its own
that is ordered after and before PyTorch's current stream, and with ``cuda_graphs`` it replays one
CUDA graph per input size (ONNX Runtime's ``gpu_graph_id``), fed from static buffers the executor
owns, because a graph freezes the addresses it reads and writes.

An ONNX Runtime session allocates from its own arena and may synchronise with the host, so the
executor is never ``capturable`` into PyTorch's CUDA graphs: an engine of these executors runs the
step eagerly (``EngineConfig(graphs=False)``); ONNX Runtime's own graphs cover the network itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from vfrt.engines.executors.base import ExecutorBase, ExecutorLoadError
from vfrt.engines.specs import NetworkSpec

log = logging.getLogger(__name__)

#: ONNX Runtime's tensor type strings (``NodeArg.type``) of the dtypes a spec uses
ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)", torch.int64: "tensor(int64)"}


class OnnxRuntimeUnavailableError(ExecutorLoadError):
    """ONNX Runtime, or the execution provider a device needs, is not installed."""


class OnnxRuntimeLoadError(ExecutorLoadError):
    """An ONNX model could not be loaded into a session for its spec (missing file, wrong inputs or outputs)."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or :class:`OnnxRuntimeUnavailableError` saying what to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxRuntimeUnavailableError("ONNX Runtime is not installed: pip install 'vfrt[onnx]' "
                                          "(or 'vfrt[onnx-gpu]' for CUDA)") from exc
    return onnxruntime


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.contiguous() for name, value in tensors.items()}


def _numpy_dtype(dtype: torch.dtype):
    import numpy as np
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


class OnnxRuntimeExecutor(ExecutorBase):
    """Runs an ONNX file of ``spec`` with ONNX Runtime on ``device``.

    Args:
        spec: the network's spec; the session's inputs and outputs must have its names and dtypes.
        model_path: the ``.onnx`` file (external weight data next to it, as exported).
        device: "cpu" (CPU provider) or a CUDA device (needs ``onnxruntime-gpu``).
        cuda_graphs: replay ONNX Runtime CUDA graphs, one per input size (default: on for CUDA). If the
            session cannot be made with graphs (a node not on the CUDA provider), it is made without
            and a warning says so.
        threads: intra-op threads of the CPU provider (default: ONNX Runtime's, one per core).

    Output ownership: ``run`` returns tensors the caller owns (freshly allocated, or copies of the
    graph's static outputs).
    """

    kind = "onnxruntime"
    capturable = False

    def __init__(self, spec: NetworkSpec, model_path: str | Path, device: str | torch.device = "cpu", *,
                 cuda_graphs: bool | None = None, threads: int | None = None):
        super().__init__(spec)
        self.model_path = Path(model_path)
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"ONNX Runtime runs on the CPU or a CUDA device, not {self.device}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("ONNX Runtime CUDA graphs need a CUDA device")
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        self.threads = threads
        self.provider: str | None = None
        self._session = None
        self._stream: torch.cuda.Stream | None = None
        self._graphs: dict[tuple[int, ...], tuple] = {}
        self._run_options = None

    # ------------------------------------------------------------------ lifecycle
    def _load_impl(self) -> None:
        ort = import_onnxruntime()
        if not self.model_path.is_file():
            raise OnnxRuntimeLoadError(f"{self.spec.name}: no ONNX model at {self.model_path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        if self.device.type == "cpu":
            self.provider = "CPUExecutionProvider"
            self._session = self._new_session(ort, options, [self.provider])
        else:
            self._session = self._new_cuda_session(ort, options)
        self._check_session_io()
        self._run_options = ort.RunOptions()

    def _new_session(self, ort, options, providers):
        try:
            return ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise OnnxRuntimeLoadError(f"{self.spec.name}: ONNX Runtime cannot load {self.model_path}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc

    def _new_cuda_session(self, ort, options):
        self.provider = "CUDAExecutionProvider"
        if self.provider not in ort.get_available_providers():
            raise OnnxRuntimeUnavailableError(
                f"ONNX Runtime has no CUDA provider here (it has {', '.join(ort.get_available_providers())}): "
                "pip install 'vfrt[onnx-gpu]' (onnxruntime-gpu, in place of onnxruntime)")
        self._stream = torch.cuda.Stream(device=self.device)
        cuda_options = {"device_id": str(self.device.index), "user_compute_stream": str(self._stream.cuda_stream)}
        if self.cuda_graphs:
            try:
                return ort.InferenceSession(str(self.model_path), options,
                                            providers=[(self.provider, {**cuda_options, "enable_cuda_graph": "1"})])
            except Exception as exc:  # noqa: BLE001 - e.g. a node the CUDA provider does not take
                log.warning("%s: ONNX Runtime CUDA graphs are not possible for this model (%s); running without",
                            self.spec.name, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
                self.cuda_graphs = False
        return self._new_session(ort, options, [(self.provider, cuda_options)])

    def _check_session_io(self) -> None:
        """The session must take and return exactly the spec's tensors, in its dtypes."""
        problems = []
        for kind, declared, actual in (("input", self.spec.inputs, self._session.get_inputs()),
                                       ("output", self.spec.outputs, self._session.get_outputs())):
            found = {arg.name: arg.type for arg in actual}
            if set(found) != {t.name for t in declared}:
                problems.append(f"{kind}s {sorted(found)}, the spec has {[t.name for t in declared]}")
                continue
            problems += [f"{kind} {t.name} is {found[t.name]}, the spec has {ORT_TYPES.get(t.dtype, t.dtype)}"
                         for t in declared if found[t.name] != ORT_TYPES.get(t.dtype)]
        if problems:
            raise OnnxRuntimeLoadError(f"{self.model_path} does not fit the {self.spec.name} spec: "
                                       + "; ".join(problems))

    def _close_impl(self) -> None:
        self._graphs.clear()
        self._session = None

    # ------------------------------------------------------------------ running
    def _run_impl(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        self._refuse_other_devices(inputs, self.device)
        bound = _contiguous(inputs)       # held until the run is done: ONNX Runtime reads them by address
        if self.device.type == "cpu":
            outputs = self._allocate_outputs(sizes)
            self._session.run_with_iobinding(self._binding(bound, outputs), self._run_options)
            return outputs
        # everything below is allocated and copied on the caller's stream; the session's stream waits
        # for it and the caller's stream waits for the session (the allocator reuses blocks per stream)
        current = torch.cuda.current_stream(self.device)
        if self.cuda_graphs:
            binding, options, static_in, static_out = self._graph_for(inputs, sizes)
            for name, value in inputs.items():
                static_in[name].copy_(value)
        else:
            static_out = self._allocate_outputs(sizes)
            binding, options = self._binding(bound, static_out), self._run_options
        self._stream.wait_stream(current)
        self._session.run_with_iobinding(binding, options)
        current.wait_stream(self._stream)
        return {name: value.clone() for name, value in static_out.items()} if self.cuda_graphs else static_out

    def _allocate_outputs(self, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        return {t.name: torch.empty(self.spec.shape(t, sizes), dtype=t.dtype, device=self.device)
                for t in self.spec.outputs}

    def _binding(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]):
        """An IO binding of contiguous tensors (they must outlive the run)."""
        binding = self._session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        for group, bind in ((inputs, binding.bind_input), (outputs, binding.bind_output)):
            for name, value in group.items():
                bind(name, device_type, device_id, _numpy_dtype(value.dtype), tuple(value.shape), value.data_ptr())
        return binding

    def _graph_for(self, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]):
        """(binding, run options, static inputs, static outputs) of this input size's graph: a graph freezes
        the addresses it reads and writes, so each size has buffers of its own, made at its first run."""
        key = tuple(sizes[name] for name, _ in self.spec.axes)
        if key not in self._graphs:
            static_in = {name: torch.empty(tuple(value.shape), dtype=value.dtype, device=self.device)
                         for name, value in inputs.items()}
            static_out = self._allocate_outputs(sizes)
            options = import_onnxruntime().RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
            self._graphs[key] = (self._binding(static_in, static_out), options, static_in, static_out)
        return self._graphs[key]

    @property
    def captured_sizes(self) -> list[tuple[int, ...]]:
        """Axis sizes (in spec order) that have an ONNX Runtime CUDA graph."""
        return sorted(self._graphs)


def load_onnxruntime_executors(engine_dir: Path, artifacts: Mapping[str, Mapping], specs: Mapping[str, NetworkSpec],
                               device) -> dict[str, OnnxRuntimeExecutor]:
    """Executors (not yet loaded) of every network in ``artifacts`` (what :func:`vfrt.export.onnx.export_onnx_engine`
    returned) found in ``engine_dir``; ``specs`` must describe the same networks.

    Raises:
        OnnxRuntimeLoadError: a network has no spec, its record names no model, or a file is missing.
    """
    engine_dir = Path(engine_dir)
    problems = []
    for name, record in artifacts.items():
        if name not in specs:
            problems.append(f"{name}: no spec for this network")
        elif "model" not in record:
            problems.append(f"{name}: the record names no ONNX model")
        else:
            problems += [f"{name}: {engine_dir / f} is missing" for f in record.get("files", [record["model"]])
                         if not (engine_dir / f).is_file()]
    if problems:
        raise OnnxRuntimeLoadError(f"ONNX engine in {engine_dir} is incomplete: " + "; ".join(problems))
    return {name: OnnxRuntimeExecutor(specs[name], engine_dir / record["model"], device)
            for name, record in artifacts.items()}


# ---------------------------------------------------------------------- the engine directory's backend
def backend_version() -> str:
    """The ONNX Runtime here, as a manifest records it (the one that verified the build)."""
    try:
        return f"onnxruntime {import_onnxruntime().__version__}"
    except OnnxRuntimeUnavailableError:
        return "onnxruntime not installed"


def runtime_problems(device: torch.device) -> list[str]:
    """What keeps ONNX graphs from running on ``device`` here: ONNX Runtime missing, or its CUDA provider
    for a CUDA device. The graphs themselves do not depend on the GPU, the torch build or the ONNX
    Runtime version that checked them (a newer ONNX Runtime reads older opsets), so none is compared."""
    try:
        ort = import_onnxruntime()
    except OnnxRuntimeUnavailableError as exc:
        return [str(exc)]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return [f"ONNX Runtime {ort.__version__} here has no CUDA provider (it has "
                f"{', '.join(ort.get_available_providers())}): pip install 'vfrt[onnx-gpu]'"]
    return []
