"""``vfrt build-engines``: every network of the spec table, exported once into an engine directory.

:func:`build_engines` loads the weights once, builds the six engine networks
(:func:`vfrt.engines.specs.build_networks`), exports each with the chosen backend's exporter,
writes the manifest, **verifies** the result (loads it like a run would and compares every network
with its PyTorch module on fresh sample inputs, recording the largest error in the manifest) and
only then **publishes** it: the directory is built under a temporary name beside the target and
renamed into place, while a file lock keeps a second process building the same engines waiting
(it then finds them built and returns). A failed or interrupted build leaves nothing behind that
looks complete.

Backends plug in through :data:`EXPORTERS` (one function and one line each), mirroring
:data:`vfrt.engines.engine_dir.ENGINE_BACKENDS` on the loading side.
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
from typing import Callable, Literal, get_args

import torch
from torch import nn

from vfrt.engines.config import TORCH_DTYPES, EngineConfig, Precision
from vfrt.engines.engine_cache import checkpoint_entry, engine_key
from vfrt.engines.engine_dir import (MANIFEST_NAME, BackendLoader, EngineError, Manifest, NetworkEntry, Platform,
                                     backend_loader, check_engine_dir, engines_root, read_manifest, write_manifest)
from vfrt.engines.executors import EagerExecutor
from vfrt.engines.fingerprint import DigestIndex, sha256_file
from vfrt.engines.specs import DEFAULT_MAX_BATCH, DEFAULT_MAX_REFS, NETWORK_NAMES, NetworkSpec, Networks
from vfrt.hardware import DeviceError, resolve_device

log = logging.getLogger(__name__)

BackendName = Literal["aoti"]
#: the UNet's attention option for exporters: plain SDPA, no context manager in the traced code (each
#: exporter decides which attention kernel ends up in its artifact)
TRACED_ATTENTION = "auto"
#: networks in build order: the cheap ones first, so a broken toolchain shows before the long UNet compile
BUILD_ORDER = ("time_embedding", "conditioning", "clip_image", "vae_encoder", "vae_decoder", "unet_step")
#: largest ``max|engine - eager| / max|eager|`` the verification accepts, per precision. Both sides compute
#: in that precision and differ only in kernel choice and summation order; a wrong graph (a weight, a
#: layout, an op) is off by O(1), far above these.
TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


class BuildError(RuntimeError):
    """The engines could not be built (bad options, a failing export, or a failed verification)."""


@dataclass(frozen=True)
class Exporter:
    """One backend's build side.

    Attributes:
        suffix: the artifact's file name suffix.
        prepare: ``device -> toolchain record`` for the manifest; checks the build tools first and
            raises :class:`~vfrt.engines.engine_dir.EngineLoadError` when their output would not load here.
        export: ``(spec, module, path, device) -> spec built`` writes one artifact.
    """

    suffix: str
    prepare: Callable[[torch.device], dict | None]
    export: Callable[[NetworkSpec, nn.Module, Path, torch.device], NetworkSpec]


def _aoti() -> Exporter:
    from vfrt.export import aoti
    return Exporter(aoti.SUFFIX, aoti.prepare, aoti.export_network)


#: backend name -> its exporter, imported only when used. A backend adds one function and one line.
EXPORTERS: dict[str, Callable[[], Exporter]] = {
    "aoti": _aoti,
}


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
    """

    backend: BackendName = "aoti"
    device: str = "auto"
    precision: Precision | None = None
    max_refs: int = DEFAULT_MAX_REFS
    max_batch: int = DEFAULT_MAX_BATCH
    use_ema: bool = True
    verify: bool = True
    force: bool = False

    def __post_init__(self):
        if self.backend not in EXPORTERS:
            raise BuildError(f"unknown backend {self.backend!r}; one of {', '.join(sorted(EXPORTERS))}")
        if self.precision is not None and self.precision not in get_args(Precision):
            raise BuildError(f"precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        for name in ("max_refs", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1023:
                raise BuildError(f"{name} must be an integer in 1..1023, got {value!r}")

    def resolve(self) -> tuple[torch.device, Precision]:
        """The device (checked present) and the precision for it."""
        try:
            device = resolve_device(self.device)
        except DeviceError as exc:
            raise BuildError(str(exc)) from exc
        precision = self.precision or ("float16" if device.type == "cuda" else "float32")
        if device.type == "cpu" and precision != "float32":
            raise BuildError(f"{precision} engines need a CUDA device; build CPU engines in float32")
        return device, precision


@dataclass(frozen=True)
class BuildResult:
    """A finished build: where, its manifest, whether existing engines were reused, and how long it took."""

    directory: Path
    manifest: Manifest
    reused: bool
    seconds: float


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
    device, precision = build.resolve()
    exporter, loader = EXPORTERS[build.backend](), backend_loader(build.backend)
    digests = DigestIndex()
    report("fingerprinting the checkpoint", 0, _STEPS)
    entry = checkpoint_entry(Path(checkpoint), use_ema=build.use_ema, config=config, digests=digests)
    platform = Platform.here(device)
    target = Path(out).expanduser() if out is not None else engines_root() / engine_key(
        entry, backend=build.backend, precision=precision, platform=platform, max_refs=build.max_refs,
        max_batch=build.max_batch)
    _refuse_foreign(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        if not build.force and _usable(target, device):
            return BuildResult(target, read_manifest(target), True, time.perf_counter() - started)
        _remove_leftovers(target)
        try:
            toolchain = exporter.prepare(device)
        except EngineError as exc:
            raise BuildError(f"this process could not load the engines it would build: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a compiler missing or broken, in whatever way it fails
            raise BuildError(f"checking the {build.backend} build tools failed ({_first_line(exc)}); is a C++ "
                             "compiler installed ($CXX, else g++)?") from exc
        report("loading the weights", 1, _STEPS)
        from vfrt.models import load_zero123
        model = load_zero123(checkpoint, config=config, trust_checkpoint=trust_checkpoint, use_ema=build.use_ema,
                             device="cpu")
        model_config = json.loads(json.dumps(dataclasses.asdict(model.config)))      # as the manifest reads back
        from vfrt.engines.specs import build_networks
        dtype = TORCH_DTYPES[precision]
        networks = build_networks(model, device, dtype, dtype, channels_last=device.type == "cuda",
                                  attention=TRACED_ATTENTION, copy_weights=False)
        del model
        specs = networks.specs(max_refs=build.max_refs, max_batch=build.max_batch)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            entries = {}
            for i, name in enumerate(BUILD_ORDER):
                report(f"exporting {name}", 2 + i, _STEPS)
                file = name + exporter.suffix
                try:
                    built = exporter.export(specs[name], networks.module(name), tmp / file, device)
                except Exception as exc:  # noqa: BLE001 - tracer and compiler errors of every kind
                    raise BuildError(f"exporting {name} ({build.backend}) failed: {_first_line(exc)}") from exc
                entries[name] = NetworkEntry.from_spec(built, file, sha256_file(tmp / file), (tmp / file).stat().st_size)
            manifest = Manifest(
                backend=build.backend, backend_version=loader.version(), precision=precision, vae_precision=precision,
                channels_last=device.type == "cuda", max_refs=build.max_refs, max_batch=build.max_batch,
                platform=platform, checkpoint=entry, model_config=model_config,
                networks=tuple(entries[n] for n in NETWORK_NAMES), toolchain=toolchain,
                built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            write_manifest(tmp, manifest)
            if build.verify:
                report("verifying against PyTorch", 2 + len(BUILD_ORDER), _STEPS)
                errors = verify_engine(manifest, tmp, networks, loader, device, TOLERANCE[precision])
                manifest = dataclasses.replace(manifest, networks=tuple(
                    dataclasses.replace(n, max_error=errors[n.name]) for n in manifest.networks))
            manifest = dataclasses.replace(manifest, build_seconds=round(time.perf_counter() - started, 1))
            write_manifest(tmp, manifest)
            report("publishing", _STEPS - 1, _STEPS)
            _publish(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for n in manifest.networks:        # the hashes are known: later loads need not read the files again
        digests.record(target / n.file, n.sha256)
    return BuildResult(target, manifest, False, time.perf_counter() - started)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400] if text else '-'}"


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


def _usable(target: Path, device: torch.device) -> bool:
    """Are the engines at ``target`` complete, intact and right for this machine (else they are rebuilt)?"""
    if not (target / MANIFEST_NAME).exists():
        return False
    try:
        check_engine_dir(target, EngineConfig(device=str(device)))
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


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target`` (an existing one is moved aside first, then deleted)."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
