"""``vfrt recon`` and ``vfrt eval-mesh``: parse and validate into a ReconConfig, call vfrt.recon.

Every value error (bad path, option out of range, unknown device) stops with exit status 2
before any heavy work; failures during the work (training diverged, empty surface) exit 1.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

from vfrt.recon.config import ReconConfig  # light: dataclasses only

log = logging.getLogger(__name__)
_DEFAULT, _QUICK = ReconConfig.from_preset("default"), ReconConfig.from_preset("quick")


def _preset_default(name: str, of=lambda c, n: getattr(c, n)) -> str:
    """``[default: 1000; quick: 600]`` for a ReconConfig field (``of`` picks nested values)."""
    return f"[default: {of(_DEFAULT, name)}; quick: {of(_QUICK, name)}]"


def _grid(name: str) -> str:
    return _preset_default(name, lambda c, n: getattr(c.hashgrid, n))


def _require_recon_extra() -> None:
    """Stop with an install hint (not a traceback) when the `recon` extra is missing."""
    import importlib.util
    missing = [m for m in ("trimesh", "skimage", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"this command needs {', '.join(missing)}: pip install 'vfrt[recon]'")


def _device_option(ctx, param, value: str) -> str:
    from vfrt.recon.config import DEVICE_PATTERN

    if DEVICE_PATTERN.fullmatch(value) is None:
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda or cuda:N", ctx=ctx, param=param)
    return value


@click.command("recon")
@click.argument("input_dir", metavar="INPUT_DIR", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder, created if needed; an existing one must be empty or hold an earlier "
                   "reconstruction, which is replaced [default: INPUT_DIR/recon].")
@click.option("--preset", type=click.Choice(["default", "quick"]), default="default", show_default=True,
              help=f"'default' is for a GPU (native views, {_DEFAULT.hashgrid.n_levels}-level grid); 'quick' for "
                   f"a CPU ({_QUICK.image_size} px, {_QUICK.hashgrid.n_levels}-level grid).")
@click.option("--elevation", "elevation_deg", type=click.FloatRange(-90, 90, min_open=True, max_open=True),
              default=None, help="Camera elevation above the horizon in degrees, (-90, 90), for folders without "
                                 "cameras (transforms.json / cameras.json) [default: 30].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help=f"Training steps, >= 1 {_preset_default('steps')}.")
@click.option("--image-size", type=click.IntRange(min=8), default=None,
              help=f"Train on views resized to this square size, >= 8 px {_preset_default('image_size')} "
                   "(None: native size; colours always come from the native views).")
@click.option("--backend", type=click.Choice(["auto", "reference", "triton", "tcnn"]), default="auto",
              show_default=True, help="Hash-grid encoding: auto = tcnn if it imports, else triton on CUDA, else "
                                      "the PyTorch reference.")
@click.option("--device", default="auto", show_default=True, callback=_device_option,
              help="auto, cpu, cuda or cuda:N (auto: the first GPU when torch sees one).")
@click.option("--mc-resolution", type=click.IntRange(16, 2048), default=None,
              help=f"Marching-cubes samples along the object's longest side, 16-2048 {_preset_default('mc_resolution')}.")
@click.option("--texture-size", type=click.IntRange(0, 8192), default=0, show_default=True,
              help="Also bake a UV texture (xatlas) of this many texels a side into mesh.glb / mesh.obj, 64-8192, "
                   "e.g. 1024; 0 = vertex colours only.")
@click.option("--colours", "colour_source", type=click.Choice(["views", "field"]), default="views", show_default=True,
              help="Mesh colours from the input views by visibility, or from the trained radiance field.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Learning rate of the encoding and MLPs, > 0 {_preset_default('lr')}.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initialisation and ray batches.")
@click.option("--grid-levels", type=click.IntRange(1, 32), default=None,
              help=f"Hash-grid levels, 1-32 {_grid('n_levels')}.")
@click.option("--grid-log2-table", type=click.IntRange(8, 24), default=None,
              help=f"log2 of the hash-table rows per level, 8-24 {_grid('log2_hashmap_size')}.")
@click.option("--grid-finest", type=click.IntRange(min=2), default=None,
              help=f"Finest hash-grid resolution, >= the base resolution {_grid('finest_resolution')}.")
@click.option("--no-mixed-precision", is_flag=True, help="Keep the colour network in fp32 on CUDA.")
@click.option("--no-turntable", is_flag=True, help="Skip the turntable render.")
@click.option("--no-flat-base", is_flag=True,
              help="Keep whatever lies below the lowest surface point a view sees (by default it is cut off flat: "
                   "an orbit from above never sees under the object).")
@click.option("--reference", "reference_mesh", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Reference mesh: also report Chamfer distance and F-score.")
@click.option("--psnr", "evaluate_colours", is_flag=True,
              help="Also render the mesh from the input cameras and report its colour PSNR against the views.")
def recon(input_dir: Path, out_dir: Path | None, preset: str, elevation_deg: float | None, steps: int | None,
          image_size: int | None, backend: str, device: str, mc_resolution: int | None, texture_size: int,
          colour_source: str, lr: float | None, seed: int, grid_levels: int | None, grid_log2_table: int | None,
          grid_finest: int | None, no_mixed_precision: bool, no_turntable: bool, no_flat_base: bool, reference_mesh: Path | None,
          evaluate_colours: bool) -> None:
    """Reconstruct a coloured mesh with NeuS from the views in INPUT_DIR.

    INPUT_DIR is a `vfrt run` orbit folder, any folder with a transforms.json, or a folder of
    orbit images (view i at azimuth i*360/N, the default cameras of SPEC section 8). Writes
    mesh.ply / mesh.obj / mesh.glb, turntable.gif and recon.json.
    """
    _require_recon_extra()
    from vfrt.recon import InputDataError, OutputDirError, ReconError, check_out_dir, default_out_dir, reconstruct
    from vfrt.recon.data import count_views, input_layout, input_notes
    from vfrt.recon.trainer import resolve_device

    try:
        layout = input_layout(input_dir)
    except InputDataError as exc:
        raise click.BadParameter(str(exc), param_hint="INPUT_DIR") from None
    out_dir = out_dir if out_dir is not None else default_out_dir(input_dir)
    try:
        check_out_dir(out_dir)
    except OutputDirError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o' / '--out'") from None
    try:
        grid = None
        if grid_levels is not None or grid_log2_table is not None or grid_finest is not None:
            base = ReconConfig.from_preset(preset).hashgrid
            grid = dataclasses.replace(base, **{k: v for k, v in {
                "n_levels": grid_levels, "log2_hashmap_size": grid_log2_table, "finest_resolution": grid_finest,
            }.items() if v is not None})
        cfg = ReconConfig.from_preset(
            preset, elevation_deg=elevation_deg, steps=steps, image_size=image_size, backend=backend,
            device=device, mc_resolution=mc_resolution, texture_size=texture_size, colour_source=colour_source,
            lr=lr, seed=seed, hashgrid=grid, mixed_precision=False if no_mixed_precision else None,
            flat_base=False if no_flat_base else None)
        dev = resolve_device(cfg.device)
        from vfrt.recon.hashgrid import resolve_backend

        resolve_backend(cfg.backend, dev)
    except ReconError as exc:
        raise click.UsageError(str(exc)) from None
    if cfg.preset == "default" and dev.type != "cuda":
        click.echo("note: no CUDA device; the default preset is slow on a CPU (try --preset quick)", err=True)
    said = input_notes(input_dir, layout, count_views(input_dir, layout), cfg.elevation_deg)
    for note in said:
        click.echo(f"note: {note}", err=True)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("NeuS"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=cfg.steps, loss="-")
        try:
            result = reconstruct(input_dir, out_dir, cfg, reference_mesh=reference_mesh, turntable=not no_turntable,
                                 evaluate_colours=evaluate_colours,
                                 progress=lambda s, l: bar.update(task, completed=s, loss=f"{l:.4f}"))
        except ReconError as exc:
            raise click.ClickException(str(exc)) from None
    for note in result.notes:
        if note not in said:
            click.echo(f"note: {note}", err=True)
    t = result.timings
    click.echo(f"mesh: {result.n_vertices} vertices, {result.n_faces} faces -> "
               + ", ".join(str(p) for p in result.mesh_paths.values()))
    click.echo(f"time: train {t['train']:.1f} s + extract {t['extract']:.1f} s + colours {t['colour']:.1f} s "
               f"(backend {result.backend} on {result.device})")
    if result.metrics is not None:
        m = result.metrics
        click.echo(f"chamfer {m.chamfer:.5f}  F-score@{m.threshold:g} {m.fscore:.4f}  ({m.definition})")
    if result.colour is not None:
        c = result.colour
        click.echo(f"colour PSNR {c.psnr:.2f} dB inside the silhouettes ({100 * c.silhouette_error_share:.0f} % of "
                   f"that error where only one of mesh and view covers a pixel), {c.psnr_shared:.2f} dB where both "
                   f"do, {c.psnr_full:.2f} dB whole images ({c.n_views} views)")
    click.echo(f"done: {Path(out_dir) / 'recon.json'}")


@click.command("eval-mesh")
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Surface samples per mesh, >= 1.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="F-score distance threshold, > 0 (meshes normalised to longest side 1.6).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the surface sampling.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the metrics here.")
def eval_mesh(pred: Path, reference: Path, samples: int, threshold: float, seed: int, json_out: Path | None) -> None:
    """Chamfer distance and F-score of PRED against REFERENCE (both normalised: bbox centred,
    longest side 1.6; Chamfer = mean of the two mean nearest-neighbour Euclidean distances)."""
    _require_recon_extra()
    from vfrt.recon import ReconError
    from vfrt.recon.metrics import evaluate_mesh_files

    try:
        m = evaluate_mesh_files(pred, reference, samples, threshold, seed)
    except ReconError as exc:
        raise click.ClickException(str(exc)) from None
    d = m.to_dict()
    if json_out is not None:
        json_out.write_text(json.dumps(d, indent=2))
    click.echo(f"chamfer      {m.chamfer:.6f}")
    click.echo(f"accuracy     {m.accuracy:.6f}  (pred -> ref)")
    click.echo(f"completeness {m.completeness:.6f}  (ref -> pred)")
    click.echo(f"F-score@{m.threshold:g} {m.fscore:.4f}  (precision {m.precision:.4f}, recall {m.recall:.4f})")
    click.echo(f"definition: {m.definition}")
