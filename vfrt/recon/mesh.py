"""Mesh extraction (marching cubes on the SDF), vertex colours, export and turntable.

* Marching cubes: :func:`skimage.measure.marching_cubes` on a ``mc_resolution^3`` grid of the
  SDF over ``[-mc_bound, mc_bound]^3``; faces oriented so normals point outwards (SDF > 0).
* Vertex colours: the colour network at each vertex with the SDF gradient as normal and the
  view direction ``-normal`` (looking straight at the surface), i.e. a "frontal" colour.
* Export: ``.ply``, ``.obj``, ``.glb`` through trimesh; turntable GIF (imageio) or PNG strip
  from :mod:`vfrt.recon.render_mesh`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vfrt.runtime.cameras import Intrinsics, orbit_world_to_camera
from vfrt.recon.errors import EmptySurfaceError
from vfrt.recon.fields import NeuSFields

log = logging.getLogger(__name__)

MESH_FORMATS = ("ply", "obj", "glb")


@torch.no_grad()
def sdf_volume(fields: NeuSFields, resolution: int, bound: float, device: torch.device,
               chunk: int = 1 << 20) -> np.ndarray:
    """(R, R, R) float32 SDF samples on ``linspace(-bound, bound, R)`` per axis (x, y, z order)."""
    t = torch.linspace(-bound, bound, resolution, device=device)
    out = torch.empty(resolution ** 3, device=device)
    # iterate over x-slabs to keep memory flat
    yz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    slab = max(1, chunk // yz.shape[0])
    for i in range(0, resolution, slab):
        xs = t[i:i + slab]
        pts = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None], yz.repeat(xs.numel(), 1)], -1)
        out[i * yz.shape[0]:(i + xs.numel()) * yz.shape[0]] = fields.sdf.sdf(pts)
    return out.reshape(resolution, resolution, resolution).cpu().numpy()


@torch.no_grad()
def vertex_colors(fields: NeuSFields, vertices: np.ndarray, device: torch.device, chunk: int = 1 << 18) -> np.ndarray:
    """(V, 3) float32 colours in [0, 1]: colour net with view direction = -normal."""
    out = []
    v_all = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    for s in range(0, v_all.shape[0], chunk):
        v = v_all[s:s + chunk]
        _, feat, grad = fields.sdf.forward_with_gradient(v)
        n = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        out.append(fields.color(v, grad, -n, feat).float())
    if not out:
        return np.zeros((0, 3), np.float32)
    return torch.cat(out).cpu().numpy()


def extract_mesh(fields: NeuSFields, device: torch.device, resolution: int = 256, bound: float = 1.0,
                 keep_largest_component: bool = True):
    """Marching cubes of the SDF's zero level set, with vertex colours. Returns a ``trimesh.Trimesh``.

    Raises:
        EmptySurfaceError: the SDF does not cross zero inside the volume.
    """
    import trimesh
    from skimage import measure

    vol = sdf_volume(fields, resolution, bound, device)
    if not np.isfinite(vol).all():
        raise EmptySurfaceError("the SDF has non-finite values; training probably diverged")
    if vol.min() >= 0.0 or vol.max() <= 0.0:
        raise EmptySurfaceError(f"the SDF has no zero crossing in [-{bound}, {bound}]^3 (min {vol.min():.3g}, "
                                f"max {vol.max():.3g}); check the masks and cameras")
    step = 2.0 * bound / (resolution - 1)
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=(step, step, step))
    verts = verts - bound
    mesh = trimesh.Trimesh(verts, faces[:, ::-1], process=True)  # outward normals for SDF > 0 outside
    if keep_largest_component and len(mesh.faces):
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda m: len(m.faces))
    cols = vertex_colors(fields, np.asarray(mesh.vertices), device)
    rgba = np.concatenate([np.clip(cols * 255 + 0.5, 0, 255), np.full((len(cols), 1), 255)], 1).astype(np.uint8)
    mesh.visual.vertex_colors = rgba
    return mesh


def export_mesh(mesh, out_dir: str | Path, stem: str = "mesh", formats=MESH_FORMATS) -> dict[str, Path]:
    """Write ``stem.<fmt>`` for each format; returns ``{fmt: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        mesh.export(p)
        paths[fmt] = p
    return paths


def write_turntable(mesh, path: str | Path, frames: int = 24, size: int = 256, elevation_deg: float = 30.0,
                    device: str | torch.device = "cpu") -> Path:
    """Turntable of a vertex-coloured mesh on white: a GIF with imageio, else a PNG strip.

    ``path`` without suffix gets ``.gif`` (imageio importable) or ``.png``.
    """
    from PIL import Image

    from vfrt.recon.render_mesh import render_views

    cols = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float32) / 255.0
    # vertex colours already hold the views' baked shading: only a light extra shading for shape cues
    rgba = render_views(mesh, orbit_world_to_camera(frames, elevation_deg), Intrinsics.default(size), cols, device,
                        ambient=0.8)
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
