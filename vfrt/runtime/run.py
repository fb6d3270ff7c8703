"""A whole `vfrt run`: validated configuration, generation, and an output folder that is either
complete or clearly partial (resumable), never half-written under its final name.

Layout of a finished orbit folder ``OUT/``::

    views/000.png ... views/NNN.png   orbit order: 000 = the input, view i at azimuth i*360/N
    views/low_000.png ...             with a low ring (--low-ring L): view j at azimuth j*360/L, the ring's
                                      elevation (input elevation - --low-ring-polar); in the cameras too
    transforms.json, cameras.json     SPEC §8 cameras (nerfstudio / OpenCV), for `vfrt recon`
    grid.png                          contact sheet, each view labelled with its angles
    orbit.gif, orbit.mp4              turntable animations (imageio, imageio-ffmpeg's own ffmpeg)
    input.png, mask.png               the model input (preprocessed, on white) and the object mask
                                      found in the photo (at the photo's resolution; see
                                      vfrt/runtime/segment.py), when preprocessing
    inputs/                           copies of the input photos as given (0_<name> = IMAGE); each
                                      --extra-input also gets <i>_<stem>.input.png / .mask.png
    noise.npz                         with --save-noise: the noise bank, `--noise OUT/noise.npz` replays it
                                      (without it, the same --seed and settings draw the same noise)
    run.json                          parameters, timings, inputs (with the segmentation method),
                                      references and weights per view

Single-target mode writes ``views/input.png``, ``views/step_XX.png`` and ``target.png`` instead
of the orbit views, cameras and animations. :func:`run_many_to_folders` writes the same orbit folder
for each of many photos while their orbits advance together on the GPU (batched orbits).
While running, everything goes to ``OUT.partial/`` (with each generated view as exact float32
``.npy`` for resuming); the folder is renamed to ``OUT`` only when complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from PIL import Image

from vfrt.atomic import atomic_folder, replace_folder
from vfrt.runtime.media import MediaError, contact_sheet, require_media_tools, write_gif, write_mp4
from vfrt.runtime.noise import NoiseBank
from vfrt.runtime.preprocess import PreparedImage, prepare_image, to_uint8
from vfrt.runtime.sampler import SamplerConfig
from vfrt.runtime.segment import SEGMENT_METHODS, SegmentMethod, rembg_status
from vfrt.version import __version__

log = logging.getLogger(__name__)

Mode = Literal["orbit", "single", "multi"]


class RunError(RuntimeError):
    """A run cannot start or continue (bad folder state, mismatched resume)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's output besides the image and the weights (validated on construction).

    Attributes:
        mode: "orbit", "single" (one target pose) or "multi" (several input views).
        views: N of an orbit, input included (>= 2).
        generate: stop an orbit after this many generated views (None: all N - 1).
        delta_polar, delta_azimuth, delta_radius: single mode's target pose (degrees; radius in model units).
        elevation: the input camera's elevation above the horizon (degrees, -90..90), for the cameras.
        preprocess: Zero123's crop / recentre of the input.
        extra_inputs: multi mode: (path, polar, azimuth, radius) of each extra input view, degrees.
        sampler: the sampler settings (steps, eta, guidance, temperatures, seed, noise mode).
        low_ring: orbit mode: this many more views on a second ring, after the complete orbit (0: none;
            a vfrt extension: :func:`vfrt.runtime.poses.plan_low_ring`).
        low_ring_polar: how far below the input's elevation that ring is (degrees, the polar delta).
        save_noise: also write ``noise.npz``, every random draw of the run (``--noise`` replays it). Off by
            default: a seeded run's draws come from the torch CPU generator, so the same seed and settings
            give them again, and a 36-view "exact" orbit's bank is ~0.75 GB (S x K_v x C x h x w floats per
            view). A choice of what to write, not of what is generated: not part of the resume fingerprint.
    """

    mode: Mode = "orbit"
    views: int = 36
    generate: int | None = None
    delta_polar: float = 0.0
    delta_azimuth: float = 0.0
    delta_radius: float = 0.0
    elevation: float = 30.0
    preprocess: bool = True
    extra_inputs: tuple[tuple[str, float, float, float], ...] = field(default_factory=tuple)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    #: how to find the object in photos without alpha (vfrt/runtime/segment.py)
    segment: SegmentMethod = "auto"
    low_ring: int = 0
    low_ring_polar: float = 45.0
    save_noise: bool = False

    def __post_init__(self):
        if self.mode not in ("orbit", "single", "multi"):
            raise ValueError(f"mode must be orbit, single or multi, got {self.mode!r}")
        if self.views < 2:
            raise ValueError(f"views must be >= 2, got {self.views}")
        if self.generate is not None and not 1 <= self.generate <= self.views - 1:
            raise ValueError(f"generate must be in [1, {self.views - 1}], got {self.generate}")
        for name in ("delta_polar", "delta_azimuth", "delta_radius", "elevation"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if not -90.0 <= self.elevation <= 90.0:
            raise ValueError(f"elevation is the input camera's angle above the horizon: -90..90 degrees, "
                             f"got {self.elevation:g}")
        for polar, azimuth, radius, what in [(self.delta_polar, self.delta_azimuth, self.delta_radius, "the target")] + \
                [(p, a, r, f"extra input {path}") for path, p, a, r in self.extra_inputs]:
            check_pose_delta(polar, azimuth, radius, self.elevation, what)
        if self.mode == "single" and self.delta_polar == 0 and self.delta_azimuth == 0 and self.delta_radius == 0:
            raise ValueError("single mode needs a target pose: give --polar, --azimuth and/or --radius")
        if self.mode == "multi" and not self.extra_inputs:
            raise ValueError("multi mode needs at least one extra input view")
        if self.low_ring < 0:
            raise ValueError(f"low_ring must be >= 0, got {self.low_ring}")
        if self.low_ring:
            if self.mode != "orbit":
                raise ValueError("a low ring is for orbit mode")
            if self.generate is not None and self.generate != self.views - 1:
                raise ValueError("a low ring follows a complete orbit: drop --generate (or --low-ring)")
            below = self.elevation - self.low_ring_polar
            if not (math.isfinite(self.low_ring_polar) and 0 < self.low_ring_polar < 180 and -90 < below < 90):
                raise ValueError(f"the low ring's polar offset must put its cameras between the poles: elevation "
                                 f"{self.elevation:g} - {self.low_ring_polar:g} degrees is {below:g}")
        if self.segment not in SEGMENT_METHODS:
            raise ValueError(f"segment must be one of {', '.join(SEGMENT_METHODS)}, got {self.segment!r}")
        if self.segment == "rembg" and not rembg_status()[0]:
            raise ValueError(f"segment 'rembg' cannot run: {rembg_status()[1]}; use auto or grabcut")

    @property
    def generated_views(self) -> int:
        """How many views the run generates."""
        if self.mode == "single":
            from vfrt.runtime.poses import plan_single
            return len(plan_single(math.radians(self.delta_polar), math.radians(self.delta_azimuth),
                                   self.delta_radius))
        return (self.generate or self.views - 1) + self.low_ring


#: the orbit's camera distance (SPEC §8); a radius delta must keep the camera outside the object
CAMERA_DISTANCE = 1.5


def check_pose_delta(polar: float, azimuth: float, radius: float, elevation: float, what: str = "the pose") -> None:
    """Refuse a pose delta no camera can have: the polar angle of the input (90 - elevation) plus the delta
    must stay within 0..180 degrees, the azimuth within one turn either way, the distance positive."""
    polar_now = 90.0 - elevation
    if not 0.0 <= polar_now + polar <= 180.0:
        raise ValueError(f"{what}: polar delta {polar:g} degrees takes the camera past a pole (input polar "
                         f"{polar_now:g}, so the delta must be within {-polar_now:g}..{180 - polar_now:g})")
    if not -360.0 <= azimuth <= 360.0:
        raise ValueError(f"{what}: azimuth delta must be within -360..360 degrees, got {azimuth:g}")
    if not -CAMERA_DISTANCE < radius < CAMERA_DISTANCE:
        raise ValueError(f"{what}: radius delta must be within +-{CAMERA_DISTANCE:g} (camera distance "
                         f"{CAMERA_DISTANCE:g}), got {radius:g}")


def run_fingerprint(image: Path, cfg: RunConfig, noise: NoiseBank | None, backend: str, resolution: int) -> dict:
    """What a resumable partial folder must match: the settings, the photo's bytes, the noise, the engine."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "save_noise"}      # what is written, not generated
    fingerprint = {"config": settings, "image_sha256": _sha256(image),
                   "noise_sha256": None if noise is None else hashlib.sha256(
                       b"".join(a.tobytes() for a in noise.x_T + noise.step_noise)).hexdigest(),
                   "backend": backend, "resolution": resolution}
    return json.loads(json.dumps(fingerprint))  # the form it has after a JSON round trip


def check_output_folder(out: Path, fingerprint: dict, *, overwrite: bool, resume: bool) -> None:
    """Raise :class:`RunError` before any work when ``out`` cannot be written as asked.

    * ``out`` exists and ``overwrite`` is False;
    * ``out.partial`` holds an unfinished run with other settings while ``resume`` is True (its finished
      views are never deleted silently: pass ``resume=False`` - CLI ``--no-resume`` - to discard them);
    * the folder cannot be created (a probe directory is made and removed next to it);
    * the animation writers' packages are missing (:func:`vfrt.runtime.media.require_media_tools`).
    """
    out = Path(out)
    try:
        require_media_tools()
    except MediaError as exc:
        raise RunError(str(exc)) from exc
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; choose another --out or pass --overwrite")
    partial = out.with_name(out.name + ".partial")
    done = _finished_views(partial)
    old = _partial_fingerprint(partial)
    if resume and done and old != fingerprint:
        changed = sorted(_changed_settings(old, fingerprint)) if old is not None else ["unreadable run.json"]
        raise RunError(f"{partial} holds an unfinished run ({done} views done) with other settings "
                       f"({', '.join(changed)} differ); run it again with the same settings to resume it, "
                       "or pass --no-resume to discard it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".vfrt-probe-", dir=out.parent))
        probe.rmdir()
    except OSError as exc:
        raise RunError(f"cannot write the output folder {out}: {exc.strerror or exc}") from exc


def _finished_views(partial: Path) -> int:
    folder = partial / "generated"
    return len(list(folder.glob("v*.npy"))) if folder.is_dir() else 0


def _partial_fingerprint(partial: Path) -> dict | None:
    try:
        return json.loads((partial / "run.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = set(old) | set(new)
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(to_uint8(image)).save(path)


def _pose_label(polar_deg: float, azimuth_deg: float, radius: float = 0.0) -> str:
    """Grid label of a pose delta, e.g. "pol -10° az +65°" (radius only when non-zero)."""
    text = f"pol {polar_deg:+.0f}° az {azimuth_deg:+.0f}°"
    return text + (f" r {radius:+.2g}" if radius else "")


def prepare_inputs(image: str | Path, cfg: RunConfig, resolution: int) -> list[PreparedImage]:
    """IMAGE and the extra input photos as the model will see them (segmented where needed), in order.

    Raises :class:`~vfrt.runtime.preprocess.ImageInputError` for an unreadable, truncated or blank photo:
    callers run this before loading a model, so bad input fails in seconds.
    """
    photos = [Path(image)] + [Path(p) for p, *_ in cfg.extra_inputs]
    return [prepare_image(p, resolution, cfg.preprocess, cfg.segment) for p in photos]


def run_to_folder(pipe, image: str | Path, cfg: RunConfig, out_dir: str | Path, *, noise: NoiseBank | None = None,
                  overwrite: bool = False, resume: bool = True,
                  on_view: Callable[[int, int], None] | None = None,
                  prepared: Sequence[PreparedImage] | None = None,
                  on_step: Callable[[int, int], None] | None = None) -> Path:
    """Generate with ``pipe`` and write the output folder ``out_dir`` (see module docstring).

    ``on_view(done, total)`` is called after each generated view and ``on_step(done, total)`` after each
    denoising step within a view (for progress bars). ``prepared``: the
    photos from :func:`prepare_inputs`, when the caller validated them already. An unfinished
    ``out_dir.partial`` with the same settings is resumed (``resume``); one with other settings is refused
    (:func:`check_output_folder`). Returns the finished folder's path.
    """
    folder = RunFolder(pipe, image, cfg, out_dir, noise=noise, overwrite=overwrite, resume=resume, prepared=prepared)

    def save_view(v: int, img: np.ndarray, plan) -> None:
        folder.save_view(v, img)
        if on_view is not None:
            on_view(v + 1, folder.total)

    common = dict(sampler=cfg.sampler, noise=noise, preprocess=cfg.preprocess, on_view=save_view, resume=folder.done)
    prepared = folder.prepared
    t0 = time.perf_counter()
    previous_on_step, pipe.on_step = getattr(pipe, "on_step", None), on_step
    try:
        if cfg.mode == "orbit":
            result = pipe.orbit(prepared[0], views=cfg.views, generate=cfg.generate, low_ring=cfg.low_ring,
                                low_ring_polar=cfg.low_ring_polar, **common)
        elif cfg.mode == "single":
            result = pipe.single(prepared[0], delta_polar=cfg.delta_polar, delta_azimuth=cfg.delta_azimuth,
                                 delta_radius=cfg.delta_radius, **common)
        else:
            poses = [(0.0, 0.0, 0.0)] + [tuple(x) for _, *x in cfg.extra_inputs]
            result = pipe.multi_view(prepared, poses, views=cfg.views, generate=cfg.generate, **common)
    finally:
        pipe.on_step = previous_on_step
    return folder.finish(result, time.perf_counter() - t0)


#: photos prepared ahead of the batch by :func:`run_many_to_folders`, per batch slot
PREPARED_PER_SLOT = 4


def run_many_to_folders(pipe, images, cfg: RunConfig, out_dirs, *, batch: int, noise=None, overwrite: bool = False,
                        resume: bool = True, on_view: Callable[[int, int, int], None] | None = None,
                        share: Callable[[object], object] | None = None, writer: bool = True) -> list:
    """One orbit folder per photo, ``batch`` orbits advancing together (:meth:`Pipeline.orbit_many`).

    Each folder is what :func:`run_to_folder` writes for that photo alone (same files, same images up to
    the rounding of the batched kernels, same run.json apart from timings), made the same way: in
    ``OUT.partial/``, resumable, renamed when complete. A photo that fails (unreadable, a finished
    folder in the way, a non-finite view) does not stop the others.

    Args:
        images: photo paths; out_dirs: one output folder per photo.
        noise: None, or one noise bank (or None) per photo.
        on_view: ``(photo index, done, total)`` after each generated view.
        share, writer: for the processes of a multi-GPU run (:mod:`vfrt.runtime.multigpu`): only the
            ``writer`` prepares photos and touches folders; ``share(work)`` hands the writer's description
            of each chunk (prepared photos, noise banks, resumed views) to every process, so all run the
            same generation.
    Returns:
        Per photo, the finished folder's path or the exception that stopped it (empty for a non-writer).
    """
    images, out_dirs = [Path(i) for i in images], [Path(o) for o in out_dirs]
    if cfg.low_ring:
        raise RunError("batched orbits have no low ring: run the photos one at a time (run_to_folder)")
    if len(images) != len(out_dirs):
        raise ValueError(f"got {len(images)} images but {len(out_dirs)} output folders")
    if cfg.mode != "orbit":
        raise RunError(f"batched runs make one orbit per photo (mode 'orbit'), not mode {cfg.mode!r}")
    noise = [None] * len(images) if noise is None else list(noise)
    if len(noise) != len(images):
        raise ValueError(f"got {len(images)} images but {len(noise)} noise banks")
    outcomes: list = [None] * len(images)
    chunk = batch * PREPARED_PER_SLOT       # bounds the prepared photos (and masks) held at once
    for first in range(0, len(images), chunk):
        folders = {}
        for i in (range(first, min(first + chunk, len(images))) if writer else ()):
            try:
                folders[i] = RunFolder(pipe, images[i], cfg, out_dirs[i], noise=noise[i], overwrite=overwrite,
                                       resume=resume)
            except (RunError, ValueError) as exc:      # ImageInputError and NoiseBankError are ValueErrors
                outcomes[i] = exc
        # (photo index, model input, noise bank, resumed views) of each photo this chunk generates
        work = [(i, PreparedImage(f.prepared[0].tensor), noise[i], f.done) for i, f in folders.items()]
        if share is not None:
            work = share(work if writer else None)
        if not work:
            continue
        order = [i for i, *_ in work]

        def save_view(slot: int, v: int, img: np.ndarray, plan) -> None:
            if writer:
                folder = folders[order[slot]]
                folder.save_view(v, img)
                if on_view is not None:
                    on_view(order[slot], v + 1, folder.total)

        results = pipe.orbit_many([w[1] for w in work], views=cfg.views, generate=cfg.generate,
                                  sampler=cfg.sampler, batch=batch, noise=[w[2] for w in work],
                                  preprocess=cfg.preprocess, on_view=save_view,
                                  resume=[w[3] for w in work], failures="return")
        if not writer:
            continue
        for i, result in zip(order, results):
            if isinstance(result, Exception):
                outcomes[i] = result
                continue
            try:
                outcomes[i] = folders[i].finish(result, result.seconds)
            except RunError as exc:
                outcomes[i] = exc
    return outcomes if writer else []


class RunFolder:
    """One run's output folder while it is being made: ``OUT.partial/`` until :meth:`finish` renames it.

    Construction checks the folder (:func:`check_output_folder`: an existing ``OUT``, an unfinished run with
    other settings, an unwritable place are refused) and prepares the photos (or takes ``prepared``) before
    anything is written, so a bad photo leaves no folder behind; then it opens ``OUT.partial/``: an
    unfinished folder of the same run (same fingerprint: configuration, photo, noise, backend, resolution)
    is resumed, any other one (only with ``resume=False``) is replaced.

    Attributes:
        prepared: the prepared photos (IMAGE first, then the extra inputs).
        done: the views generated earlier (resume), float32 (3, H, W) each.
        total: views the run generates.
    """

    def __init__(self, pipe, image: str | Path, cfg: RunConfig, out_dir: str | Path, *,
                 noise: NoiseBank | None = None, overwrite: bool = False, resume: bool = True,
                 prepared: Sequence[PreparedImage] | None = None):
        image = Path(image)
        self.cfg, self.out = cfg, Path(out_dir)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.photos = [image] + [Path(p) for p, *_ in cfg.extra_inputs]
        self.prepared = list(prepared) if prepared is not None else prepare_inputs(image, cfg, pipe.resolution)
        self.fingerprint = run_fingerprint(image, cfg, noise, pipe.backend, pipe.resolution)
        check_output_folder(self.out, self.fingerprint, overwrite=overwrite, resume=resume)
        self.done: list[np.ndarray] = []
        partial = self.partial
        if partial.exists():
            if resume and _partial_fingerprint(partial) == self.fingerprint:
                v = 0
                while (partial / "generated" / f"v{v:02d}.npy").is_file():
                    self.done.append(np.load(partial / "generated" / f"v{v:02d}.npy"))
                    v += 1
                log.info("resuming %s: %d views already generated", partial, len(self.done))
            else:
                shutil.rmtree(partial)
        (partial / "generated").mkdir(parents=True, exist_ok=True)
        (partial / "run.json").write_text(json.dumps({"fingerprint": self.fingerprint, "complete": False}, indent=2))

    @property
    def total(self) -> int:
        return self.cfg.generated_views

    def save_view(self, v: int, img: np.ndarray) -> None:
        """Keep generated view ``v`` as exact float32 ``.npy`` (written atomically) for resuming."""
        tmp = self.partial / "generated" / f"v{v:02d}.tmp.npy"
        np.save(tmp, img.astype(np.float32))
        tmp.replace(self.partial / "generated" / f"v{v:02d}.npy")

    def finish(self, result, seconds: float) -> Path:
        """Write every output of ``result`` (a :class:`GenerationResult`) and rename the folder to ``OUT``."""
        partial, cfg = self.partial, self.cfg
        started = time.perf_counter()
        try:
            inputs_meta = _write_inputs(partial, self.photos, self.prepared, cfg)
            _write_outputs(partial, result, cfg.elevation, save_noise=cfg.save_noise)
        except MediaError as exc:
            raise RunError(f"{exc}; the generated views are kept in {partial} - run the same command again "
                           "to retry the outputs") from exc
        meta = {"fingerprint": self.fingerprint, **_result_meta(result, seconds),
                "segmentation": self.prepared[0].method, "inputs": inputs_meta}
        (partial / "run.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(partial / "generated")
        replace_folder(partial, self.out)
        log.info("wrote the outputs of %s in %.1f s", self.out, time.perf_counter() - started)
        return self.out


def _write_inputs(folder: Path, photos: list[Path], prepared: list[PreparedImage], cfg: RunConfig) -> list[dict]:
    """Copy the input photos into ``inputs/`` and save what the model was given from each:
    ``input.png`` / ``mask.png`` for IMAGE, ``inputs/<i>_<stem>.input.png`` / ``.mask.png`` for
    extra input i. Returns run.json's "inputs" list."""
    (folder / "inputs").mkdir(exist_ok=True)
    poses = [(0.0, 0.0, 0.0)] + [tuple(x) for _, *x in cfg.extra_inputs]
    meta = []
    for i, (photo, prep, pose) in enumerate(zip(photos, prepared, poses)):
        copy = f"inputs/{i}_{photo.name}"
        shutil.copyfile(photo, folder / copy)
        prefix = "" if i == 0 else f"inputs/{i}_{photo.stem}."
        entry = {"file": copy, "source": str(photo), "pose_deg": [float(x) for x in pose],
                 "segmentation": prep.method, "model_input": f"{prefix}input.png", "mask": None}
        Image.fromarray(prep.input_uint8()).save(folder / entry["model_input"])
        if prep.mask is not None:
            entry["mask"] = f"{prefix}mask.png"
            Image.fromarray(prep.mask.astype(np.uint8) * 255).save(folder / entry["mask"])
        meta.append(entry)
    return meta


def save_result(result, folder: str | Path, *, elevation: float = 30.0, overwrite: bool = False,
                save_noise: bool = False) -> Path:
    """Write a :class:`~vfrt.runtime.pipeline.GenerationResult` as the folder ``vfrt run`` writes (views,
    cameras / transforms.json, labelled grid, orbit.gif/.mp4, run.json; noise.npz with ``save_noise``), atomically: into a
    temporary sibling first, renamed when complete. The input photos themselves are not part of a result:
    ``inputs/`` and ``mask.png`` are written by :func:`run_to_folder` only."""
    out = Path(folder)
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; choose another folder or pass overwrite=True")
    if not -90.0 <= elevation <= 90.0:
        raise ValueError(f"elevation must be within -90..90 degrees, got {elevation:g}")
    try:
        with atomic_folder(out) as tmp:
            _write_outputs(tmp, result, elevation, save_noise=save_noise)
            (tmp / "run.json").write_text(json.dumps({**_result_meta(result, result.seconds), "elevation": elevation},
                                                     indent=2))
    except OSError as exc:
        raise RunError(f"cannot write the output folder {out}: {exc.strerror or exc}") from exc
    return out


def _result_meta(result, seconds: float) -> dict:
    """run.json's description of a finished generation."""
    return {"complete": True, "vfrt_version": __version__, "mode": result.mode, "seconds": round(seconds, 3),
            "sampler": asdict(result.sampler), "engine": result.engine,
            "generated_views": [{"generation_index": v, "pose_deg": [math.degrees(result.poses[v][0]),
                                                                     math.degrees(result.poses[v][1]),
                                                                     float(result.poses[v][2])],
                                 "references": result.references[v].tolist(),
                                 "weights": [float(w) for w in result.weights[v]]}
                                for v in range(len(result.images))]}


def _write_outputs(folder: Path, result, elevation: float, *, save_noise: bool) -> None:
    views = folder / "views"
    views.mkdir(exist_ok=True)
    if save_noise and result.noise is not None:      # None: "fast" noise mode, drawn on the device
        result.noise.save(folder / "noise.npz")
    if result.mode == "single":
        _save_png(views / "input.png", result.inputs[0])
        for v, im in enumerate(result.images):
            _save_png(views / f"step_{v + 1:02d}.png", im)
        _save_png(folder / "target.png", result.images[-1])
        labels = ["input"] + [_pose_label(math.degrees(p[0]), math.degrees(p[1]), float(p[2])) for p in result.poses]
        contact_sheet([to_uint8(im) for im in np.concatenate([result.inputs[:1], result.images])],
                      labels, cols=8).save(folder / "grid.png")
        (folder / "cameras.json").write_text(json.dumps({
            "convention": "pose deltas relative to the input view (polar, azimuth in degrees, radius)",
            "views": [{"file": f"views/step_{v + 1:02d}.png",
                       "delta_polar_deg": math.degrees(p[0]), "delta_azimuth_deg": math.degrees(p[1]),
                       "delta_radius": float(p[2])} for v, p in enumerate(result.poses)]}, indent=2))
        return
    frames = [to_uint8(im) for im in result.orbit_images()]
    names = [f"views/{i:03d}.png" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(folder / name)
    labels = [f"az {a:.0f}°" for a in np.degrees(result.orbit_azimuths())]
    labels[0] = "input, az 0°"
    # multi mode: the extra input views (as the model saw them) close the sheet, with their poses
    extra = [to_uint8(im) for im in result.inputs[1:]]
    labels += [f"input {i}: " + _pose_label(math.degrees(p), math.degrees(a), float(r))
               for i, (p, a, r) in enumerate(result.input_poses[1:], start=1)]
    low = [to_uint8(im) for im in result.low_ring_images()]
    low_poses = result.low_ring_poses()
    low_names = [f"views/low_{j:03d}.png" for j in range(len(low))]
    for name, frame in zip(low_names, low):
        Image.fromarray(frame).save(folder / name)
    labels += [f"low ring: elev {elevation - math.degrees(p):.0f}°, az {math.degrees(a):.0f}°" for p, a, _ in low_poses]
    contact_sheet(frames + extra + low, labels).save(folder / "grid.png")
    _write_cameras(folder, result, elevation, names, list(zip(low_names, low_poses)))
    write_gif(folder / "orbit.gif", frames)
    write_mp4(folder / "orbit.mp4", frames)


def _write_cameras(folder: Path, result, elevation: float, names: list[str], low: list[tuple[str, np.ndarray]]) -> None:
    """cameras.json (every view) and, for a complete orbit, transforms.json (both rings when there is a low one).
    ``low``: the low ring's (file name, (polar delta, azimuth, radius)) pairs."""
    from vfrt.runtime.cameras import Intrinsics, world_to_camera, write_transforms_json_rings
    n = len(names)
    complete = n == result.n_views
    size = result.inputs.shape[-1]
    k = Intrinsics.default(size)
    low_names = [name for name, _ in low]
    ring_elevation = [elevation] * n + [elevation - math.degrees(pose[0]) for _, pose in low]
    azimuths = list(result.orbit_azimuths()) + [pose[1] for _, pose in low]
    cams = []
    for name, a, e in zip(names + low_names, azimuths, ring_elevation):
        w2c = world_to_camera(float(a), math.radians(e))
        cams.append({"file": name, "azimuth_deg": math.degrees(float(a)), "elevation_deg": e,
                     "polar_deg": 90.0 - e, "distance": CAMERA_DISTANCE, "world_to_camera_opencv": w2c.tolist()})
    (folder / "cameras.json").write_text(json.dumps({
        "convention": "SPEC §8: world z up, OpenCV world-to-camera; K at 256 px = [[280,0,128],[0,280,128],[0,0,1]]",
        "K": [[k.fx, 0.0, k.cx - 0.5], [0.0, k.fy, k.cy - 0.5], [0.0, 0.0, 1.0]], "width": size, "height": size,
        "views": cams}, indent=2))
    if complete:
        rings = [(n, elevation, names)]
        if low_names:
            rings.append((len(low_names), ring_elevation[-1], low_names))
        write_transforms_json_rings(folder / "transforms.json", rings, image_size=size)
