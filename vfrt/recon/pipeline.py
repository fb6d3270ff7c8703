"""``reconstruct``: views folder -> trained NeuS -> coloured mesh files (+ turntable, metrics).

The output folder is checked (created and written to) before any work, and built under a
temporary sibling that replaces it only when complete, so a failed run never leaves a
half-written folder under the final name.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vfrt.atomic import atomic_folder
from vfrt.recon.config import ReconConfig
from vfrt.recon.data import load_views
from vfrt.recon.errors import OutputDirError
from vfrt.recon.metrics import ColourMetrics, MeshMetrics
from vfrt.recon.trainer import ProgressFn, train_neus

log = logging.getLogger(__name__)

RESULT_FILE = "recon.json"


@dataclass(frozen=True)
class ReconResult:
    """What :func:`reconstruct` wrote and measured. ``timings`` are seconds."""

    out_dir: Path
    mesh_paths: dict[str, Path]
    turntable: Path | None
    n_vertices: int
    n_faces: int
    backend: str
    device: str
    final_loss: float
    timings: dict[str, float] = field(default_factory=dict)
    metrics: MeshMetrics | None = None
    colour: ColourMetrics | None = None
    notes: tuple[str, ...] = ()
    flat_base: dict | None = None  # the floor found under the object, its unseen volume, whether it was cut


def default_out_dir(input_dir: str | Path) -> Path:
    """Where ``vfrt recon INPUT`` writes without ``-o``: ``INPUT/recon`` (next to the views it used)."""
    return Path(input_dir) / "recon"


def check_out_dir(out_dir: str | Path) -> Path:
    """Make sure ``out_dir`` can be written (create its parent, write and remove a probe file).

    An existing ``out_dir`` must be a folder that is empty or holds an earlier reconstruction
    (a ``recon.json``): that one is replaced when the new one is complete.

    Raises:
        OutputDirError: a file is in the way, the folder holds other things, or it cannot be written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output {out} is a file; give a folder (-o/--out)")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULT_FILE).exists():
        raise OutputDirError(f"output folder {out} is not empty and holds no earlier reconstruction "
                             f"({RESULT_FILE}); choose another -o/--out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.probe"):
            pass
    except OSError as exc:
        raise OutputDirError(f"cannot write the output folder {out}: {exc.strerror or exc}") from exc
    return out


def reconstruct(input_dir: str | Path, out_dir: str | Path, cfg: ReconConfig, *,
                reference_mesh: str | Path | None = None, turntable: bool = True, evaluate_colours: bool = False,
                progress: ProgressFn | None = None) -> ReconResult:
    """Train NeuS on the views in ``input_dir`` and write ``mesh.{ply,obj,glb}``,
    ``turntable.gif`` (or ``.png``) and ``recon.json`` to ``out_dir``.

    ``reference_mesh``: if given, also compute Chamfer/F-score against it (metrics.py).
    ``evaluate_colours``: also render the mesh from the input cameras and report colour PSNR.
    Raises :class:`~vfrt.recon.errors.ReconError` subclasses on bad input or divergence.
    """
    from vfrt.recon.bake import bake_texture, bake_vertex_colours
    from vfrt.recon.ground import find_floor, one_sided_note, worth_cutting
    from vfrt.recon.mesh import export_mesh, mesh_from_grid, surface_grid, write_turntable
    from vfrt.recon.metrics import colour_psnr, evaluate_mesh, load_mesh

    out = check_out_dir(out_dir)
    timings: dict[str, float] = {}
    t_start = t = time.perf_counter()
    data = load_views(input_dir, elevation_deg=cfg.elevation_deg, image_size=cfg.image_size, min_views=cfg.min_views)
    # colours come from the views at their own resolution, whatever size training used
    full = load_views(input_dir, elevation_deg=cfg.elevation_deg, min_views=cfg.min_views) \
        if cfg.image_size is not None else data
    ref = load_mesh(reference_mesh) if reference_mesh is not None else None
    one_sided = one_sided_note(full.c2w)
    notes = data.notes + ((one_sided,) if one_sided else ())
    timings["load"] = time.perf_counter() - t

    trained = train_neus(data, cfg, progress)
    timings["train"] = trained.seconds
    dev = trained.device
    t = time.perf_counter()
    grid = surface_grid(trained.fields, dev, cfg.mc_resolution, cfg.mc_bound, trained.hull)
    mesh = mesh_from_grid(grid, cfg.min_component_fraction)
    floor = find_floor(mesh, full, dev, margin=grid.step) if cfg.flat_base else None
    base = None
    if floor is not None:
        inside, below = grid.inside_volume(), grid.inside_volume(below=floor)
        cut = worth_cutting(inside, inside - below)
        base = {**floor.to_dict(), "volume_below": below, "cut": cut}
        log.info("floor at height %.4f along %s; %.4g of the volume lies below it, unseen: %s", floor.height,
                 floor.up, below, "cut off flat" if cut else "kept (a sliver, not a hidden cone)")
        if cut:
            mesh = mesh_from_grid(grid, cfg.min_component_fraction, floor)
    timings["extract"] = _synced(t, dev)
    t = time.perf_counter()
    import numpy as np

    cols = bake_vertex_colours(mesh, full, trained.fields, dev, cfg.colour_source)
    mesh.visual.vertex_colors = np.concatenate([np.clip(cols * 255 + 0.5, 0, 255),
                                                np.full((len(cols), 1), 255)], 1).astype(np.uint8)
    textured = bake_texture(mesh, full, trained.fields, dev, cfg.texture_size, cfg.colour_source) \
        if cfg.texture_size else None
    timings["colour"] = _synced(t, dev)
    timings["train_plus_extract"] = timings["train"] + timings["extract"] + timings["colour"]

    with atomic_folder(out) as tmp:
        t = time.perf_counter()
        paths = {k: out / v.name for k, v in export_mesh(mesh, tmp, textured=textured).items()}
        timings["export"] = time.perf_counter() - t
        tt_path = None
        if turntable and cfg.turntable_frames > 0:
            t = time.perf_counter()
            tt_path = write_turntable(textured or mesh, tmp / "turntable", cfg.turntable_frames, cfg.turntable_size,
                                      cfg.elevation_deg, dev)
            tt_path = out / tt_path.name
            timings["turntable"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        metrics = evaluate_mesh(mesh, ref) if ref is not None else None
        colour = colour_psnr(textured or mesh, full, dev) if evaluate_colours else None
        result = ReconResult(out, paths, tt_path, len(mesh.vertices), len(mesh.faces), trained.backend, str(dev),
                             trained.final_loss, timings, metrics, colour, notes, base)
        summary = {
            "input": str(input_dir), "views": data.n_views, "cameras": data.source, "notes": list(notes),
            "image_size": [data.intrinsics.width, data.intrinsics.height],
            "backend": trained.backend, "device": str(dev), "final_loss": trained.final_loss,
            "final_inv_s": trained.final_inv_s,
            "flat_base": result.flat_base, "vertices": result.n_vertices, "faces": result.n_faces, "volume": float(mesh.volume),
            "meshes": {k: str(v) for k, v in paths.items()}, "turntable": str(tt_path) if tt_path else None,
            "timings_s": timings, "metrics": metrics.to_dict() if metrics else None,
            "colour": colour.to_dict() if colour else None,
            "loss_history": trained.loss_history, "config": cfg.to_dict(),
        }
        (tmp / RESULT_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return result


def _synced(t0: float, device) -> float:
    """Seconds since ``t0`` after the device's queued work is done."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
