"""`vfrt serve`: the web page and HTTP API (vfrt/serve), on one loaded model per GPU."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from vfrt.serve.config import MiB


def _require_serve_extra(ui: bool) -> None:
    """Stop with an install hint (not a traceback) when the `serve` extra is missing."""
    needed = ["fastapi", "uvicorn", "multipart", "pydantic"] + (["gradio"] if ui else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"`vfrt serve` needs {', '.join(missing)}: pip install 'vfrt[serve]'")


def load_pipelines(checkpoint, config, engines_dir, engine_configs, trust_checkpoint: bool, use_ema: bool) -> list:
    """One Pipeline per device: from the checkpoint, or from built engines where the runtime can load them."""
    import dataclasses

    from vfrt.cli.common import load_pipeline, resolve_checkpoint
    if engines_dir is not None:      # the engines carry the weights: load them through the same path as `vfrt run`
        return [load_pipeline(None, None, dataclasses.replace(engine, engines=Path(engines_dir)), trust_checkpoint,
                              use_ema) for engine in engine_configs]
    ckpt, source = resolve_checkpoint(checkpoint)
    return [load_pipeline(ckpt, config, engine, trust_checkpoint, use_ema, source) for engine in engine_configs]


@click.command("serve")
@click.option("-c", "--checkpoint", help="Zero123 .ckpt, .safetensors or diffusers folder (default: as `vfrt run`).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="The checkpoint's ldm YAML.")
@click.option("--engines", "engines_dir", type=click.Path(exists=True, file_okay=False),
              help="Load built engines from this folder instead of a checkpoint.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines use the server (no login).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("serve_runs"),
              show_default=True, help="One folder per job; jobs found here at start are listed (and resumed).")
@click.option("--device", "devices", multiple=True, default=("auto",), show_default=True,
              help="auto, cpu or cuda[:N]; repeat for one worker (one loaded model) per GPU.")
@click.option("--backend", type=click.Choice(["auto", "reference", "fast"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Fast backend compute dtype [default: float16 on CUDA, float32 on the CPU].")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of a checkpoint you trust.")
@click.option("--no-ema", is_flag=True, help="Use the raw UNet weights instead of the EMA weights.")
@click.option("--max-upload-mb", type=click.FloatRange(0.001), default=20.0, show_default=True,
              help="Largest photo file accepted.")
@click.option("--max-megapixels", type=click.FloatRange(0.005), default=40.0, show_default=True,
              help="Largest photo accepted, in millions of pixels.")
@click.option("--queue-size", type=click.IntRange(1), default=16, show_default=True,
              help="Jobs that may wait; more are answered 503 with Retry-After.")
@click.option("--recon-preset", type=click.Choice(["default", "quick"]), default="default", show_default=True,
              help="NeuS settings of the reconstruct button ('quick' suits a CPU).")
@click.option("--recon-steps", type=click.IntRange(1), default=None, help="NeuS training steps (preset default).")
@click.option("--no-ui", is_flag=True, help="Serve the HTTP API only (no page, no Gradio needed).")
def serve(checkpoint, config, engines_dir, host, port, runs_dir, devices, backend, dtype, trust_checkpoint, no_ema,
          max_upload_mb, max_megapixels, queue_size, recon_preset, recon_steps, no_ui):
    """Serve a web page and an HTTP API (OpenAPI at /docs) that turn photos into views and meshes.

    The model is loaded once per device; every job (page or API) waits in one bounded queue and
    is written as a `vfrt run` folder under --runs-dir.
    """
    _require_serve_extra(not no_ui)
    from vfrt.engines.config import EngineConfig
    from vfrt.hardware import DeviceError
    from vfrt.recon import ReconConfig, ReconError
    from vfrt.serve.config import ServeConfig

    try:
        cfg = ServeConfig(runs_dir=runs_dir, host=host, port=port, max_upload_bytes=int(max_upload_mb * MiB),
                          max_pixels=int(max_megapixels * 1e6), queue_size=queue_size,
                          recon=ReconConfig.from_preset(recon_preset, steps=recon_steps), ui=not no_ui)
        engines = [EngineConfig(backend=backend, device=device, dtype=dtype) for device in devices]
        for engine in engines:
            engine.resolve()         # a bad device stops here, before any weights load
    except (ValueError, DeviceError, ReconError) as exc:
        raise click.UsageError(str(exc)) from exc
    if cfg.public:
        click.secho(f"warning: listening on {host}: anyone who can reach this machine can submit jobs, use its "
                    "GPU and download every job's results - there is no login. Use 127.0.0.1 (the default) "
                    "unless this network is trusted.", fg="yellow", err=True)
    pipelines = load_pipelines(checkpoint, config, engines_dir, engines, trust_checkpoint, not no_ema)

    import uvicorn

    from vfrt.serve.app import create_app
    from vfrt.serve.service import JobService
    try:
        cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot use --runs-dir {cfg.runs_dir}: {exc}") from exc
    service = JobService(cfg, pipelines)
    app = create_app(service)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    click.echo(f"vfrt serve: page http://{shown}:{port}/ , API docs http://{shown}:{port}/docs "
               f"({len(pipelines)} worker(s): {', '.join(w.describe()['device'] for w in service.workers)}; "
               f"jobs in {cfg.runs_dir})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
