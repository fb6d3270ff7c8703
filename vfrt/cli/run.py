"""`vfrt run IMAGE`: novel views from one photo (orbit, single target pose, or several inputs)."""
from __future__ import annotations

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
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-c", "--checkpoint", help="Zero123 .ckpt, .safetensors or diffusers folder (default: $VFRT_CHECKPOINT, "
              "./checkpoints/zero123-xl.ckpt, ~/.cache/vfrt/zero123-xl.ckpt).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="The checkpoint's ldm YAML (default: Zero123 full size).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of a checkpoint you trust.")
@click.option("--no-ema", is_flag=True, help="Use the raw UNet weights instead of the EMA weights.")
@click.option("--mode", type=click.Choice(["orbit", "single"]), default="orbit", show_default=True)
@click.option("--views", default=36, show_default=True, help="Views in the orbit, input included.")
@click.option("--generate", type=int, default=None, help="Stop the orbit after this many generated views.")
@click.option("--polar", default=0.0, show_default=True, help="Single mode: polar delta, degrees (negative = up).")
@click.option("--azimuth", default=0.0, show_default=True, help="Single mode: azimuth delta, degrees.")
@click.option("--radius", default=0.0, show_default=True, help="Single mode: radius delta.")
@click.option("--extra-input", multiple=True, metavar="PATH@POLAR,AZIMUTH[,RADIUS]",
              help="More input views with their pose relative to IMAGE (degrees); switches to multi-input orbit.")
@click.option("--steps", default=75, show_default=True, help="DDIM steps (75 runs 76 UNet steps, as the original).")
@click.option("--guidance", default=3.0, show_default=True)
@click.option("--eta", default=1.0, show_default=True)
@click.option("--inference-temp", default=0.5, show_default=True)
@click.option("--auto-temp", default=None, type=float, help="[default: 0.5; 1.0 with --extra-input]")
@click.option("--seed", default=0, show_default=True)
@click.option("--noise", "noise_path", type=click.Path(exists=True, dir_okay=False), help="Replay a noise bank (.npz).")
@click.option("--noise-mode", type=click.Choice(["exact", "shared", "fast"]), default="exact", show_default=True,
              help="exact: one replayable draw per reference and step (the original); shared: one draw shared by "
                   "the references (ViewFusion's real-image script); fast: the same distribution drawn on the "
                   "device, not replayable.")
@click.option("--no-preprocess", is_flag=True, help="Use the pixels as given (RGBA on white) - no crop/recentre.")
@click.option("--segment", type=click.Choice(SEGMENT_METHODS), default="auto", show_default=True,
              help="How to find the object in a photo without alpha: rembg (needs rembg and its model on disk), "
                   "OpenCV GrabCut, or none (non-white pixels); auto = rembg when usable, else GrabCut. "
                   "Photos with alpha use it.")
@click.option("--elevation", default=30.0, show_default=True, help="Input camera elevation above the horizon, for cameras.json.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
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
def run(images, checkpoint, config, trust_checkpoint, no_ema, mode, views, generate, polar, azimuth, radius,
        extra_input, steps, guidance, eta, inference_temp, auto_temp, seed, noise_path, noise_mode, no_preprocess,
        segment, elevation, device, backend, dtype, compile_unet, engines_dir, no_engines, out, overwrite, no_resume):
    """Generate novel views of the object in each of IMAGES (RGBA photos with the background removed work best).

    Several images share one loaded model (and its captured CUDA graphs); a failing image is
    reported and the others still run.
    """
    from vfrt.cli.common import load_pipeline, resolve_checkpoint
    from vfrt.engines.config import EngineConfig
    from vfrt.hardware import DeviceError
    from vfrt.runtime.noise import NoiseBank, NoiseBankError
    from vfrt.runtime.run import RunConfig
    from vfrt.runtime.sampler import SamplerConfig

    extras = _parse_extra(extra_input)
    if extras and mode == "single":
        raise click.UsageError("--extra-input works with the orbit mode only")
    run_mode = "multi" if extras else mode
    try:
        sampler = SamplerConfig.for_mode(run_mode, steps=steps, eta=eta, guidance=guidance,
                                         inference_temp=inference_temp, seed=seed, noise_mode=noise_mode,
                                         **({} if auto_temp is None else {"auto_temp": auto_temp}))
        cfg = RunConfig(mode=run_mode, views=views, generate=generate, delta_polar=polar, delta_azimuth=azimuth,
                        delta_radius=radius, preprocess=not no_preprocess, elevation=elevation, extra_inputs=extras,
                        sampler=sampler, segment=segment)
        if engines_dir and no_engines:
            raise click.UsageError("--engines and --no-engines exclude each other")
        engine = EngineConfig(backend=backend, device=device, dtype=dtype, compile=compile_unet,
                              expected_views=len(images) * cfg.generated_views,
                              engines=Path(engines_dir) if engines_dir else "off" if no_engines else "auto")
        engine.resolve()     # a bad device or precision stops here, before any weights load
    except (ValueError, DeviceError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        noise = NoiseBank.load(noise_path) if noise_path else None
    except NoiseBankError as exc:
        raise click.ClickException(str(exc)) from exc
    ckpt = resolve_checkpoint(checkpoint) if checkpoint or not engines_dir else None   # engines carry the weights
    pipe = load_pipeline(ckpt, config, engine, trust_checkpoint, not no_ema)
    built = pipe.engine.describe().get("engines")
    if built:
        click.echo(f"engines: {built['dir']} ({built['backend']}, {built['precision']}, built {built['built_at']})")
    if noise is not None and len(images) > 1:
        raise click.UsageError("--noise replays one run; give a single image with it")
    if len(images) == 1:
        targets = [(images[0], Path(out) if out else Path("runs") / Path(images[0]).stem)]
    else:
        stems = [Path(i).stem for i in images]
        if len(set(stems)) != len(stems):
            raise click.UsageError("several images share a file name; their output folders would collide")
        targets = [(i, Path(out or "runs") / Path(i).stem) for i in images]
    failures = []
    for image, out_dir in targets:
        try:
            folder = _run_one(pipe, image, cfg, out_dir, noise, overwrite, not no_resume, run_mode)
            click.echo(f"done: {folder}")
        except click.ClickException as exc:
            if len(targets) == 1:
                raise
            failures.append(image)
            click.echo(f"failed: {image}: {exc.format_message()}", err=True)
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(targets)} images failed: {', '.join(failures)}")


def _run_one(pipe, image, cfg, out_dir: Path, noise, overwrite: bool, resume: bool, run_mode: str) -> Path:
    """One image -> one finished output folder; every expected failure becomes a ClickException."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vfrt.runtime.noise import NoiseBankError
    from vfrt.runtime.pipeline import GPUOutOfMemoryError, NonFiniteOutputError
    from vfrt.runtime.preprocess import ImageInputError
    from vfrt.runtime.run import RunError, run_to_folder
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(f"{Path(image).name}: {run_mode} ({pipe.backend}, {pipe.device})", total=None)
        try:
            return run_to_folder(pipe, image, cfg, out_dir, noise=noise, overwrite=overwrite, resume=resume,
                                 on_view=lambda done, total: bar.update(task, completed=done, total=total))
        except (RunError, ImageInputError, NoiseBankError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            raise click.ClickException(f"interrupted; finished views are kept in {out_dir}.partial - run the same "
                                       "command again to resume") from None
        except NonFiniteOutputError as exc:
            raise click.ClickException(f"{exc}; finished views are kept in {out_dir}.partial") from exc
        except GPUOutOfMemoryError as exc:
            raise click.ClickException(
                f"the GPU ran out of memory at view {exc.view} (K = {exc.K} references): try "
                + ("--backend fast, " if exc.try_fast_backend else "--dtype float16, " if exc.try_float16 else "")
                + f"fewer --views, or --device cpu; finished views are kept in {out_dir}.partial - run the "
                "same command again to resume") from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise click.ClickException("the GPU ran out of memory: try --backend fast --dtype float16, fewer "
                                           "--views, or --device cpu") from exc
            raise
