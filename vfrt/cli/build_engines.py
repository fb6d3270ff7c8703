"""`vfrt build-engines`: build the networks once into an engine directory; later runs start fast."""
from __future__ import annotations

import click

from vfrt.export.build import EXPORTERS, MAX_JOBS

#: --precision spelling -> the engine precision
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@click.command("build-engines")
@click.option("-c", "--checkpoint", help="Zero123 .ckpt, .safetensors or diffusers folder (default: as `vfrt run`).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="The checkpoint's ldm YAML (default: Zero123 full size).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of a checkpoint you trust.")
@click.option("--no-ema", is_flag=True, help="Build from the raw UNet weights instead of the EMA weights.")
@click.option("--backend", type=click.Choice(sorted(EXPORTERS)), default="aoti", show_default=True,
              help="aoti: AOTInductor packages (torch.export + Inductor, loaded without Python tracing); "
                   "onnxruntime: ONNX graphs run by ONNX Runtime (CPU, or CUDA with onnxruntime-gpu); "
                   "tensorrt: TensorRT plans (TensorRT-RTX builds them for RTX GPUs without a GPU here). "
                   "docs/ENGINES.md says which to use where.")
@click.option("--precision", type=click.Choice(sorted(PRECISIONS)), default=None,
              help="Compute precision [default: fp16 on CUDA, fp32 on the CPU].")
@click.option("--max-refs", type=click.IntRange(1, 1023), default=25, show_default=True,
              help="References per target view the UNet is built for (a 36-view orbit needs 25).")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu or cuda[:N]: where the engines will run (tensorrt: a CUDA GPU, built for one "
                   "without it where TensorRT-RTX is installed).")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Engine directory to write [default: vfrt's cache, where `vfrt run -c CKPT` finds it].")
@click.option("--force", is_flag=True, help="Rebuild even if matching engines exist.")
@click.option("--no-verify", is_flag=True, help="Skip comparing the built networks with PyTorch before publishing.")
@click.option("-j", "--jobs", type=click.IntRange(1, MAX_JOBS), default=None,
              help="aoti: networks compiled at once, each in a child process (the build then takes about as long "
                   "as the UNet's compile); 1 compiles them one after another in this process "
                   "[default: one per 4 CPU cores, at most one per network].")
def build_engines(checkpoint, config, trust_checkpoint, no_ema, backend, precision, max_refs, device, out, force,
                  no_verify, jobs):
    """Export every network once (UNet step, VAE, CLIP, conditioning, time embedding) into an engine directory.

    `vfrt run -c CKPT` then finds and loads them in about a second instead of parsing the checkpoint and
    compiling; a stale or mismatched engine directory is reported, never loaded.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vfrt.cli.common import resolve_checkpoint
    from vfrt.engines.engine_dir import EngineError
    from vfrt.export.build import BuildConfig, BuildError, build_engines as build
    from vfrt.models import CheckpointError

    try:
        cfg = BuildConfig(backend=backend, device=device, precision=PRECISIONS[precision] if precision else None,
                          max_refs=max_refs, use_ema=not no_ema, verify=not no_verify, force=force, jobs=jobs)
        cfg.resolve()           # a missing GPU or fp16 on the CPU stops here, before the weights load
    except BuildError as exc:
        raise click.UsageError(str(exc)) from exc
    ckpt, _ = resolve_checkpoint(checkpoint)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("build-engines", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)
        try:
            result = build(ckpt, cfg, config=config, out=out, trust_checkpoint=trust_checkpoint, progress=progress)
        except (BuildError, EngineError, CheckpointError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        bar.update(task, description="done", completed=bar.tasks[0].total or 1)
    m = result.manifest
    if result.reused:
        click.echo(f"up to date: {result.directory} (built {m.built_at}; --force rebuilds)")
    else:
        worst = max((n.max_error for n in m.networks if n.max_error is not None), default=None)
        check = f", verified: max relative error {worst:.1e}" if worst is not None else ", not verified"
        if worst is None and not result.runs_here and not no_verify:
            check += " (they cannot run on this machine)"
        click.echo(f"built {result.directory} in {result.seconds:.0f} s ({m.backend}, {m.precision}, {m.platform.device}"
                   f"{check})")
    if result.runs_here:
        click.echo(f"use: vfrt run IMAGE -c {ckpt}" + ("" if out is None else f" --engines {result.directory}"))
    else:
        targets = (m.toolchain or {}).get("compute_capabilities")
        gpu = f"a CUDA GPU of compute capability {', '.join(targets)}" if targets else "the CUDA GPU they were built for"
        click.echo(f"they run on {gpu} ({m.backend_version}): copy {result.directory} there and run "
                   "vfrt run IMAGE --engines DIR")
