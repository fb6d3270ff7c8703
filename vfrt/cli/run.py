"""`vfrt run IMAGE`: novel views from one photo (orbit, single target pose, or several inputs).

Everything that can be checked without the weights is checked first - options (exit 2), the
checkpoint's config, the noise bank, every photo (decoded and segmented), the output folders - so
bad input fails in seconds, not after a model load.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from vfrt.engines.config import COMPILE_MIN_VIEWS
from vfrt.runtime.segment import SEGMENT_METHODS


def _parse_extra(values) -> tuple:
    out = []
    for v in values:
        path, sep, pose = v.rpartition("@")
        if not sep:
            raise click.BadParameter(f"{v!r}: expected PATH@POLAR,AZIMUTH[,RADIUS]", param_hint="--extra-input")
        try:
            nums = [float(x) for x in pose.split(",")]
        except ValueError as exc:
            raise click.BadParameter(f"{v!r}: pose must be numbers", param_hint="--extra-input") from exc
        if len(nums) not in (2, 3):
            raise click.BadParameter(f"{v!r}: give POLAR,AZIMUTH[,RADIUS]", param_hint="--extra-input")
        if not Path(path).is_file():
            raise click.BadParameter(f"image not found: {path}", param_hint="--extra-input")
        out.append((path, nums[0], nums[1], nums[2] if len(nums) == 3 else 0.0))
    return tuple(out)


@click.command("run")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-c", "--checkpoint", help="Zero123 .ckpt, .safetensors or diffusers folder [default: $VFRT_CHECKPOINT, "
              "./checkpoints/zero123-xl.ckpt, ~/.cache/vfrt/zero123-xl.ckpt].")
@click.option("--config", type=click.Path(exists=True, dir_okay=False),
              help="The checkpoint's ldm YAML [default: Zero123 full size].")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of a checkpoint you trust.")
@click.option("--no-ema", is_flag=True, help="Use the raw UNet weights instead of the EMA weights.")
@click.option("--mode", type=click.Choice(["orbit", "single"]), default="orbit", show_default=True,
              help="orbit: a 360-degree ring of views; single: one target pose (--polar/--azimuth/--radius).")
@click.option("--views", type=click.IntRange(min=2), default=36, show_default=True,
              help="Views in the orbit, input included (>= 2).")
@click.option("--generate", type=click.IntRange(min=1), default=None,
              help="Stop the orbit after this many generated views (1..VIEWS-1) [default: all].")
@click.option("--low-ring", type=click.IntRange(min=0), default=0, show_default=True,
              help="Orbit mode: after the orbit, this many views on a second ring below it (e.g. 12), so that "
                   "`vfrt recon` sees under the object (a vfrt extension of ViewFusion's orbit).")
@click.option("--low-ring-polar", type=click.FloatRange(0, 180, min_open=True, max_open=True), default=45.0,
              show_default=True, help="How many degrees below the input's elevation the low ring is.")
@click.option("--polar", default=0.0, show_default=True,
              help="Single mode: polar delta in degrees (negative = up); the camera must stay between the poles.")
@click.option("--azimuth", default=0.0, show_default=True, help="Single mode: azimuth delta in degrees (-360..360).")
@click.option("--radius", default=0.0, show_default=True, help="Single mode: radius delta (-1.5..1.5, model units).")
@click.option("--extra-input", multiple=True, metavar="PATH@POLAR,AZIMUTH[,RADIUS]",
              help="More input views with their pose relative to IMAGE (degrees); switches to multi-input orbit.")
@click.option("--steps", type=click.IntRange(min=2), default=75, show_default=True,
              help="DDIM steps (>= 2; 75 runs 76 UNet steps per view, as the original).")
@click.option("--guidance", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Classifier-free guidance scale (>= 0; 1 = none).")
@click.option("--eta", type=click.FloatRange(min=0), default=1.0, show_default=True, help="DDIM eta (>= 0).")
@click.option("--inference-temp", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="tau_inf of the input view's weight (> 0).")
@click.option("--auto-temp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="tau_auto of the generated references' weights (> 0) [default: 0.5; 1.0 with --extra-input].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random draw.")
@click.option("--noise", "noise_path", type=click.Path(exists=True, dir_okay=False),
              help="Replay a run's noise bank (its noise.npz): the same views again, bit for bit.")
@click.option("--save-noise", is_flag=True,
              help="Also write noise.npz, every random draw (~0.75 GB for a 36-view orbit); without it the same "
                   "--seed and settings draw the same noise again.")
@click.option("--noise-mode", type=click.Choice(["exact", "shared", "fast"]), default="exact", show_default=True,
              help="exact: one replayable draw per reference and step (the original); shared: one draw shared by "
                   "the references (ViewFusion's real-image script); fast: the same distribution drawn on the "
                   "device, not replayable.")
@click.option("--no-preprocess", is_flag=True, help="Use the pixels as given (RGBA on white): no crop/recentre.")
@click.option("--segment", type=click.Choice(SEGMENT_METHODS), default="auto", show_default=True,
              help="How to find the object in a photo without alpha: rembg (needs rembg and its model on disk), "
                   "OpenCV GrabCut, or none (non-white pixels); auto = rembg when usable, else GrabCut. "
                   "Photos with alpha use it.")
@click.option("--elevation", type=click.FloatRange(-90, 90), default=30.0, show_default=True,
              help="The input camera's elevation above the horizon in degrees (-90..90), for the cameras.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--backend", type=click.Choice(["auto", "reference", "fast"]), default="auto", show_default=True,
              help="fast: exact identities, fp16 on CUDA; reference: the original's op order in fp32.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Fast backend compute dtype [default: float16 on CUDA, float32 on the CPU].")
@click.option("--compile/--no-compile", "compile_unet", default=None,
              help="Fast backend: torch.compile the UNet: faster steps for a one-off compile of tens of seconds "
                   f"[default: on when the run generates >= {COMPILE_MIN_VIEWS} views, where it pays off - "
                   "docs/PERF.md].")
@click.option("--engines", "engines_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Run the engines built in this directory (`vfrt build-engines`); stop if they do not fit "
                   "[default: matching engines from the cache when there are, else PyTorch].")
@click.option("--no-engines", is_flag=True, help="Never use built engines: load the checkpoint, run PyTorch.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: runs/<image name>]; with several images, the parent of one folder each.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-resume", is_flag=True, help="Discard an unfinished OUT.partial instead of resuming it.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Spread the photos over Ray workers, one per GPU, each loading the model once (needs vfrt[ray]): "
                   "--ray starts Ray on this machine, --ray ADDRESS joins a cluster (auto, HOST:PORT, ray://HOST:PORT). "
                   "Photos already done are skipped; a summary goes to scaleout.json beside the output folders.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Orbits advancing together on the GPU (orbit mode, several photos): every step runs the rows of "
                   "all of them in one UNet call; photos join as others finish. Same views, more orbits per hour.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split every step's rows across this many GPUs of this machine (orbit mode; one process per GPU, "
                   "NCCL): a single orbit finishes sooner.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="Ray workers [default: one per GPU of the cluster (one per CPU without GPUs), at most one per photo].")
@click.option("--ray-gpus-per-worker", type=click.FloatRange(min=0), default=None,
              help="GPUs each Ray worker reserves [default: 1 on a cluster with GPUs, else 0; 0.5 packs two per GPU].")
@click.pass_context
def run(ctx, images, checkpoint, config, trust_checkpoint, no_ema, mode, views, generate, low_ring, low_ring_polar,
        polar, azimuth, radius,
        extra_input, steps, guidance, eta, inference_temp, auto_temp, seed, noise_path, save_noise, noise_mode, no_preprocess,
        segment, elevation, device, backend, dtype, compile_unet, engines_dir, no_engines, out, overwrite, no_resume,
        ray_address, batch, gpus, ray_workers, ray_gpus_per_worker):
    """Generate novel views of the object in each of IMAGES (RGBA photos with the background removed work best;
    others are segmented). A folder in IMAGES stands for the photos in it (sorted by name).

    Several images share one loaded model (and its captured CUDA graphs); a failing image is
    reported and the others still run. With --ray, they are spread over Ray workers instead.
    """
    from vfrt.cli.common import load_pipeline, resolve_checkpoint
    from vfrt.cli.scaleout import ray_options
    from vfrt.engines.config import EngineConfig
    from vfrt.hardware import DeviceError
    from vfrt.models import CheckpointError, peek_config
    from vfrt.runtime.noise import NoiseBank, NoiseBankError
    from vfrt.runtime.run import RunConfig
    from vfrt.runtime.sampler import SamplerConfig

    extras = _parse_extra(extra_input)
    ray = ray_options(ray_address, ray_workers, ray_gpus_per_worker)    # None without --ray
    images, many = _expand_images(images)
    if extras and mode == "single":
        raise click.UsageError("--extra-input works with the orbit mode only")
    run_mode = "multi" if extras else mode
    try:
        sampler = SamplerConfig.for_mode(run_mode, steps=steps, eta=eta, guidance=guidance,
                                         inference_temp=inference_temp, seed=seed, noise_mode=noise_mode,
                                         **({} if auto_temp is None else {"auto_temp": auto_temp}))
        cfg = RunConfig(mode=run_mode, views=views, generate=generate, delta_polar=polar, delta_azimuth=azimuth,
                        delta_radius=radius, preprocess=not no_preprocess, elevation=elevation, extra_inputs=extras,
                        sampler=sampler, segment=segment, low_ring=low_ring, low_ring_polar=low_ring_polar,
                        save_noise=save_noise)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if engines_dir and no_engines:
        raise click.UsageError("--engines and --no-engines exclude each other")
    try:
        engine = EngineConfig(backend=backend, device=device, dtype=dtype, compile=compile_unet,
                              expected_views=len(images) * cfg.generated_views,
                              engines=Path(engines_dir) if engines_dir else "off" if no_engines else "auto")
        resolved = engine.resolve()     # a bad device or precision stops here, before any weights load
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if noise_path and len(images) > 1:
        raise click.UsageError("--noise replays one run; give a single image with it")
    if (batch > 1 or gpus > 1) and (run_mode != "orbit" or ray is not None):
        raise click.UsageError("--batch and --gpus make one orbit per photo (orbit mode, without --ray)")
    if (batch > 1 or gpus > 1) and low_ring:
        raise click.UsageError("--low-ring runs one photo at a time: drop --batch / --gpus")
    if gpus > 1:
        import torch
        if torch.cuda.device_count() < gpus:
            raise click.BadParameter(f"{gpus} GPUs asked for, PyTorch sees {torch.cuda.device_count()}",
                                     param_hint="--gpus")
    try:
        noise = NoiseBank.load(noise_path) if noise_path else None
    except NoiseBankError as exc:
        raise click.BadParameter(str(exc), param_hint="--noise") from exc
    if checkpoint or not engines_dir:
        ckpt, source = resolve_checkpoint(checkpoint)
        try:
            model_config = peek_config(ckpt, config)
        except CheckpointError as exc:
            raise click.BadParameter(str(exc), param_hint="--config" if config else "--checkpoint") from exc
    else:                     # --engines without -c: the engines carry the weights and the architecture
        ckpt, source, model_config = None, "", _engine_model_config(Path(engines_dir))
    targets = _targets(images, out, many)
    skipped = []
    if (ray is not None or gpus > 1) and ckpt is None:
        raise click.UsageError("--ray and --gpus load the weights in each worker: give the checkpoint (-c)")
    if ray is not None:
        from vfrt.cli.scaleout import skip_finished
        from vfrt.runtime.scaleout import SUMMARY_NAME
        summary_path = targets[0][1].parent / SUMMARY_NAME
        targets, skipped = skip_finished(targets, cfg, noise, resolved.backend, model_config.unet.image_size * 8,
                                         overwrite)
        if not targets:
            click.echo(f"nothing to do: all {len(skipped)} photos are done already (--overwrite redoes them)")
            return
    jobs, failures = _check_inputs(targets, cfg, noise, resolved.backend, model_config.unet.image_size * 8,
                                   overwrite, not no_resume)
    if not jobs:
        raise click.UsageError(failures[0][1] if len(failures) == 1 else
                               f"all {len(failures)} images failed their checks:\n" +
                               "\n".join(f"  {image}: {why}" for image, why in failures))
    quiet = _quiet(ctx)
    if ray is not None:
        from vfrt.cli.scaleout import run_with_ray
        from vfrt.runtime.scaleout import WorkerSpec
        spec = WorkerSpec(checkpoint=str(ckpt.resolve()), model_config=str(Path(config).resolve()) if config else None,
                          engine=engine, run=cfg, trust_checkpoint=trust_checkpoint, use_ema=not no_ema, noise=noise,
                          overwrite=overwrite, resume=not no_resume)
        out_of = dict(targets)
        return run_with_ray(jobs, [(image, out_of[image], why) for image, why in failures], skipped, ray, spec,
                            summary_path, quiet)
    if batch > 1 or gpus > 1:
        return _run_together(jobs, failures, targets, cfg, noise, engine, ckpt, source, config, model_config,
                             trust_checkpoint, not no_ema, overwrite, not no_resume, batch, gpus, quiet)
    with _status(f"loading {ckpt or engines_dir}{source} ...", quiet):
        pipe = load_pipeline(ckpt, config, engine, trust_checkpoint, not no_ema, source)
    _say_engines(pipe, quiet)
    for image, out_dir, prepared in jobs:
        try:
            folder = _run_one(pipe, image, cfg, out_dir, noise, overwrite, not no_resume, run_mode, prepared, quiet)
            click.echo(f"done: {folder}")
        except click.ClickException as exc:
            if len(targets) == 1:
                raise
            failures.append((image, exc.format_message()))
            click.echo(f"failed: {image}: {exc.format_message()}", err=True)
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(targets)} images failed: "
                                   f"{', '.join(str(image) for image, _ in failures)}")


def _engine_model_config(directory: Path):
    """The architecture an engine directory was built for (its manifest), for checks before loading it."""
    from vfrt.engines.engine_dir import EngineError, read_manifest
    try:
        return read_manifest(directory).zero123_config()
    except EngineError as exc:
        raise click.BadParameter(str(exc), param_hint="--engines") from exc


def _say_engines(pipe, quiet: bool) -> None:
    """One line naming the built engines a run uses (run.json records them too)."""
    built = pipe.engine.describe().get("engines")
    if built and not quiet:
        click.echo(f"engines: {built['dir']} ({built['backend']}, {built['precision']}, built {built['built_at']})")


def _run_together(jobs, failures, targets, cfg, noise, engine, ckpt, source, config, model_config, trust: bool,
                  use_ema: bool, overwrite: bool, resume: bool, batch: int, gpus: int, quiet: bool) -> None:
    """--batch / --gpus: the checked photos as batched orbits (one GPU) or with every step split over GPUs."""
    from vfrt.cli.common import load_pipeline
    images = [image for image, _, _ in jobs]
    out_dirs = [out_dir for _, out_dir, _ in jobs]
    banks = None if noise is None else [noise]
    total = len(images) * cfg.generated_views
    done_views: dict[int, int] = {}
    label = f"{len(images)} photos: orbits, {batch} at a time" + (f", {gpus} GPUs" if gpus > 1 else "")
    with _ViewProgress(label, quiet, total=total) as progress:
        def on_view(i: int, done: int, _total: int) -> None:
            done_views[i] = done
            progress.update(sum(done_views.values()), total)
        if gpus > 1:
            from vfrt.runtime.multigpu import CheckpointPipeline, run_multi_gpu
            make = CheckpointPipeline(str(ckpt), str(config) if config else None, engine, trust, use_ema)
            outcomes = run_multi_gpu(make, images, cfg, out_dirs, gpus=gpus, batch=batch, noise=banks,
                                     overwrite=overwrite, resume=resume, on_view=on_view)
        else:
            from vfrt.runtime.run import run_many_to_folders
            with _status(f"loading {ckpt}{source} ...", quiet):
                pipe = load_pipeline(ckpt, config, engine, trust, use_ema, source)
            _say_engines(pipe, quiet)
            outcomes = run_many_to_folders(pipe, images, cfg, out_dirs, batch=batch, noise=banks, overwrite=overwrite,
                                           resume=resume, on_view=on_view)
    for image, outcome in zip(images, outcomes):
        if isinstance(outcome, Exception):
            failures.append((image, str(outcome)))
            click.echo(f"failed: {image}: {outcome}", err=True)
        else:
            click.echo(f"done: {outcome}")
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(targets)} images failed: "
                                   f"{', '.join(str(image) for image, _ in failures)}")


#: the photos a folder given as IMAGE stands for: its files with these suffixes (any case), sorted by name
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _expand_images(images) -> tuple[list[str], bool]:
    """IMAGES with each folder replaced by the photos directly in it (hidden files left out), and whether the
    outputs are one folder per photo under OUT (several photos, or any folder given)."""
    files, folder_given = [], False
    for item in images:
        if not Path(item).is_dir():
            files.append(item)
            continue
        folder_given = True
        found = sorted(p for p in Path(item).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise click.UsageError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in the folder {item}")
        files += [str(p) for p in found]
    return files, folder_given or len(files) > 1


def _targets(images, out, many: bool) -> list[tuple[str, Path]]:
    """(image, output folder) per image: OUT (or runs/<stem>) for one image, OUT/<stem> for ``many``."""
    if not many:
        return [(images[0], Path(out) if out else Path("runs") / Path(images[0]).stem)]
    stems = [Path(i).stem for i in images]
    if len(set(stems)) != len(stems):
        raise click.UsageError("several images share a file name; their output folders would collide")
    return [(i, Path(out or "runs") / Path(i).stem) for i in images]


def _check_inputs(targets, cfg, noise, backend: str, resolution: int, overwrite: bool, resume: bool):
    """Everything per image that can fail before the model loads: the photos (decoded, segmented), the
    output folder (exists? unfinished run with other settings? writable?). Returns the runnable
    (image, out_dir, prepared inputs) and the failures (image, reason); one image's failure is a usage
    error of its own."""
    from vfrt.runtime.preprocess import ImageInputError
    from vfrt.runtime.run import RunError, check_output_folder, prepare_inputs, run_fingerprint
    jobs, failures = [], []
    for image, out_dir in targets:
        try:
            prepared = prepare_inputs(image, cfg, resolution)
            check_output_folder(out_dir, run_fingerprint(Path(image), cfg, noise, backend, resolution),
                                overwrite=overwrite, resume=resume)
        except (ImageInputError, RunError, OSError) as exc:
            if len(targets) == 1:
                raise click.UsageError(str(exc)) from exc
            failures.append((image, str(exc)))
            click.echo(f"skipped: {image}: {exc}", err=True)
            continue
        jobs.append((image, out_dir, prepared))
    return jobs, failures


def _quiet(ctx: click.Context) -> bool:
    from vfrt.cli.main import verbosity
    return verbosity(ctx) < 0


def _status(message: str, quiet: bool):
    """A spinner while something slow happens (on a terminal); one plain line otherwise."""
    import contextlib

    from rich.console import Console
    console = Console(stderr=True)
    if quiet:
        return contextlib.nullcontext()
    if not console.is_terminal:
        click.echo(message, err=True)
        return contextlib.nullcontext()
    return console.status(message)


class _ViewProgress:
    """Progress over the generated views: a rich bar with ETA on a terminal; otherwise a plain line per
    view at most every ``every`` seconds (and the last), so redirected output shows the run is alive."""

    def __init__(self, label: str, quiet: bool, every: float = 10.0, total: int | None = None):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.label, self.quiet, self.every = label, quiet, every
        self.console = Console(stderr=True)
        self.t0 = time.perf_counter()
        self.last_line = -every
        self.view_done, self.view_total = 0, total         # views to generate, when known up front
        self.bar = None
        if not quiet and self.console.is_terminal:
            self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console)
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int) -> None:
        """After each view (done of total views)."""
        self.view_done, self.view_total = done, total
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, description=self.label)
            return
        self._line(done, total, force=done >= total)

    def step(self, done: int, total: int) -> None:
        """After each denoising step of the view being generated (done of total steps)."""
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.label} [step {done}/{total}]")
            return
        self._line(self.view_done, self.view_total, step=(done, total))

    def _line(self, done: int, total: int | None, force: bool = False, step: tuple[int, int] | None = None) -> None:
        now = time.perf_counter() - self.t0
        if self.quiet or (now - self.last_line < self.every and not force):
            return
        self.last_line = now
        eta = f"ETA {now / done * (total - done):.0f} s" if done and total else "ETA after the first view"
        where = f"view {done}/{total if total else '?'}" + (f", step {step[0]}/{step[1]} of the next" if step else "")
        click.echo(f"{self.label}: {where}, {now:.0f} s elapsed, {eta}", err=True)
        sys.stderr.flush()


def _run_one(pipe, image, cfg, out_dir: Path, noise, overwrite: bool, resume: bool, run_mode: str, prepared,
             quiet: bool) -> Path:
    """One image -> one finished output folder; every expected failure becomes a ClickException."""
    from vfrt.hardware import is_out_of_memory
    from vfrt.runtime.noise import NoiseBankError
    from vfrt.runtime.pipeline import GPUOutOfMemoryError, NonFiniteOutputError
    from vfrt.runtime.preprocess import ImageInputError
    from vfrt.runtime.run import RunError, run_to_folder
    keep = f"finished views are kept in {out_dir}.partial - run the same command again to resume"
    with _ViewProgress(f"{Path(image).name}: {run_mode} ({pipe.backend}, {pipe.device})", quiet,
                       total=cfg.generated_views) as progress:
        try:
            return run_to_folder(pipe, image, cfg, out_dir, noise=noise, overwrite=overwrite, resume=resume,
                                 on_view=progress.update, prepared=prepared, on_step=progress.step)
        except (RunError, ImageInputError, NoiseBankError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            raise click.ClickException(f"interrupted; {keep}") from None
        except NonFiniteOutputError as exc:
            raise click.ClickException(f"{exc}; {keep}") from exc
        except GPUOutOfMemoryError as exc:
            raise click.ClickException(
                f"the GPU ran out of memory at view {exc.view} (K = {exc.K} references): try "
                + ("--backend fast, " if exc.try_fast_backend else "--dtype float16, " if exc.try_float16 else "")
                + f"fewer --views, or --device cpu; {keep}") from exc
        except OSError as exc:
            raise click.ClickException(f"cannot write {out_dir}: {exc}") from exc
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise click.ClickException("the GPU ran out of memory: try --backend fast --dtype float16, fewer "
                                           f"--views, or --device cpu; {keep}") from exc
            raise
