"""``vfrt build-engines``: every network of the spec table, exported once into an engine directory.

:func:`build_engines` loads the weights once, builds the six engine networks
(:func:`vfrt.engines.specs.build_networks`), exports them with the chosen backend's exporter (one after
another, or, where the exporter compiles in child processes - AOTInductor - up to ``BuildConfig.jobs``
at once), writes the manifest, **verifies** the result (loads it like a run would and compares every network
with its PyTorch module on fresh sample inputs, recording the largest error in the manifest) and
only then **publishes** it: the directory is built under a temporary name beside the target and
renamed into place, while a file lock keeps a second process building the same engines waiting
(it then finds them built and returns). A failed or interrupted build leaves nothing behind that
looks complete.

Backends plug in through :data:`EXPORTERS` (one function and one line each), mirroring
:data:`vfrt.engines.engine_dir.ENGINE_BACKENDS` on the loading side: ``aoti`` (AOTInductor packages),
``onnxruntime`` (ONNX graphs), ``tensorrt`` (TensorRT / TensorRT-RTX plans built from ONNX graphs).
Engines for a CUDA device can be built on a machine without one where the backend allows it
(TensorRT-RTX): the networks are traced on the CPU, and the build cannot verify what it cannot run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, get_args

import torch
from torch import nn

from vfrt.atomic import replace_folder
from vfrt.engines.config import TORCH_DTYPES, EngineConfig, Precision
from vfrt.engines.engine_cache import checkpoint_entry, engine_key
from vfrt.engines.engine_dir import (MANIFEST_NAME, BackendLoader, CheckpointEntry, EngineError, FileEntry, Manifest, NetworkEntry,
                                     Platform, backend_loader, check_artifacts, check_engine_dir, engines_root,
                                     read_manifest, write_manifest)
from vfrt.engines.executors import EagerExecutor
from vfrt.engines.fingerprint import DigestIndex, sha256_file
from vfrt.engines.specs import DEFAULT_MAX_BATCH, DEFAULT_MAX_REFS, NETWORK_NAMES, NetworkSpec, Networks
from vfrt.export.jobs import ExportJob, ExportJobError, one_line
from vfrt.hardware import DeviceError, resolve_device
from vfrt.version import __version__

log = logging.getLogger(__name__)

BackendName = Literal["aoti", "onnxruntime", "tensorrt"]
#: the UNet's attention option for exporters: plain SDPA, no context manager in the traced code (each
#: exporter decides which attention kernel ends up in its artifact)
TRACED_ATTENTION = "auto"
#: networks in build order: the cheap ones first, so a broken toolchain shows before the long UNet compile
BUILD_ORDER = ("time_embedding", "conditioning", "clip_image", "vae_encoder", "vae_decoder", "unet_step")
#: largest ``max|engine - eager| / max|eager|`` the verification accepts, per precision. Both sides compute
#: in that precision and differ only in kernel choice and summation order; a wrong graph (a weight, a
#: layout, an op) is off by O(1), far above these.
TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
#: the most networks a build compiles at once (``BuildConfig.jobs``)
MAX_JOBS = 64


class BuildError(RuntimeError):
    """The engines could not be built (bad options, a failing export, or a failed verification)."""


@dataclass(frozen=True)
class ExportedNetwork:
    """What an exporter wrote for one network.

    Attributes:
        spec: the spec the artifact was built for (an exporter may narrow an axis it cannot trace).
        extra_files: files beside the artifact that it needs (e.g. ``unet_step.onnx.data``), names
            relative to the engine directory; the manifest checks them like the artifact.
        record: the backend's own record of the build, kept in the manifest for its loader.
    """

    spec: NetworkSpec
    extra_files: tuple[str, ...] = ()
    record: Mapping[str, Any] | None = None


#: called as each network's export finishes: (network, seconds it took)
ExportDone = Callable[[str, float], None]
#: ``(jobs, device, workers, on_done) -> {network: ExportedNetwork}``: exports several networks with up to
#: ``workers`` at once; raises :class:`~vfrt.export.jobs.ExportJobError` naming a network that failed
ExportMany = Callable[[Sequence[ExportJob], torch.device, int, ExportDone], Mapping[str, ExportedNetwork]]


def _needs_a_gpu() -> bool:
    return False


def _no_tools_to_import() -> None:
    return None


@dataclass(frozen=True)
class Exporter:
    """One backend's build side.

    Attributes:
        suffix: the artifact's file name suffix.
        prepare: ``device -> toolchain record`` for the manifest; checks the build tools first and
            raises :class:`~vfrt.engines.engine_errors.EngineLoadError` when their output would not load here.
        export: ``(spec, module, path, device) -> ExportedNetwork`` writes one network's artifact (and its
            extra files) into the artifact's folder.
        runs_on: the device kinds the artifacts run on.
        builds_without_gpu: whether artifacts for a CUDA device can be built here without one.
        precisions: the precisions the backend builds.
        check_tools: raises (saying what to install) when a package the build needs does not import;
            cheap, so a missing package stops a build before the weights are read (:meth:`BuildConfig.resolve`).
        export_many: exports several networks at once (:data:`ExportMany`), for a build with more than one
            worker; None: the build calls ``export`` for one network after another.
    """

    suffix: str
    prepare: Callable[[torch.device], dict | None]
    export: Callable[[NetworkSpec, nn.Module, Path, torch.device], ExportedNetwork]
    runs_on: tuple[str, ...] = ("cpu", "cuda")
    builds_without_gpu: Callable[[], bool] = _needs_a_gpu
    precisions: tuple[str, ...] = get_args(Precision)
    check_tools: Callable[[], object] = _no_tools_to_import
    export_many: ExportMany | None = None

    def export_all(self, jobs: Sequence[ExportJob], device: torch.device, workers: int,
                   on_done: ExportDone) -> dict[str, ExportedNetwork]:
        """Export every job: with ``export_many`` when there is one and ``workers`` > 1, else one after
        another in this process, in the order given. ``on_done`` is called as each network finishes.

        Raises:
            ExportJobError: naming the network whose export failed.
        """
        if workers > 1 and self.export_many is not None:
            return dict(self.export_many(jobs, device, workers, on_done))
        exported = {}
        for job in jobs:
            started = time.perf_counter()
            try:
                exported[job.network] = self.export(job.spec, job.module, job.path, device)
            except Exception as exc:  # noqa: BLE001 - tracer and compiler errors of every kind
                raise ExportJobError(job.network, one_line(exc)) from exc
            on_done(job.network, time.perf_counter() - started)
        return exported


def _aoti() -> Exporter:
    from vfrt.export import aoti

    def export_many(jobs, device, workers, on_done) -> dict[str, ExportedNetwork]:
        return {name: ExportedNetwork(spec)
                for name, spec in aoti.export_in_children(jobs, device, workers, on_done).items()}
    return Exporter(aoti.SUFFIX, aoti.prepare, lambda *args: ExportedNetwork(aoti.export_network(*args)),
                    export_many=export_many)


def _onnxruntime() -> Exporter:
    from vfrt.export import onnx

    def export(spec: NetworkSpec, module: nn.Module, path: Path, device: torch.device) -> ExportedNetwork:
        artifact = onnx.export_engine_network(spec, module, path, device)
        return ExportedNetwork(spec, artifact.extra_files, artifact.to_dict())
    return Exporter(onnx.SUFFIX, onnx.prepare, export, precisions=get_args(onnx.GraphPrecision), check_tools=onnx.tools)


def _tensorrt() -> Exporter:
    from vfrt.export.onnx import GraphPrecision
    from vfrt.export.tensorrt import PlanExporter
    plans = PlanExporter()

    def export(spec: NetworkSpec, module: nn.Module, path: Path, device: torch.device) -> ExportedNetwork:
        return ExportedNetwork(spec, (), plans.export(spec, module, path, device).to_dict())
    return Exporter(plans.suffix, plans.prepare, export, runs_on=("cuda",), builds_without_gpu=plans.builds_without_gpu,
                    precisions=get_args(GraphPrecision), check_tools=plans.check_tools)


#: backend name -> its exporter, imported only when used. A backend adds one function and one line.
EXPORTERS: dict[str, Callable[[], Exporter]] = {
    "aoti": _aoti,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


@dataclass(frozen=True)
class BuildTarget:
    """Where a build's engines run and where it happens (:meth:`BuildConfig.resolve`).

    Attributes:
        device: the device the engines are for (the manifest's platform).
        build_device: where the networks are traced and exported: ``device``, or the CPU when
            engines for a CUDA device are built without one (then nothing can be verified here).
        precision: the compute precision.
    """

    device: torch.device
    build_device: torch.device
    precision: Precision

    @property
    def runs_here(self) -> bool:
        return self.device == self.build_device


@dataclass(frozen=True)
class BuildConfig:
    """What to build; validated on construction, device and precision decided by :meth:`resolve`.

    Attributes:
        backend: the exporter (a key of :data:`EXPORTERS`).
        device: "auto", "cpu", "cuda" or "cuda:N": the device the engines are built for and run on.
        precision: UNet / CLIP / VAE compute precision (default float16 on CUDA, float32 on the CPU).
        max_refs: references per target view the UNet is built for (rows = max_refs + 1).
        max_batch: images per call of the per-view networks.
        use_ema: build from the EMA weights (as sampling does by default).
        verify: compare every built network with PyTorch before publishing.
        force: rebuild even if usable engines exist.
        jobs: how many networks are compiled at once where the backend compiles in child processes
            (aoti); None: a quarter of the CPU cores, at least 1, at most one per network
            (:meth:`workers`). 1: every network in this process, one after another.
    """

    backend: BackendName = "aoti"
    device: str = "auto"
    precision: Precision | None = None
    max_refs: int = DEFAULT_MAX_REFS
    max_batch: int = DEFAULT_MAX_BATCH
    use_ema: bool = True
    verify: bool = True
    force: bool = False
    jobs: int | None = None

    def __post_init__(self):
        if self.backend not in EXPORTERS:
            raise BuildError(f"unknown backend {self.backend!r}; one of {', '.join(sorted(EXPORTERS))}")
        if self.precision is not None and self.precision not in get_args(Precision):
            raise BuildError(f"precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        for name in ("max_refs", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1023:
                raise BuildError(f"{name} must be an integer in 1..1023, got {value!r}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or isinstance(self.jobs, bool)
                                      or not 1 <= self.jobs <= MAX_JOBS):
            raise BuildError(f"jobs must be an integer in 1..{MAX_JOBS} (or None: automatic), got {self.jobs!r}")

    def workers(self) -> int:
        """How many networks compile at once: ``jobs``, or, automatically, one per 4 CPU cores (Inductor
        compiles with several threads itself), at least 1 and at most one per network."""
        if self.jobs is not None:
            return self.jobs
        return min(len(BUILD_ORDER), max(1, (os.cpu_count() or 1) // 4))

    def resolve(self) -> BuildTarget:
        """The device (checked present, or buildable without it), the build device and the precision for it;
        refuses when the backend's packages do not import."""
        exporter = EXPORTERS[self.backend]()
        try:
            exporter.check_tools()
        except Exception as exc:  # noqa: BLE001 - each backend's own "not installed" error, with what to install
            raise BuildError(f"the {self.backend} backend cannot build here: {exc}") from exc
        try:
            device = build_device = resolve_device(self.device)
        except DeviceError as exc:
            if not (self.device.startswith("cuda") and "cuda" in exporter.runs_on and exporter.builds_without_gpu()):
                raise BuildError(str(exc)) from exc
            device, build_device = torch.device("cuda"), torch.device("cpu")
        if device.type not in exporter.runs_on:
            if self.device == "auto" and "cuda" in exporter.runs_on and exporter.builds_without_gpu():
                device = torch.device("cuda")            # no GPU here: build for one
            else:
                raise BuildError(f"{self.backend} engines run on {' or '.join(exporter.runs_on)}, not {device.type}"
                                 + (f"; PyTorch sees no CUDA GPU here, and the installed {self.backend} tools cannot "
                                    "build for one without it" if self.device == "auto" else ""))
        precision = self.precision or ("float16" if device.type == "cuda" else "float32")
        if precision not in exporter.precisions:
            raise BuildError(f"the {self.backend} backend builds {' or '.join(exporter.precisions)} engines, "
                             f"not {precision}")
        if device.type == "cpu" and precision != "float32":
            raise BuildError(f"{precision} engines need a CUDA device; build CPU engines in float32")
        return BuildTarget(device, build_device, precision)


@dataclass(frozen=True)
class BuildResult:
    """A finished build: where, its manifest, whether existing engines were reused, and how long it took."""

    directory: Path
    manifest: Manifest
    reused: bool
    seconds: float
    runs_here: bool = True


#: progress callback: (what is happening, steps done, steps in all)
Progress = Callable[[str, int, int], None]
_STEPS = 3 + len(BUILD_ORDER) + 1


def build_engines(checkpoint, build: BuildConfig = BuildConfig(), *, config=None, out: Path | None = None,
                  trust_checkpoint: bool = False, progress: Progress | None = None) -> BuildResult:
    """Build (or find already built) engines for ``checkpoint`` and return their directory.

    Args:
        checkpoint: an original ``.ckpt`` / ``.safetensors`` or a diffusers folder.
        build: what to build.
        config: the checkpoint's ldm YAML (or a Zero123Config); None: Zero123 full size.
        out: the engine directory to write (default: the cache, keyed so ``vfrt run -c`` finds it).
        trust_checkpoint: allow a full unpickle of a ``.ckpt`` that holds more than tensors.
        progress: called before each step (see :data:`Progress`).

    Raises:
        BuildError: anything that stops the build, with what to do; nothing is published then.
        CheckpointError, FileNotFoundError: unreadable weights.
    """
    started = time.perf_counter()
    report = progress or (lambda what, done, total: log.info("%s (%d/%d)", what, done + 1, total))
    where = build.resolve()
    device, precision = where.device, where.precision
    exporter, loader = EXPORTERS[build.backend](), backend_loader(build.backend)
    digests = DigestIndex()
    report("fingerprinting the checkpoint", 0, _STEPS)
    entry = checkpoint_entry(Path(checkpoint), use_ema=build.use_ema, config=config, digests=digests)
    platform = Platform.here(device) if where.runs_here else Platform.anywhere(device)
    target = Path(out).expanduser() if out is not None else engines_root() / engine_key(
        entry, backend=build.backend, precision=precision, platform=platform, max_refs=build.max_refs,
        max_batch=build.max_batch)
    _refuse_foreign(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        if not build.force and _usable(target, build, where, entry, loader):
            return BuildResult(target, read_manifest(target), True, time.perf_counter() - started, where.runs_here)
        _remove_leftovers(target)
        try:
            toolchain = exporter.prepare(where.build_device)
        except EngineError as exc:
            raise BuildError(f"this process could not load the engines it would build: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a tool missing or broken, in whatever way it fails
            raise BuildError(f"checking the {build.backend} build tools failed: {one_line(exc)}") from exc
        report("loading the weights", 1, _STEPS)
        from vfrt.models import load_zero123
        model = load_zero123(checkpoint, config=config, trust_checkpoint=trust_checkpoint, use_ema=build.use_ema,
                             device="cpu")
        model_config = json.loads(json.dumps(dataclasses.asdict(model.config)))      # as the manifest reads back
        from vfrt.engines.specs import build_networks
        dtype = TORCH_DTYPES[precision]
        channels_last = where.build_device.type == "cuda"
        networks = build_networks(model, where.build_device, dtype, dtype, channels_last=channels_last,
                                  attention=TRACED_ATTENTION, copy_weights=False)
        del model
        specs = networks.specs(max_refs=build.max_refs, max_batch=build.max_batch)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            exported = _export(exporter, build, [ExportJob(specs[name], networks.module(name),
                                                           tmp / (name + exporter.suffix)) for name in BUILD_ORDER],
                               where.build_device, report)
            entries = {}
            for name in BUILD_ORDER:
                built = exported[name]
                files = [_file_entry(tmp, f) for f in (name + exporter.suffix, *built.extra_files)]
                entries[name] = NetworkEntry.from_spec(built.spec, files[0], extra_files=tuple(files[1:]),
                                                       record=built.record)
            _refuse_unlisted(tmp, entries.values(), build.backend)
            manifest = Manifest(
                backend=build.backend, backend_version=loader.version(), precision=precision, vae_precision=precision,
                channels_last=channels_last, max_refs=build.max_refs, max_batch=build.max_batch,
                platform=platform, checkpoint=entry, model_config=model_config,
                networks=tuple(entries[n] for n in NETWORK_NAMES), toolchain=toolchain,
                built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            write_manifest(tmp, manifest)
            if build.verify and where.runs_here:
                report("verifying against PyTorch", 2 + len(BUILD_ORDER), _STEPS)
                errors = verify_engine(manifest, tmp, networks, loader, device, TOLERANCE[precision])
                manifest = dataclasses.replace(manifest, networks=tuple(
                    dataclasses.replace(n, max_error=errors[n.name]) for n in manifest.networks))
            elif build.verify:
                log.warning("%s engines for %s cannot run on this machine: built, not verified", build.backend, device)
            manifest = dataclasses.replace(manifest, build_seconds=round(time.perf_counter() - started, 1))
            write_manifest(tmp, manifest)
            report("publishing", _STEPS - 1, _STEPS)
            replace_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for f in (f for n in manifest.networks for f in n.files()):  # hashes known: later loads need not read the files
        digests.record(target / f.file, f.sha256)
    return BuildResult(target, manifest, False, time.perf_counter() - started, where.runs_here)


def _export(exporter: Exporter, build: BuildConfig, jobs: list[ExportJob], device: torch.device,
            report: Progress) -> dict[str, ExportedNetwork]:
    """Export every job (:meth:`Exporter.export_all`), reporting each network as it finishes."""
    workers = build.workers()
    at_once = min(workers, len(jobs)) if exporter.export_many is not None else 1
    report(f"exporting {len(jobs)} networks" + (f", up to {at_once} at once" if at_once > 1 else ""), 2, _STEPS)
    finished: list[str] = []

    def on_done(name: str, seconds: float) -> None:
        finished.append(name)
        log.info("exported %s (%s) in %.1f s", name, build.backend, seconds)
        report(f"exported {name} ({len(finished)}/{len(jobs)} networks)", 2 + len(finished), _STEPS)
    try:
        return exporter.export_all(jobs, device, workers, on_done)
    except ExportJobError as exc:
        raise BuildError(f"exporting {exc.network} ({build.backend}) failed: {exc.detail}") from exc
    except Exception as exc:  # noqa: BLE001 - an exporter's own failure outside any one network
        raise BuildError(f"exporting the networks ({build.backend}) failed: {one_line(exc)}") from exc


def _file_entry(directory: Path, name: str) -> FileEntry:
    path = directory / name
    if not path.is_file():
        raise BuildError(f"the exporter did not write {name}")
    return FileEntry(name, sha256_file(path), path.stat().st_size)


def _refuse_unlisted(directory: Path, entries, backend: str) -> None:
    """Everything published is in the manifest (and so checked on every load): refuse strays."""
    listed = {f.file for n in entries for f in n.files()}
    stray = sorted(p.name for p in directory.iterdir() if p.name not in listed)
    if stray:
        raise BuildError(f"the {backend} exporter left files no network lists: {', '.join(stray)}")


def verify_engine(manifest: Manifest, directory: Path, networks: Networks, loader: BackendLoader,
                  device: torch.device, tolerance: float) -> dict[str, float]:
    """Load the built executors and compare each with its PyTorch module at the smallest and largest
    sizes of its axes (fresh seeded inputs); returns {network: relative max error}, raises
    :class:`BuildError` if one exceeds ``tolerance``."""
    executors = loader.load(manifest, Path(directory), device)
    generator = torch.Generator().manual_seed(1234)
    errors: dict[str, float] = {}
    for name in NETWORK_NAMES:
        built = executors[name]
        reference = EagerExecutor(built.spec, networks.module(name)).load()
        worst = 0.0
        with built:
            for point in ("min", "max"):
                inputs = built.spec.sample_inputs(built.spec.sizes_at(point), device=device, generator=generator)
                got, want = built.run(inputs), reference.run(inputs)
                for out in built.spec.output_names:
                    diff = (got[out].float() - want[out].float()).abs().max().item()
                    scale = max(want[out].float().abs().max().item(), 1e-6)
                    worst = max(worst, diff / scale) if math.isfinite(diff) else math.inf
        errors[name] = worst
        log.info("verified %s: max relative error %.2e", name, worst)
    bad = {n: e for n, e in errors.items() if not e <= tolerance}
    if bad:
        raise BuildError("the built engines do not agree with PyTorch: " + ", ".join(
            f"{n} differs by {e:.2e} of its output range (tolerance {tolerance:.0e})" for n, e in bad.items()))
    return errors


# ------------------------------------------------------------------------------------------ publishing
@contextmanager
def _lock(target: Path):
    """Hold the build lock of ``target`` (another process building the same engines makes this wait)."""
    from filelock import FileLock, Timeout
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building %s; waiting for it to finish", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _refuse_foreign(target: Path) -> None:
    """Never replace something that is not an engine directory (a user's folder given as --out)."""
    if target.exists() and not (target.is_dir() and ((target / MANIFEST_NAME).exists() or not any(target.iterdir()))):
        raise BuildError(f"{target} exists and is not an engine directory; choose another --out")


def _usable(target: Path, build: BuildConfig, where: BuildTarget, entry: CheckpointEntry,
            loader: BackendLoader) -> bool:
    """Are the engines at ``target`` what this build would make, complete, intact and right for this machine
    (else they are rebuilt)? Engines for a device that is not here are checked for everything but the device."""
    if not (target / MANIFEST_NAME).exists():
        return False
    try:
        manifest = read_manifest(target)
        built = manifest.checkpoint
        problems = [f"{what} {had} (this build: {want})" for what, had, want in (
            ("backend", manifest.backend, build.backend), ("precision", manifest.precision, where.precision),
            ("device", manifest.platform.device, where.device.type), ("max_refs", manifest.max_refs, build.max_refs),
            ("max_batch", manifest.max_batch, build.max_batch), ("EMA weights", built.use_ema, entry.use_ema),
            ("weights", built.fingerprint[:12], entry.fingerprint[:12]),
            ("model config", built.config_sha256, entry.config_sha256)) if had != want]
        if problems:
            log.warning("replacing the engines in %s: built with %s", target, "; ".join(problems))
            return False
        if where.runs_here:
            check_engine_dir(target, EngineConfig(device=str(where.device)))
        else:
            check_artifacts(manifest, target)
            if (manifest.platform.vfrt, manifest.backend_version) != (__version__, loader.version()):
                log.warning("replacing the engines in %s: built by vfrt %s with %s", target, manifest.platform.vfrt,
                            manifest.backend_version)
                return False
    except (EngineError, ValueError) as exc:
        log.warning("replacing the engines in %s: %s", target, str(exc).split("; rebuild with")[0])
        return False
    return True


def _remove_leftovers(target: Path) -> None:
    """Temporary directories of builds of ``target`` that died (we hold the lock: none is running)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


