"""``vfrt recon`` and ``vfrt eval-mesh``: parse and validate into a ReconConfig, call vfrt.recon."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

def _require_recon_extra() -> None:
    """Stop with an install hint (not a traceback) when the `recon` extra is missing."""
    import importlib.util
    missing = [m for m in ("trimesh", "skimage", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"this command needs {', '.join(missing)}: pip install 'vfrt[recon]'")


log = logging.getLogger(__name__)


@click.command("recon")
@click.argument("input_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: ./recon_<input folder name>).")
@click.option("--preset", type=click.Choice(["default", "quick"]), default="default", show_default=True,
              help="'quick' is CPU-friendly (64 px, small grid, 250 steps).")
@click.option("--elevation", "elevation_deg", type=float, default=None,
              help="Elevation above the horizon in degrees, for folders without transforms.json [default: 30].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (preset default).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Resize views to this size.")
@click.option("--backend", type=click.Choice(["auto", "reference", "triton", "tcnn"]), default=None,
              help="Hash-grid backend [default: auto = tcnn if importable, else triton on CUDA, else reference].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--mc-resolution", type=click.IntRange(min=16), default=None, help="Marching-cubes grid size.")
@click.option("--lr", type=float, default=None, help="Learning rate of the encoding and MLPs.")
@click.option("--seed", type=int, default=None)
@click.option("--grid-levels", type=click.IntRange(1, 32), default=None, help="Hash-grid levels (preset default).")
@click.option("--grid-log2-table", type=click.IntRange(8, 24), default=None, help="log2 of the hash table size per level.")
@click.option("--grid-finest", type=click.IntRange(min=2), default=None, help="Finest hash-grid resolution.")
@click.option("--no-mixed-precision", is_flag=True, help="Keep the colour network in fp32 on CUDA.")
@click.option("--no-turntable", is_flag=True, help="Skip the turntable render.")
@click.option("--reference", "reference_mesh", type=click.Path(path_type=Path), default=None,
              help="Reference mesh: also report Chamfer distance and F-score.")
def recon(input_dir: Path, out_dir: Path | None, preset: str, elevation_deg: float | None, steps: int | None,
          image_size: int | None, backend: str | None, device: str | None, mc_resolution: int | None,
          lr: float | None, seed: int | None, grid_levels: int | None, grid_log2_table: int | None,
          grid_finest: int | None, no_mixed_precision: bool, no_turntable: bool,
          reference_mesh: Path | None) -> None:
    """Reconstruct a coloured mesh with NeuS from the views in INPUT_DIR.

    INPUT_DIR is a `vfrt run` output folder, any folder with a transforms.json, or a folder
    of orbit images (view i at azimuth i*360/N, default cameras of SPEC section 8).
    """
    _require_recon_extra()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from vfrt.recon import ReconConfig, ReconError, reconstruct

    try:
        grid = None
        if grid_levels is not None or grid_log2_table is not None or grid_finest is not None:
            base = ReconConfig.from_preset(preset).hashgrid
            grid = dataclasses.replace(base, **{k: v for k, v in {
                "n_levels": grid_levels, "log2_hashmap_size": grid_log2_table, "finest_resolution": grid_finest,
            }.items() if v is not None})
        cfg = ReconConfig.from_preset(
            preset, elevation_deg=elevation_deg, steps=steps, image_size=image_size, backend=backend,
            device=device, mc_resolution=mc_resolution, lr=lr, seed=seed, hashgrid=grid,
            mixed_precision=False if no_mixed_precision else None)
    except ReconError as exc:
        raise click.ClickException(str(exc)) from None
    out_dir = out_dir or Path(f"recon_{input_dir.resolve().name}")
    if cfg.preset == "default" and cfg.device != "cuda":
        import torch

        if not torch.cuda.is_available():
            log.warning("no CUDA device: the default preset is slow on a CPU; consider --preset quick")
    with Progress(TextColumn("NeuS"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=cfg.steps, loss="-")
        try:
            result = reconstruct(input_dir, out_dir, cfg, reference_mesh=reference_mesh, turntable=not no_turntable,
                                 progress=lambda s, l: bar.update(task, completed=s, loss=f"{l:.4f}"))
        except ReconError as exc:
            raise click.ClickException(str(exc)) from None
    t = result.timings
    click.echo(f"mesh: {result.n_vertices} vertices, {result.n_faces} faces -> "
               + ", ".join(str(p) for p in result.mesh_paths.values()))
    click.echo(f"time: train {t['train']:.1f} s + extract {t['extract']:.1f} s "
               f"(backend {result.backend} on {result.device})")
    if result.metrics is not None:
        m = result.metrics
        click.echo(f"chamfer {m.chamfer:.5f}  F-score@{m.threshold:g} {m.fscore:.4f}  ({m.definition})")
    click.echo(f"done: {out_dir / 'recon.json'}")


@click.command("eval-mesh")
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Surface samples per mesh.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="F-score distance threshold (meshes normalised to longest side 1.6).")
@click.option("--seed", type=int, default=0, show_default=True)
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
