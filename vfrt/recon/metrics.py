"""Mesh-to-mesh metrics: Chamfer distance and F-score.

Definition (also printed by ``vfrt eval-mesh`` and stored in its JSON):

1. Normalise each mesh independently: translate its axis-aligned bounding box centre to the
   origin and scale uniformly so the longest bounding-box side is 1.6.
2. Sample ``n_samples`` (default 100 000) points uniformly on each surface (area-weighted).
3. ``acc = mean_{p in P} min_{q in Q} |p - q|_2`` (prediction -> reference) and
   ``comp = mean_{q in Q} min_{p in P} |q - p|_2`` (reference -> prediction),
   Euclidean, **not squared** (an "L1 Chamfer" of L2 distances).
4. ``chamfer = (acc + comp) / 2``.
5. With threshold ``tau`` (default 0.02, i.e. 1.25 % of the longest side):
   ``precision = frac(P within tau of Q)``, ``recall = frac(Q within tau of P)``,
   ``F = 2 precision recall / (precision + recall)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vfrt.recon.errors import InputDataError

LONGEST_SIDE = 1.6
DEFAULT_SAMPLES = 100_000
DEFAULT_THRESHOLD = 0.02
DEFINITION = ("both meshes normalised (bbox centred, longest side 1.6); {n} area-uniform surface samples each; "
              "chamfer = (mean NN dist pred->ref + mean NN dist ref->pred) / 2, Euclidean, not squared; "
              "F-score at tau = {tau}")


@dataclass(frozen=True)
class MeshMetrics:
    chamfer: float
    accuracy: float  # pred -> ref mean distance
    completeness: float  # ref -> pred mean distance
    fscore: float
    precision: float
    recall: float
    threshold: float
    n_samples: int
    definition: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_mesh(path: str | Path):
    """A single ``trimesh.Trimesh`` from any file trimesh reads (scenes are concatenated)."""
    import trimesh

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"mesh file {path} does not exist")
    try:
        m = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise InputDataError(f"cannot read mesh {path}: {exc}") from exc
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise InputDataError(f"{path} holds no triangles")
    return m


def normalise_mesh(mesh, longest_side: float = LONGEST_SIDE):
    """Copy of ``mesh`` with its bbox centred at the origin and longest bbox side ``longest_side``."""
    m = mesh.copy()
    lo, hi = m.bounds
    ext = float((hi - lo).max())
    if ext <= 0:
        raise InputDataError("mesh has a degenerate bounding box")
    m.apply_translation(-(lo + hi) / 2.0)
    m.apply_scale(longest_side / ext)
    return m


def evaluate_mesh(pred, ref, n_samples: int = DEFAULT_SAMPLES, threshold: float = DEFAULT_THRESHOLD,
                  seed: int = 0) -> MeshMetrics:
    """Chamfer distance and F-score of ``pred`` against ``ref`` (trimesh meshes); see module docstring."""
    import trimesh
    from scipy.spatial import cKDTree

    if n_samples < 1 or threshold <= 0:
        raise ValueError("n_samples must be >= 1 and threshold > 0")
    p_mesh, r_mesh = normalise_mesh(pred), normalise_mesh(ref)
    p, _ = trimesh.sample.sample_surface(p_mesh, n_samples, seed=seed)
    r, _ = trimesh.sample.sample_surface(r_mesh, n_samples, seed=seed + 1)
    d_pr, _ = cKDTree(r).query(p, workers=-1)
    d_rp, _ = cKDTree(p).query(r, workers=-1)
    acc, comp = float(d_pr.mean()), float(d_rp.mean())
    prec, rec = float((d_pr < threshold).mean()), float((d_rp < threshold).mean())
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return MeshMetrics((acc + comp) / 2, acc, comp, f, prec, rec, threshold, n_samples,
                       DEFINITION.format(n=n_samples, tau=threshold))


def evaluate_mesh_files(pred_path: str | Path, ref_path: str | Path, n_samples: int = DEFAULT_SAMPLES,
                        threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> MeshMetrics:
    return evaluate_mesh(load_mesh(pred_path), load_mesh(ref_path), n_samples, threshold, seed)


COLOUR_DEFINITION = ("mesh rendered unlit (its vertex colours or texture) from every input camera at the views' "
                     "resolution, over white; PSNR = 10 log10(1 / MSE) with the MSE over all RGB values of the "
                     "pixels inside either silhouette (rendered mesh or view mask) of all views; psnr_shared over "
                     "the pixels inside both (the colours where the shape agrees); psnr_full over whole images; "
                     "silhouette_error_share: the part of the squared error (either silhouette) on the pixels "
                     "inside only one of them")


@dataclass(frozen=True)
class ColourMetrics:
    psnr: float  # over the union of the two silhouettes (shape errors count too)
    psnr_full: float  # over whole images (white background included: higher)
    n_views: int
    psnr_shared: float = float("nan")  # over the pixels inside both silhouettes (colour where the shape agrees)
    silhouette_error_share: float = float("nan")  # of the squared error in either silhouette: on pixels in only one
    definition: str = COLOUR_DEFINITION

    def to_dict(self) -> dict:
        return asdict(self)


def _psnr(mse: float) -> float:
    import math

    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def colour_psnr(mesh, data, device="cpu") -> ColourMetrics:
    """How well a coloured mesh reproduces the views it was made from (``data``: a ReconData).

    Renders ``mesh`` with its own colours and no shading (the views' shading is baked into the
    colours) from each view's camera; see ``COLOUR_DEFINITION``.
    """
    import numpy as np

    from vfrt.recon.render_mesh import render_views

    w2cs = np.linalg.inv(np.asarray(data.c2w, dtype=np.float64))
    rgba = render_views(mesh, w2cs, data.intrinsics, device=device, ambient=1.0, use_mesh_colours=True)
    alpha = rgba[..., 3:]
    rendered = rgba[..., :3] * alpha + (1.0 - alpha)
    err = (rendered - data.images) ** 2  # (N, H, W, 3)
    drawn, seen = alpha[..., 0] > 0.5, data.masks > 0.5
    region, shared = drawn | seen, drawn & seen
    masked = float(err[region].mean()) if region.any() else 0.0
    inside = float(err[shared].mean()) if shared.any() else 0.0
    total = float(err[region].sum())
    share = float(err[region & ~shared].sum()) / total if total > 0 else 0.0
    return ColourMetrics(_psnr(masked), _psnr(float(err.mean())), int(data.n_views), _psnr(inside), share)
