"""Mesh extraction (marching cubes on the SDF), orientation, export and turntable.

* Marching cubes: :func:`skimage.measure.marching_cubes` of the SDF's zero level set. The grid
  scales with the object: a coarse pass over ``[-mc_bound, mc_bound]^3`` finds the box that
  holds the surface, and the fine grid spans that box with ``mc_resolution`` samples along its
  longest side (a small object gets the same number of cells across as a large one).
* Orientation: the SDF is negative inside, so outward normals follow its gradient. Faces are
  flipped when most face normals disagree with the gradient of the sampled SDF, whatever
  winding the marching-cubes library uses (``test_extracted_mesh_faces_outward`` checks the
  volume sign and the normals on an analytic sphere and box).
* Flat base (optional, :mod:`vfrt.recon.ground`): the grid is intersected with the half-space
  above the lowest surface point a view sees, so the hidden cone under an object seen from above
  is cut off flat.
* Components: pieces with fewer than ``min_component_fraction`` of the largest piece's faces
  (floaters) are dropped; thin parts that came loose (a chair rung) are kept.
* Colours: :mod:`vfrt.recon.bake` (from the views by visibility, or the radiance field).
* Export: ``.ply``, ``.obj``, ``.glb`` through trimesh (vertex colours, or a UV texture).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfrt.runtime.cameras import Intrinsics, orbit_world_to_camera
from vfrt.recon.errors import EmptySurfaceError
from vfrt.recon.fields import NeuSFields
from vfrt.recon.ground import Floor
from vfrt.recon.hull import VisualHull

log = logging.getLogger(__name__)

MESH_FORMATS = ("ply", "obj", "glb")
COARSE_RESOLUTION = 64  # first pass that finds the object's box


@torch.no_grad()
def sdf_grid(fields: NeuSFields, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int], device: torch.device,
             hull: VisualHull | None = None, chunk: int = 1 << 20) -> np.ndarray:
    """SDF samples (shape) float32 on the grid ``linspace(lo[k], hi[k], shape[k])`` per axis (x, y, z order).

    Outside ``hull`` (when given) the samples are made positive: no surface where no view allows one.
    """
    axes = [torch.linspace(float(a), float(b), n, device=device) for a, b, n in zip(lo, hi, shape)]
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    out = torch.empty(shape[0] * yz.shape[0], device=device)
    slab = max(1, chunk // yz.shape[0])
    for i in range(0, shape[0], slab):
        xs = axes[0][i:i + slab]
        pts = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None], yz.repeat(xs.numel(), 1)], -1)
        val = fields.sdf.sdf(pts)
        if hull is not None:
            val = torch.where(hull.contains(pts), val, val.abs() + 1e-3)
        out[i * yz.shape[0]:(i + xs.numel()) * yz.shape[0]] = val
    return out.reshape(shape).cpu().numpy()


def surface_box(fields: NeuSFields, bound: float, device: torch.device, hull: VisualHull | None = None,
                resolution: int = COARSE_RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box ``(lo, hi)`` that holds the SDF's zero set, from a coarse grid (two cells of margin).

    Raises:
        EmptySurfaceError: no zero crossing (or non-finite values) inside ``[-bound, bound]^3``.
    """
    lo, hi = np.full(3, -bound), np.full(3, bound)
    vol = sdf_grid(fields, lo, hi, (resolution,) * 3, device, hull)
    if not np.isfinite(vol).all():
        raise EmptySurfaceError("the SDF has non-finite values; training probably diverged")
    if vol.min() >= 0.0 or vol.max() <= 0.0:
        raise EmptySurfaceError(f"the SDF has no zero crossing in [-{bound}, {bound}]^3 (min {vol.min():.3g}, "
                                f"max {vol.max():.3g}); check the masks and cameras")
    cell = 2.0 * bound / (resolution - 1)
    near = np.abs(vol) < 1.5 * cell  # samples within reach of the surface, and everything inside
    idx = np.argwhere(near | (vol < 0))
    t = np.linspace(-bound, bound, resolution)
    box_lo = np.maximum(t[idx.min(0)] - 2 * cell, -bound)
    box_hi = np.minimum(t[idx.max(0)] + 2 * cell, bound)
    return box_lo, box_hi


def orient_outward(vertices: np.ndarray, faces: np.ndarray, vol: np.ndarray, lo: np.ndarray,
                   step: np.ndarray) -> np.ndarray:
    """``faces`` (F, 3), flipped if most face normals point against the SDF gradient (i.e. inwards)."""
    if len(faces) == 0:
        return faces
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    grads = np.stack(np.gradient(vol, *step), -1)  # (X, Y, Z, 3), points outwards (SDF grows outside)
    cell = np.clip(np.rint((tri.mean(1) - lo) / step).astype(np.int64), 0, np.array(vol.shape) - 1)
    g = grads[cell[:, 0], cell[:, 1], cell[:, 2]]
    agree = float(np.einsum("ij,ij->i", normals, g).sum())
    return faces if agree >= 0 else faces[:, ::-1].copy()


def drop_small_components(mesh, min_fraction: float):
    """Keep connected pieces with at least ``min_fraction`` of the largest piece's faces."""
    if min_fraction <= 0 or len(mesh.faces) == 0:
        return mesh
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * largest]
    if len(kept) < len(parts):
        log.info("dropped %d small component(s) of %d", len(parts) - len(kept), len(parts))
    return trimesh.util.concatenate(kept)


@dataclass(frozen=True)
class SurfaceGrid:
    """SDF samples ``values`` (X, Y, Z) float32 at ``lo + step * (i, j, k)`` (world units)."""

    values: np.ndarray
    lo: np.ndarray
    step: float

    def inside_volume(self, below: Floor | None = None) -> float:
        """Volume of the samples inside the surface (SDF < 0), each standing for a cell of ``step^3``;
        with ``below``, only of those under that floor."""
        inside = self.values < 0
        if below is not None:
            inside &= self.heights_above(below) < 0
        return float(inside.sum()) * self.step**3

    def heights_above(self, floor: Floor) -> np.ndarray:
        """(X, Y, Z) float32 height of every sample above ``floor`` (summed per axis: no (X, Y, Z, 3) array)."""
        up = np.asarray(floor.up, dtype=np.float64)
        x, y, z = (((self.lo[k] + self.step * np.arange(n)) * up[k]) for k, n in enumerate(self.values.shape))
        return (x[:, None, None] + y[None, :, None] + z[None, None, :] - floor.height).astype(np.float32)


def surface_grid(fields: NeuSFields, device: torch.device, resolution: int = 256, bound: float = 1.0,
                 hull: VisualHull | None = None) -> SurfaceGrid:
    """The SDF on the object-scaled grid: ``resolution`` samples along the longest side of the box
    that holds the surface (module docstring).

    Raises:
        EmptySurfaceError: the SDF does not cross zero inside the volume.
    """
    lo, hi = surface_box(fields, bound, device, hull)
    step_len = float((hi - lo).max()) / (resolution - 1)
    shape = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / step_len).astype(int) + 1, 2))
    hi = lo + step_len * (np.array(shape) - 1)
    vol = sdf_grid(fields, lo, hi, shape, device, hull)
    if vol.min() >= 0.0 or vol.max() <= 0.0:
        raise EmptySurfaceError("the SDF has no zero crossing at the surface resolution; raise --mc-resolution")
    return SurfaceGrid(vol, lo, step_len)


def mesh_from_grid(grid: SurfaceGrid, min_component_fraction: float = 0.01, floor: Floor | None = None):
    """Marching cubes of ``grid``'s zero level set, outward-facing, without colours (``trimesh.Trimesh``);
    with ``floor``, only the part above it (the base closed flat: :mod:`vfrt.recon.ground`).

    Raises:
        EmptySurfaceError: nothing is left above ``floor``.
    """
    import trimesh
    from skimage import measure

    vol = grid.values
    if floor is not None:
        vol = np.maximum(vol, -grid.heights_above(floor))
        if vol.min() >= 0.0:
            raise EmptySurfaceError("nothing of the surface lies above the lowest point the views see")
    step = np.full(3, grid.step)
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=tuple(step))
    faces = orient_outward(verts, faces, vol, np.zeros(3), step)
    mesh = trimesh.Trimesh(verts + grid.lo, faces, process=True)
    return drop_small_components(mesh, min_component_fraction)


def extract_mesh(fields: NeuSFields, device: torch.device, resolution: int = 256, bound: float = 1.0,
                 min_component_fraction: float = 0.01, hull: VisualHull | None = None):
    """Marching cubes of the SDF's zero level set, outward-facing, without colours (``trimesh.Trimesh``):
    :func:`surface_grid` then :func:`mesh_from_grid`.

    Raises:
        EmptySurfaceError: the SDF does not cross zero inside the volume.
    """
    return mesh_from_grid(surface_grid(fields, device, resolution, bound, hull), min_component_fraction)


def export_mesh(mesh, out_dir: str | Path, stem: str = "mesh", formats=MESH_FORMATS, textured=None) -> dict[str, Path]:
    """Write ``stem.<fmt>`` for each format; returns ``{fmt: path}``.

    ``mesh`` carries vertex colours. With ``textured`` (the same surface with a UV atlas and
    a texture, :func:`vfrt.recon.bake.bake_texture`), ``.glb`` and ``.obj`` (+ ``.mtl`` and
    the texture image) are written from it; ``.ply`` keeps the vertex colours.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        source = textured if textured is not None and fmt in ("glb", "obj") else mesh
        source.export(p)
        paths[fmt] = p
    return paths


def write_turntable(mesh, path: str | Path, frames: int = 24, size: int = 256, elevation_deg: float = 30.0,
                    device: str | torch.device = "cpu") -> Path:
    """Turntable of a coloured mesh on white: a GIF with imageio, else a PNG strip.

    ``path`` without suffix gets ``.gif`` (imageio importable) or ``.png``.
    """
    from PIL import Image

    from vfrt.recon.render_mesh import render_views

    # colours already hold the views' baked shading: only a light extra shading for shape cues
    rgba = render_views(mesh, orbit_world_to_camera(frames, elevation_deg), Intrinsics.default(size),
                        device=device, ambient=0.8, use_mesh_colours=True)
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    imgs = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    path = Path(path)
    try:
        import imageio.v2 as imageio
    except ImportError:
        imageio = None
    if imageio is not None and path.suffix.lower() in ("", ".gif"):
        path = path.with_suffix(".gif")
        imageio.mimsave(path, list(imgs), duration=1000 / 12, loop=0)
    else:
        path = path.with_suffix(".png")
        Image.fromarray(np.concatenate(list(imgs), axis=1)).save(path)
    return path
