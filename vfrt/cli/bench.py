"""`vfrt bench`: the reference vs fast benchmark (needs a CUDA GPU). benchmarks/bench_orbit.py runs this."""
from __future__ import annotations

import sys

import click


@click.command("bench")
@click.option("-c", "--checkpoint", help="Weights to benchmark (default: full-size random weights made on the spot).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False))
@click.option("--ks", default="1,2,4,8,12,16,20,25", show_default=True, help="Reference counts K to time.")
@click.option("--repeats", default=30, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True)
@click.option("--compile/--no-compile", "compile_unet", default=None,
              help="torch.compile the UNet inside the CUDA graphs [default: the engine's default, on with Triton].")
@click.option("--fused-geglu/--no-fused-geglu", default=None,
              help="One fused Triton GEMM per GEGLU projection [default: on with Triton].")
@click.option("--triton-conv/--no-triton-conv", default=None,
              help="Split-reduction Triton kernel for the 8x8 / 4x4 convolutions where faster [default: on only when not compiling].")
@click.option("--attention", type=click.Choice(["auto", "flash"]), default=None,
              help="Self-attention backend [default: auto, as for a long run].")
@click.option("--device", default="cuda", show_default=True, help="cuda or cuda:N.")
@click.option("--no-channels-last", is_flag=True, help="NCHW activations instead of channels-last.")
@click.option("--no-reference", is_flag=True, help="Skip the (slow) reference engine and the fidelity check.")
@click.option("--no-orbit", is_flag=True, help="Skip the two 36-view orbits.")
@click.option("--out", default="bench.json", show_default=True, type=click.Path(dir_okay=False))
def bench(checkpoint, config, ks, repeats, dtype, compile_unet, fused_geglu, triton_conv, attention, device,
          no_channels_last, no_reference, no_orbit, out):
    """Per-K step latency, 36-view orbit seconds, peak GPU memory and fidelity; prints a table, writes JSON."""
    import logging

    import torch

    from vfrt.runtime.benchmark import format_table, run_benchmark, save_json
    if not torch.cuda.is_available():
        raise click.ClickException("vfrt bench needs a CUDA GPU (none is visible to PyTorch)")
    try:
        k_list = tuple(int(k) for k in ks.split(","))
    except ValueError as exc:
        raise click.BadParameter("comma-separated integers", param_hint="--ks") from exc
    from vfrt.engines.config import EngineConfig
    try:
        engine = EngineConfig(backend="fast", device=device, dtype=dtype, compile=compile_unet, fused_geglu=fused_geglu,
                              triton_conv=triton_conv, attention=attention,
                              channels_last=False if no_channels_last else None)
        engine.resolve()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    logging.getLogger("vfrt").setLevel(logging.INFO)
    if checkpoint:
        from vfrt.models import CheckpointError, load_zero123
        try:
            model = load_zero123(checkpoint, config=config)
        except CheckpointError as exc:
            raise click.ClickException(str(exc)) from exc
    else:
        from vfrt.models import Zero123
        torch.manual_seed(0)
        model = Zero123.from_config(None).eval()
    res = run_benchmark(model, engine, ks=k_list, repeats=repeats, reference=not no_reference,
                        fidelity=not no_reference, orbit=not no_orbit)
    prog = "vfrt" if sys.argv[0].endswith("vfrt") else f"python {sys.argv[0]}"
    res["command"] = " ".join([prog] + sys.argv[1:])
    save_json(res, out)
    click.echo(format_table(res))
