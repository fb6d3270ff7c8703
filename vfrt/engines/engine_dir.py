"""Engine directories: the networks built once (``vfrt build-engines``), loaded fast by every run.

Layout of one directory (written by :func:`vfrt.export.build.build_engines`, never edited after)::

    <dir>/manifest.json           the :class:`Manifest`: what was built, from which weights, where, how
    <dir>/<network><suffix>       one artifact per network of the spec table (vfrt/engines/specs.py):
                                  ``unet_step.pt2`` (AOTInductor), ``unet_step.onnx`` (ONNX Runtime),
                                  ``unet_step.plan`` (TensorRT); weights embedded or beside them
    <dir>/<other files>           files an artifact needs beside it (``unet_step.onnx.data``: an ONNX
                                  graph's weights past protobuf's 2 GiB), listed per network

A directory is loaded only after three checks, each raising one typed error that lists every
problem and the ``vfrt build-engines ...`` command that rebuilds it:

* the manifest parses and has this vfrt's schema (:class:`CorruptEngineError`);
* it was built for this machine: device kind and vfrt version, then what the backend's artifacts
  depend on (:attr:`BackendLoader.check`): GPU, torch and CUDA versions for AOTInductor, a TensorRT
  plan's flavour, version and target compute capabilities (:class:`EngineMismatchError`);
* every file is there with its recorded size and sha256 (:class:`CorruptEngineError`; the
  hash is computed once per file state, :class:`~vfrt.engines.fingerprint.DigestIndex`).

Backends plug in through :data:`ENGINE_BACKENDS`: a function returning a :class:`BackendLoader`
(its runtime version, its compatibility check and a function that makes the six executors), one
line per backend. Schema 1 grew two optional fields per network (``extra_files``, ``record``);
manifests without them (the first AOTInductor ones) read as before.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from vfrt.engines.config import TORCH_DTYPES, EngineConfig, EngineConfigError, Precision, ResolvedEngineConfig
# the errors live in engine_errors (the executors and the toolchain check raise them too); re-exported here
from vfrt.engines.engine_errors import (CorruptEngineError, EngineError, EngineLoadError,  # noqa: F401
                                       EngineMismatchError)
from vfrt.engines.fingerprint import DigestIndex, cache_dir, write_text_atomic
from vfrt.engines.specs import NETWORK_NAMES, AxisRange, NetworkSpec, TensorSpec
from vfrt.version import __version__

if TYPE_CHECKING:
    from vfrt.engines.executors import Executor
    from vfrt.engines.fast import FastEngine
    from vfrt.models.config import Zero123Config

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: the command-line spelling of each precision (``--precision``)
PRECISION_FLAGS: dict[str, str] = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


# ------------------------------------------------------------------------------------------ manifest
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    """One input or output as the manifest records it (``dtype``: e.g. ``"float16"``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_spec(cls, t: TensorSpec) -> "TensorEntry":
        return cls(t.name, tuple(t.shape), _dtype_name(t.dtype))

    def to_spec(self) -> TensorSpec:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        return TensorSpec(self.name, tuple(self.shape), dtype)


@dataclass(frozen=True)
class FileEntry:
    """A file of an engine directory as the build wrote it (name relative to the directory)."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class NetworkEntry:
    """One built network: its artifact (relative file name, sha256, bytes) and its spec.

    ``axes`` holds ``(axis, (min, opt, max))``: the sizes the artifact accepts, which an executor
    checks every call. ``max_error``: the largest ``max|engine - eager| / max|eager|`` the build's
    verification measured on fresh sample inputs (None: not verified). ``extra_files``: other files
    the artifact needs (checked like it). ``record``: the backend's own build record, which its
    loader reads back (the ONNX export record; a TensorRT plan's flavour, version, targets and
    profile); None for AOTInductor.
    """

    name: str
    file: str
    sha256: str
    size: int
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    axes: tuple[tuple[str, tuple[int, int, int]], ...]
    max_error: float | None = None
    extra_files: tuple[FileEntry, ...] = ()
    record: Mapping[str, Any] | None = None

    @classmethod
    def from_spec(cls, spec: NetworkSpec, file: FileEntry, *, extra_files: tuple[FileEntry, ...] = (),
                  record: Mapping[str, Any] | None = None) -> "NetworkEntry":
        return cls(spec.name, file.file, file.sha256, file.size, tuple(TensorEntry.from_spec(t) for t in spec.inputs),
                   tuple(TensorEntry.from_spec(t) for t in spec.outputs),
                   tuple((name, (r.min, r.opt, r.max)) for name, r in spec.axes), extra_files=tuple(extra_files),
                   record=record)

    def files(self) -> tuple[FileEntry, ...]:
        """The artifact first, then its extra files."""
        return (FileEntry(self.file, self.sha256, self.size), *self.extra_files)

    def spec(self) -> NetworkSpec:
        return NetworkSpec(self.name, tuple(t.to_spec() for t in self.inputs), tuple(t.to_spec() for t in self.outputs),
                           tuple((name, AxisRange(*sizes)) for name, sizes in self.axes))


@dataclass(frozen=True)
class CheckpointEntry:
    """The weights an engine was built from: ``fingerprint`` is the sha256 of the file (or folder)."""

    path: str
    fingerprint: str
    size: int
    use_ema: bool
    config_path: str | None = None
    config_sha256: str | None = None


@dataclass(frozen=True)
class Platform:
    """Where an engine was built; an engine runs only where these match (see :func:`compatibility_problems`).

    ``gpu_name`` and ``compute_capability`` are None for CPU engines, and for CUDA engines built on a
    machine without a GPU (:meth:`anywhere`: TensorRT-RTX plans, whose records list their targets).
    """

    device: str
    gpu_name: str | None
    compute_capability: str | None
    torch: str
    cuda: str | None
    vfrt: str

    @classmethod
    def here(cls, device: torch.device) -> "Platform":
        device = torch.device(device)
        gpu, cc = None, None
        if device.type == "cuda":
            gpu = torch.cuda.get_device_name(device)
            cc = "{}.{}".format(*torch.cuda.get_device_capability(device))
        return cls(device.type, gpu, cc, torch.__version__, torch.version.cuda, __version__)

    @classmethod
    def anywhere(cls, device: torch.device) -> "Platform":
        """A build for a kind of device rather than one present here (no GPU name or compute capability)."""
        return cls(torch.device(device).type, None, None, torch.__version__, torch.version.cuda, __version__)


@dataclass(frozen=True)
class Manifest:
    """Everything about one engine directory (``manifest.json``), schema :data:`SCHEMA_VERSION`.

    Attributes:
        backend, backend_version: who built the artifacts and the runtime version that loads them.
        precision, vae_precision: compute precision of UNet / CLIP, and of the VAE.
        channels_last: the UNet weights' memory format when traced.
        max_refs, max_batch: the spec sizes the networks were built for (``rows`` <= max_refs + 1).
        platform: the device, GPU, torch / CUDA / vfrt versions of the build.
        checkpoint: the weights (fingerprint, EMA, config).
        model_config: the :class:`vfrt.models.Zero123Config` as a dict (what a pipeline needs).
        networks: one :class:`NetworkEntry` per network, in :data:`NETWORK_NAMES` order.
        toolchain: backend-specific build tools (the C++ compiler and its libstdc++ for AOTInductor).
        weights: where the weights live: "embedded" (in the artifacts) or a file name in the directory.
        built_at: ISO 8601 UTC; build_seconds: wall time of the build.
    """

    backend: str
    backend_version: str
    precision: Precision
    vae_precision: Precision
    channels_last: bool
    max_refs: int
    max_batch: int
    platform: Platform
    checkpoint: CheckpointEntry
    model_config: Mapping[str, Any]
    networks: tuple[NetworkEntry, ...]
    toolchain: Mapping[str, Any] | None = None
    weights: str = "embedded"
    built_at: str = ""
    build_seconds: float = 0.0
    schema: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse ``manifest.json``; raises ``ValueError`` (with the reason) if anything is missing or malformed."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            schema = data.get("schema")
            if schema != SCHEMA_VERSION:
                raise ValueError(f"schema {schema!r}, this vfrt reads schema {SCHEMA_VERSION}")
            networks = tuple(NetworkEntry(
                name=n["name"], file=n["file"], sha256=n["sha256"], size=int(n["size"]),
                inputs=tuple(TensorEntry(t["name"], tuple(t["shape"]), t["dtype"]) for t in n["inputs"]),
                outputs=tuple(TensorEntry(t["name"], tuple(t["shape"]), t["dtype"]) for t in n["outputs"]),
                axes=tuple((a, tuple(int(s) for s in sizes)) for a, sizes in n["axes"]),
                max_error=n.get("max_error"),
                extra_files=tuple(FileEntry(f["file"], f["sha256"], int(f["size"])) for f in n.get("extra_files", ())),
                record=_record(n.get("record"))) for n in data["networks"])
            manifest = cls(**{**data, "networks": networks, "platform": Platform(**data["platform"]),
                              "checkpoint": CheckpointEntry(**data["checkpoint"])})
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(what) from exc
        names = [n.name for n in manifest.networks]
        if sorted(names) != sorted(NETWORK_NAMES):
            raise ValueError(f"networks {names}, expected {list(NETWORK_NAMES)}")
        for n in manifest.networks:
            n.spec()          # dtypes and axis ranges valid
            outside = [f.file for f in n.files() if Path(f.file).name != f.file or f.file in ("", ".", "..")]
            if outside:
                raise ValueError(f"{n.name}: file names must name files of the engine directory, got {outside}")
        if manifest.precision not in TORCH_DTYPES or manifest.vae_precision not in TORCH_DTYPES:
            raise ValueError(f"unknown precision {manifest.precision!r} / {manifest.vae_precision!r}")
        return manifest

    # ------------------------------------------------------------------ views
    def network(self, name: str) -> NetworkEntry:
        return {n.name: n for n in self.networks}[name]

    def specs(self) -> dict[str, NetworkSpec]:
        return {n.name: n.spec() for n in self.networks}

    def records(self) -> dict[str, dict]:
        """{network: the backend's build record} (empty for backends that keep none), for its loader."""
        return {n.name: dict(n.record or {}) for n in self.networks}

    def zero123_config(self) -> "Zero123Config":
        """The model config the networks were built from (schedule, latent size, ...)."""
        from vfrt.models.config import CLIPConfig, ScheduleConfig, UNetConfig, VAEConfig, Zero123Config
        d = self.model_config
        return Zero123Config(unet=UNetConfig(**d["unet"]), vae=VAEConfig(**d["vae"]),
                             schedule=ScheduleConfig(**d["schedule"]),
                             clip=CLIPConfig(**d["clip"]) if d.get("clip") else None,
                             use_ema=d["use_ema"], pose_dim=d["pose_dim"])

    def rebuild_command(self, directory: Path | None = None, max_refs: int | None = None) -> str:
        """The ``vfrt build-engines`` command that builds this engine again (into ``directory`` when it
        is not in the cache; for ``max_refs`` references when given)."""
        c = self.checkpoint
        parts = ["vfrt", "build-engines", "-c", shlex.quote(c.path)]
        if c.config_path:
            parts += ["--config", shlex.quote(c.config_path)]
        if not c.use_ema:
            parts.append("--no-ema")
        parts += ["--backend", self.backend, "--precision", PRECISION_FLAGS[self.precision],
                  "--device", self.platform.device, "--max-refs", str(max_refs or self.max_refs)]
        if directory is not None and not _inside(Path(directory), engines_root()):
            parts += ["--out", shlex.quote(str(directory))]
        return " ".join(parts)


def _record(value) -> Mapping[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"a network record must be a JSON object, got {type(value).__name__}")
    return value


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def engines_root() -> Path:
    """Where built engines live by default: ``<cache>/engines`` (see :mod:`vfrt.engines.fingerprint`)."""
    return cache_dir() / "engines"


def generic_rebuild(directory: Path) -> str:
    """What to run when a manifest is unreadable (its checkpoint is unknown)."""
    out = "" if _inside(Path(directory), engines_root()) else f" --out {shlex.quote(str(directory))}"
    return f"vfrt build-engines -c CHECKPOINT [options]{out} (it replaces {directory})"


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an engine directory; :class:`CorruptEngineError` if it is missing or malformed."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise CorruptEngineError(f"{directory} is not an engine directory (no such folder)",
                                 generic_rebuild(directory))
    try:
        text = path.read_text()
    except OSError as exc:
        raise CorruptEngineError(f"{directory} has no readable {MANIFEST_NAME} ({exc.strerror or exc})",
                                 generic_rebuild(directory)) from exc
    try:
        return Manifest.from_json(text)
    except ValueError as exc:
        raise CorruptEngineError(f"{path} is corrupt ({exc})", generic_rebuild(directory)) from exc


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_text_atomic(Path(directory) / MANIFEST_NAME, manifest.to_json())


# ------------------------------------------------------------------------------------------ backends
def same_torch_platform(manifest: Manifest, device: torch.device) -> list[str]:
    """The checks of artifacts compiled for one torch build and one GPU (AOTInductor): the GPU's name and
    compute capability, torch's CUDA version, the torch version, and the backend version."""
    device = torch.device(device)
    built = manifest.platform
    problems = []
    if device.type == "cuda" and built.device == "cuda":
        here = Platform.here(device)
        if (here.gpu_name, here.compute_capability) != (built.gpu_name, built.compute_capability):
            problems.append(f"built on {built.gpu_name} (compute capability {built.compute_capability}), this is "
                            f"{here.gpu_name} ({here.compute_capability})")
        if here.cuda != built.cuda:
            problems.append(f"built with CUDA {built.cuda}, torch here uses CUDA {here.cuda}")
    if built.torch != torch.__version__:
        problems.append(f"built with torch {built.torch}, this is torch {torch.__version__}")
    version = backend_loader(manifest.backend).version()
    if version != manifest.backend_version:
        problems.append(f"{manifest.backend} {manifest.backend_version} built it, {version} would load it")
    return problems


@dataclass(frozen=True)
class BackendLoader:
    """How one backend's engine directories are loaded.

    Attributes:
        version: the version of the runtime that would load the artifacts here (recorded at build time).
        load: ``(manifest, directory, device) -> {network name: Executor}`` (not yet loaded); may raise
            :class:`EngineLoadError` when this process cannot load the artifacts.
        check: ``(manifest, device) -> problems``: every way the artifacts do not fit this runtime on
            ``device`` (a device of the kind they were built for), found from the manifest alone,
            before any artifact is read. Default: :func:`same_torch_platform`.
    """

    version: Callable[[], str]
    load: Callable[[Manifest, Path, torch.device], "dict[str, Executor]"]
    check: Callable[[Manifest, torch.device], list[str]] = same_torch_platform


def _aoti() -> BackendLoader:
    from vfrt.engines.executors import aoti

    def load(manifest: Manifest, directory: Path, device: torch.device) -> "dict[str, Executor]":
        packages = {n.name: Path(directory) / n.file for n in manifest.networks}
        return aoti.load_executors(packages, manifest.specs(), device, toolchain=manifest.toolchain,
                                   rebuild=manifest.rebuild_command(directory))
    return BackendLoader(aoti.backend_version, load)


def _onnxruntime() -> BackendLoader:
    from vfrt.engines.executors import onnxruntime
    return BackendLoader(
        onnxruntime.backend_version,
        lambda manifest, directory, device: onnxruntime.load_onnxruntime_executors(
            directory, manifest.records(), manifest.specs(), device),
        lambda manifest, device: onnxruntime.runtime_problems(device))


def _tensorrt() -> BackendLoader:
    from vfrt.engines.executors import tensorrt
    return BackendLoader(
        tensorrt.backend_version,
        lambda manifest, directory, device: tensorrt.load_tensorrt_executors(
            directory, manifest.records(), manifest.specs(), device),
        lambda manifest, device: tensorrt.plan_problems(manifest.records(), device))


#: backend name -> its loader, imported only when used. A backend adds one function and one line.
ENGINE_BACKENDS: dict[str, Callable[[], BackendLoader]] = {
    "aoti": _aoti,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def backend_loader(name: str) -> BackendLoader:
    if name not in ENGINE_BACKENDS:
        raise KeyError(f"unknown engine backend {name!r}; this vfrt knows {', '.join(sorted(ENGINE_BACKENDS))}")
    return ENGINE_BACKENDS[name]()


# ------------------------------------------------------------------------------------------ checks
def compatibility_problems(manifest: Manifest, device: torch.device) -> list[str]:
    """Every way ``manifest`` does not fit this machine and software on ``device`` (empty: it fits)."""
    device = torch.device(device)
    built = manifest.platform
    problems = []
    if device.type != built.device:
        problems.append(f"built for {built.device}, this run is on {device.type}")
    if built.vfrt != __version__:
        problems.append(f"built by vfrt {built.vfrt}, this is vfrt {__version__}")
    if manifest.backend not in ENGINE_BACKENDS:
        problems.append(f"backend {manifest.backend!r} is not available in this vfrt")
    elif device.type == built.device:          # the backend's checks take a device of the kind built for
        problems += backend_loader(manifest.backend).check(manifest, device)
    return problems


def requested_conflicts(manifest: Manifest, requested: EngineConfig) -> list[str]:
    """Explicit engine options that built engines cannot honour (``None`` / "auto" never conflict)."""
    out = []
    if requested.backend == "reference":
        out.append("the reference backend runs in PyTorch")
    for name, built in (("dtype", manifest.precision), ("vae_dtype", manifest.vae_precision)):
        asked = getattr(requested, name)
        if asked is not None and asked != built:
            out.append(f"{name}={asked} was asked, the engines compute in {built}")
    for name in ("compile", "fused_geglu", "triton_conv"):
        if getattr(requested, name):
            out.append(f"{name}=True asks for the PyTorch path")
    return out


def check_artifacts(manifest: Manifest, directory: Path, digests: DigestIndex | None = None) -> None:
    """Raise :class:`CorruptEngineError` unless every file of every network (artifact and extra files)
    exists with its recorded size and sha256."""
    directory = Path(directory)
    digests = digests or DigestIndex()
    problems = []
    for entry in (f for n in manifest.networks for f in n.files()):
        path = directory / entry.file
        if not path.is_file():
            problems.append(f"{entry.file} is missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{entry.file} has {size} bytes, the build wrote {entry.size} (truncated or replaced)")
        elif digests.digest(path) != entry.sha256:
            problems.append(f"{entry.file} does not have the sha256 the build recorded (altered)")
    if problems:
        raise CorruptEngineError(f"the engines in {directory} are damaged: {'; '.join(problems)}",
                                 manifest.rebuild_command(directory))


def step_graphs(requested: bool | None, unet: "Executor | None" = None) -> bool | None:
    """The CUDA-graph choice of an engine over ``unet`` (its UNet step executor): the request, except that
    an executor that cannot be captured (``capturable`` False, e.g. an ONNX Runtime session) runs the
    step eagerly. None still means "the device's default" (:meth:`EngineConfig.resolve`).

    Raises:
        EngineConfigError: ``graphs=True`` was asked of an executor that cannot be captured.
    """
    if unet is None or unet.capturable:
        return requested
    if requested:
        raise EngineConfigError(f"graphs=True was asked, but the {unet.kind} executors cannot be captured in a "
                                "CUDA graph; they run the step without")
    return False


def engine_config(manifest: Manifest, requested: EngineConfig | None = None,
                  unet: "Executor | None" = None) -> ResolvedEngineConfig:
    """The resolved choices an engine directory runs with: its precision and layout, the requested device
    (default: the one it was built for) and CUDA-graph choice (:func:`step_graphs`, once the UNet step's
    executor ``unet`` exists), through the one :meth:`EngineConfig.resolve`."""
    requested = requested or EngineConfig()
    device = manifest.platform.device if requested.device == "auto" else requested.device
    return EngineConfig(backend="fast", device=device, dtype=manifest.precision, vae_dtype=manifest.vae_precision,
                        graphs=step_graphs(requested.graphs, unet), channels_last=manifest.channels_last,
                        compile=False, attention="auto", fused_geglu=False, triton_conv=False).resolve()


@dataclass(frozen=True)
class EngineSource:
    """Where a running engine came from (shown in run.json and by ``vfrt run``)."""

    directory: Path
    manifest: Manifest

    def summary(self) -> dict:
        m = self.manifest
        return {"dir": str(self.directory), "backend": m.backend, "precision": m.precision, "built_at": m.built_at,
                "checkpoint": m.checkpoint.path, "fingerprint": m.checkpoint.fingerprint[:16]}


def _needs_absent_gpu(manifest: Manifest, requested: EngineConfig) -> bool:
    return (manifest.platform.device == "cuda" and (requested.device == "auto" or requested.device.startswith("cuda"))
            and not torch.cuda.is_available())


def _no_gpu_problem(manifest: Manifest) -> str:
    built = manifest.platform
    gpu = f" ({built.gpu_name}, compute capability {built.compute_capability})" if built.gpu_name else ""
    return (f"the {manifest.backend} engines run on a CUDA GPU{gpu}, and PyTorch sees none on this machine "
            f"(torch {torch.__version__}): nothing can run them here")


def check_engine_dir(directory: Path, requested: EngineConfig | None = None,
                     digests: DigestIndex | None = None) -> tuple[Manifest, ResolvedEngineConfig]:
    """Every check before a load (manifest, requested options, this machine, artifacts), without loading.

    Raises:
        CorruptEngineError, EngineMismatchError: see the module docstring.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    requested = requested or EngineConfig()
    rebuild = manifest.rebuild_command(directory)
    problems = requested_conflicts(manifest, requested)
    config = None
    if not problems:
        try:
            config = engine_config(manifest, requested)
        except ValueError as exc:          # DeviceError / EngineConfigError: e.g. CUDA engines, no GPU here
            problems = [_no_gpu_problem(manifest) if _needs_absent_gpu(manifest, requested) else str(exc)]
        else:
            problems = compatibility_problems(manifest, config.device)
    if problems:
        raise EngineMismatchError(directory, problems, rebuild)
    check_artifacts(manifest, directory, digests)
    return manifest, config


def load_engine(directory: Path, requested: EngineConfig | None = None) -> "FastEngine":
    """The fast engine over the built networks in ``directory`` (checked first: :func:`check_engine_dir`).

    ``requested`` may choose the device (same kind as the build) and ``graphs`` (off for executors that
    cannot be captured: :func:`step_graphs`); the precision and the kernels are the build's. Raises the
    module's typed errors, never loads a directory blindly.
    """
    from vfrt.engines.executors import ExecutorLoadError
    from vfrt.engines.fast import FastEngine
    directory = Path(directory)
    requested = requested or EngineConfig()
    manifest, config = check_engine_dir(directory, requested)
    rebuild = manifest.rebuild_command(directory)
    try:
        executors = backend_loader(manifest.backend).load(manifest, directory, config.device)
        try:
            config = engine_config(manifest, requested, executors["unet_step"])
        except EngineConfigError as exc:
            raise EngineMismatchError(directory, [str(exc)], rebuild) from exc
        return FastEngine(executors, config, source=EngineSource(directory, manifest))
    except ExecutorLoadError as exc:           # a runtime missing, or a file it refuses (checked sound above)
        raise EngineLoadError(f"the {manifest.backend} engines in {directory} do not load: {exc}",
                              "install what the message names, or rebuild the engines", rebuild) from exc
