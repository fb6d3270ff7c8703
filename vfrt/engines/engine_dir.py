"""Engine directories: the networks built once (``vfrt build-engines``), loaded fast by every run.

Layout of one directory (written by :func:`vfrt.export.build.build_engines`, never edited after)::

    <dir>/manifest.json           the :class:`Manifest`: what was built, from which weights, where, how
    <dir>/<network><suffix>       one artifact per network of the spec table (vfrt/engines/specs.py),
                                  e.g. ``unet_step.pt2`` for AOTInductor; weights embedded or beside them

A directory is loaded only after three checks, each raising one typed error that lists every
problem and the ``vfrt build-engines ...`` command that rebuilds it:

* the manifest parses and has this vfrt's schema (:class:`CorruptEngineError`);
* it was built for this machine: device kind, GPU name and compute capability, torch / CUDA /
  backend / vfrt versions (:class:`EngineMismatchError`);
* every artifact is there with its recorded size and sha256 (:class:`CorruptEngineError`; the
  hash is computed once per file state, :class:`~vfrt.engines.fingerprint.DigestIndex`).

Backends plug in through :data:`ENGINE_BACKENDS`: a function returning a :class:`BackendLoader`
(its runtime version and a function that makes the six executors), one line per backend.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from vfrt.engines.config import TORCH_DTYPES, EngineConfig, Precision, ResolvedEngineConfig
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


# ------------------------------------------------------------------------------------------ errors
class EngineError(RuntimeError):
    """An engine directory cannot be used; ``rebuild`` is the command that makes a usable one."""

    def __init__(self, message: str, rebuild: str | None = None):
        self.rebuild = rebuild
        super().__init__(message + (f"; rebuild with: {rebuild}" if rebuild else ""))


class CorruptEngineError(EngineError):
    """The manifest is unreadable, or an artifact is missing, truncated or altered."""


class EngineMismatchError(EngineError):
    """The engines were built for another machine, another torch/vfrt, other weights or other options.

    ``problems`` lists every mismatch (one short sentence each).
    """

    def __init__(self, directory: Path, problems: list[str], rebuild: str | None):
        self.problems = list(problems)
        super().__init__(f"the engines in {directory} do not fit: {'; '.join(problems)}", rebuild)


class EngineLoadError(EngineError):
    """The artifacts are sound but this process cannot load them (e.g. a C++ runtime mismatch);
    ``fix`` is what to change (an environment variable or a rebuild), spelled out."""

    def __init__(self, message: str, fix: str, rebuild: str | None = None):
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}", rebuild)


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
class NetworkEntry:
    """One built network: its artifact (relative file name, sha256, bytes) and its spec.

    ``axes`` holds ``(axis, (min, opt, max))``: the sizes the artifact accepts, which an executor
    checks every call. ``max_error``: the largest ``max|engine - eager| / max|eager|`` the build's
    verification measured on fresh sample inputs (None: not verified).
    """

    name: str
    file: str
    sha256: str
    size: int
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    axes: tuple[tuple[str, tuple[int, int, int]], ...]
    max_error: float | None = None

    @classmethod
    def from_spec(cls, spec: NetworkSpec, file: str, sha256: str, size: int) -> "NetworkEntry":
        return cls(spec.name, file, sha256, size, tuple(TensorEntry.from_spec(t) for t in spec.inputs),
                   tuple(TensorEntry.from_spec(t) for t in spec.outputs),
                   tuple((name, (r.min, r.opt, r.max)) for name, r in spec.axes))

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
    """Where an engine was built; an engine runs only where these match (see :func:`compatibility_problems`)."""

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
                max_error=n.get("max_error")) for n in data["networks"])
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
        if manifest.precision not in TORCH_DTYPES or manifest.vae_precision not in TORCH_DTYPES:
            raise ValueError(f"unknown precision {manifest.precision!r} / {manifest.vae_precision!r}")
        return manifest

    # ------------------------------------------------------------------ views
    def network(self, name: str) -> NetworkEntry:
        return {n.name: n for n in self.networks}[name]

    def specs(self) -> dict[str, NetworkSpec]:
        return {n.name: n.spec() for n in self.networks}

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
@dataclass(frozen=True)
class BackendLoader:
    """How one backend's engine directories are loaded.

    Attributes:
        version: the runtime version a built artifact must match (e.g. torch's for AOTInductor).
        load: ``(manifest, directory, device) -> {network name: Executor}`` (not yet loaded); may raise
            :class:`EngineLoadError` when this process cannot load the artifacts.
    """

    version: Callable[[], str]
    load: Callable[[Manifest, Path, torch.device], "dict[str, Executor]"]


def _aoti() -> BackendLoader:
    from vfrt.engines.executors import aoti
    return BackendLoader(aoti.backend_version, aoti.load_executors)


#: backend name -> its loader, imported only when used. A backend adds one function and one line.
ENGINE_BACKENDS: dict[str, Callable[[], BackendLoader]] = {
    "aoti": _aoti,
}


def backend_loader(name: str) -> BackendLoader:
    if name not in ENGINE_BACKENDS:
        raise KeyError(f"unknown engine backend {name!r}; this vfrt knows {', '.join(sorted(ENGINE_BACKENDS))}")
    return ENGINE_BACKENDS[name]()


# ------------------------------------------------------------------------------------------ checks
def compatibility_problems(manifest: Manifest, device: torch.device) -> list[str]:
    """Every way ``manifest`` does not fit this machine and software on ``device`` (empty: it fits)."""
    device = torch.device(device)
    here = Platform.here(device) if device.type == manifest.platform.device else None
    built = manifest.platform
    problems = []
    if device.type != built.device:
        problems.append(f"built for {built.device}, this run is on {device.type}")
    elif here is not None and device.type == "cuda":
        if (here.gpu_name, here.compute_capability) != (built.gpu_name, built.compute_capability):
            problems.append(f"built on {built.gpu_name} (compute capability {built.compute_capability}), this is "
                            f"{here.gpu_name} ({here.compute_capability})")
        if here.cuda != built.cuda:
            problems.append(f"built with CUDA {built.cuda}, torch here uses CUDA {here.cuda}")
    if built.torch != torch.__version__:
        problems.append(f"built with torch {built.torch}, this is torch {torch.__version__}")
    if built.vfrt != __version__:
        problems.append(f"built by vfrt {built.vfrt}, this is vfrt {__version__}")
    if manifest.backend not in ENGINE_BACKENDS:
        problems.append(f"backend {manifest.backend!r} is not available in this vfrt")
    else:
        version = backend_loader(manifest.backend).version()
        if version != manifest.backend_version:
            problems.append(f"{manifest.backend} {manifest.backend_version} built it, {version} would load it")
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
    """Raise :class:`CorruptEngineError` unless every artifact exists with its recorded size and sha256."""
    directory = Path(directory)
    digests = digests or DigestIndex()
    problems = []
    for n in manifest.networks:
        path = directory / n.file
        if not path.is_file():
            problems.append(f"{n.file} is missing")
            continue
        size = path.stat().st_size
        if size != n.size:
            problems.append(f"{n.file} has {size} bytes, the build wrote {n.size} (truncated or replaced)")
        elif digests.digest(path) != n.sha256:
            problems.append(f"{n.file} does not have the sha256 the build recorded (altered)")
    if problems:
        raise CorruptEngineError(f"the engines in {directory} are damaged: {'; '.join(problems)}",
                                 manifest.rebuild_command(directory))


def engine_config(manifest: Manifest, requested: EngineConfig | None = None) -> ResolvedEngineConfig:
    """The resolved choices an engine directory runs with: its precision and layout, the requested device
    (default: the one it was built for) and CUDA-graph choice, through the one :meth:`EngineConfig.resolve`."""
    requested = requested or EngineConfig()
    device = manifest.platform.device if requested.device == "auto" else requested.device
    return EngineConfig(backend="fast", device=device, dtype=manifest.precision, vae_dtype=manifest.vae_precision,
                        graphs=requested.graphs, channels_last=manifest.channels_last, compile=False,
                        attention="auto", fused_geglu=False, triton_conv=False).resolve()


@dataclass(frozen=True)
class EngineSource:
    """Where a running engine came from (shown in run.json and by ``vfrt run``)."""

    directory: Path
    manifest: Manifest

    def summary(self) -> dict:
        m = self.manifest
        return {"dir": str(self.directory), "backend": m.backend, "precision": m.precision, "built_at": m.built_at,
                "checkpoint": m.checkpoint.path, "fingerprint": m.checkpoint.fingerprint[:16]}


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
            problems = [str(exc)]
        else:
            problems = compatibility_problems(manifest, config.device)
    if problems:
        raise EngineMismatchError(directory, problems, rebuild)
    check_artifacts(manifest, directory, digests)
    return manifest, config


def load_engine(directory: Path, requested: EngineConfig | None = None) -> "FastEngine":
    """The fast engine over the built networks in ``directory`` (checked first: :func:`check_engine_dir`).

    ``requested`` may choose the device (same kind as the build) and ``graphs``; the precision and
    the kernels are the build's. Raises the module's typed errors, never loads a directory blindly.
    """
    from vfrt.engines.fast import FastEngine
    directory = Path(directory)
    manifest, config = check_engine_dir(directory, requested)
    executors = backend_loader(manifest.backend).load(manifest, directory, config.device)
    return FastEngine(executors, config, source=EngineSource(directory, manifest))
