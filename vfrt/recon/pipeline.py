"""``reconstruct``: views folder -> trained NeuS -> coloured mesh files (+ turntable, metrics)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from vfrt.recon.config import ReconConfig
from vfrt.recon.data import load_views
from vfrt.recon.metrics import MeshMetrics
from vfrt.recon.trainer import ProgressFn, train_neus

log = logging.getLogger(__name__)


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


def reconstruct(input_dir: str | Path, out_dir: str | Path, cfg: ReconConfig, *,
                reference_mesh: str | Path | None = None, turntable: bool = True,
                progress: ProgressFn | None = None) -> ReconResult:
    """Train NeuS on the views in ``input_dir`` and write ``mesh.{ply,obj,glb}``,
    ``turntable.gif`` (or ``.png``) and ``recon.json`` to ``out_dir``.

    ``reference_mesh``: if given, also compute Chamfer/F-score against it (metrics.py).
    Raises :class:`~vfrt.recon.errors.ReconError` subclasses on bad input or divergence.
    """
    from vfrt.recon.mesh import export_mesh, extract_mesh, write_turntable
    from vfrt.recon.metrics import evaluate_mesh, load_mesh

    out = Path(out_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = load_views(input_dir, elevation_deg=cfg.elevation_deg, image_size=cfg.image_size, min_views=cfg.min_views)
    ref = load_mesh(reference_mesh) if reference_mesh is not None else None
    timings["load"] = time.perf_counter() - t

    trained = train_neus(data, cfg, progress)
    timings["train"] = trained.seconds
    t = time.perf_counter()
    mesh = extract_mesh(trained.fields, trained.device, cfg.mc_resolution, cfg.mc_bound, cfg.keep_largest_component)
    if trained.device.type == "cuda":
        import torch

        torch.cuda.synchronize(trained.device)
    timings["extract"] = time.perf_counter() - t
    timings["train_plus_extract"] = timings["train"] + timings["extract"]

    t = time.perf_counter()
    paths = export_mesh(mesh, out)
    timings["export"] = time.perf_counter() - t
    tt_path = None
    if turntable and cfg.turntable_frames > 0:
        t = time.perf_counter()
        tt_path = write_turntable(mesh, out / "turntable", cfg.turntable_frames, cfg.turntable_size,
                                  cfg.elevation_deg, trained.device)
        timings["turntable"] = time.perf_counter() - t
    metrics = evaluate_mesh(mesh, ref) if ref is not None else None

    result = ReconResult(out, paths, tt_path, len(mesh.vertices), len(mesh.faces), trained.backend,
                         str(trained.device), trained.final_loss, timings, metrics)
    summary = {
        "input": str(input_dir), "views": data.n_views, "cameras": data.source,
        "image_size": [data.intrinsics.width, data.intrinsics.height],
        "backend": trained.backend, "device": str(trained.device), "final_loss": trained.final_loss,
        "vertices": result.n_vertices, "faces": result.n_faces,
        "meshes": {k: str(v) for k, v in paths.items()}, "turntable": str(tt_path) if tt_path else None,
        "timings_s": timings, "metrics": metrics.to_dict() if metrics else None,
        "loss_history": trained.loss_history, "config": cfg.to_dict(),
    }
    (out / "recon.json").write_text(json.dumps(summary, indent=2, default=str))
    return result
