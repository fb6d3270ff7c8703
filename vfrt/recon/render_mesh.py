"""A small headless CPU/GPU z-buffer rasteriser (torch) and the bundled demo orbit.

Used for (1) ground-truth views of a known textured mesh with exact cameras (SPEC §8), and
(2) turntable renders of reconstructed meshes. Pixels are sampled at their centres, in the
pixel-centre convention of :mod:`vfrt.runtime.cameras`; barycentrics are perspective-correct.

Algorithm: project vertices; per triangle, enumerate the pixels of its bounding box (triangles
are bucketed by bounding-box size, so tiny and huge triangles are both vectorised), keep
pixels inside all three edge functions, then resolve visibility with a ``scatter_reduce``
minimum on depth.

Regenerate the bundled demo with ``python -m vfrt.recon.render_mesh --demo examples/demo_orbit``.
"""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfrt.runtime.cameras import Intrinsics, orbit_world_to_camera, write_transforms_json_rings

log = logging.getLogger(__name__)

LIGHT_DIR = np.array([0.3, -0.4, 0.87]) / np.linalg.norm([0.3, -0.4, 0.87])


@dataclass
class Fragments:
    """Rasteriser output for one camera (H, W)."""

    face_id: torch.Tensor  # (H, W) int64, -1 where empty
    bary: torch.Tensor  # (H, W, 3) float32 perspective-correct barycentrics
    depth: torch.Tensor  # (H, W) float32 camera z, inf where empty

    @property
    def mask(self) -> torch.Tensor:
        return self.face_id >= 0


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, w2c: torch.Tensor, intr: Intrinsics,
              near: float = 1e-2, max_candidates: int = 1 << 22) -> Fragments:
    """Rasterise a triangle mesh.

    Args:
        vertices: (V, 3) float32 world positions; faces: (F, 3) int64.
        w2c: (4, 4) OpenCV world-to-camera.
    """
    dev = vertices.device
    h, w = intr.height, intr.width
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    # pixel-index coordinates: pixel i has its centre at continuous i + 0.5
    u = intr.fx * cam[:, 0] / z.clamp_min(near) + intr.cx - 0.5
    v = intr.fy * cam[:, 1] / z.clamp_min(near) + intr.cy - 0.5
    fu, fv, fz = u[faces], v[faces], z[faces]  # (F, 3)
    area = (fu[:, 1] - fu[:, 0]) * (fv[:, 2] - fv[:, 0]) - (fu[:, 2] - fu[:, 0]) * (fv[:, 1] - fv[:, 0])
    x0 = fu.min(1).values.ceil().clamp(0, w - 1)
    x1 = fu.max(1).values.floor().clamp(-1, w - 1)
    y0 = fv.min(1).values.ceil().clamp(0, h - 1)
    y1 = fv.max(1).values.floor().clamp(-1, h - 1)
    ok = (fz.min(1).values > near) & (area.abs() > 1e-12) & (x1 >= x0) & (y1 >= y0)
    ids = torch.nonzero(ok).squeeze(1)
    size = torch.maximum(x1 - x0 + 1, y1 - y0 + 1)[ids]
    bucket = torch.ceil(torch.log2(size.clamp_min(1))).long()

    pix_all, depth_all, face_all, bary_all = [], [], [], []
    for b in torch.unique(bucket).tolist():
        k = 1 << b
        sel = ids[bucket == b]
        per_chunk = max(1, max_candidates // (k * k))
        dy, dx = torch.meshgrid(torch.arange(k, device=dev), torch.arange(k, device=dev), indexing="ij")
        dx, dy = dx.reshape(-1).float(), dy.reshape(-1).float()
        for s in range(0, sel.numel(), per_chunk):
            f = sel[s:s + per_chunk]
            px = x0[f, None] + dx[None]
            py = y0[f, None] + dy[None]
            valid = (px <= x1[f, None]) & (py <= y1[f, None])
            tu, tv, tz = fu[f], fv[f], fz[f]
            a = area[f, None]
            # edge functions -> screen-space barycentrics
            l0 = ((tu[:, 1, None] - px) * (tv[:, 2, None] - py) - (tu[:, 2, None] - px) * (tv[:, 1, None] - py)) / a
            l1 = ((tu[:, 2, None] - px) * (tv[:, 0, None] - py) - (tu[:, 0, None] - px) * (tv[:, 2, None] - py)) / a
            l2 = 1.0 - l0 - l1
            inside = valid & (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6)
            if not inside.any():
                continue
            fi, ci = torch.nonzero(inside, as_tuple=True)
            lam = torch.stack([l0[fi, ci], l1[fi, ci], l2[fi, ci]], -1).clamp_min(0)
            inv_z = lam / tz[fi]
            denom = inv_z.sum(-1)
            pix_all.append((py[fi, ci].long() * w + px[fi, ci].long()))
            depth_all.append(1.0 / denom)
            face_all.append(f[fi])
            bary_all.append(inv_z / denom[:, None])
    face_id = torch.full((h * w,), -1, dtype=torch.int64, device=dev)
    depth = torch.full((h * w,), math.inf, device=dev)
    bary = torch.zeros(h * w, 3, device=dev)
    if pix_all:
        pix, dep = torch.cat(pix_all), torch.cat(depth_all)
        fac, bar = torch.cat(face_all), torch.cat(bary_all)
        depth.scatter_reduce_(0, pix, dep, reduce="amin")
        win = dep <= depth[pix]
        face_id[pix[win]] = fac[win]
        bary[pix[win]] = bar[win]
    return Fragments(face_id.view(h, w), bary.view(h, w, 3), depth.view(h, w))


def interpolate(frag: Fragments, faces: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
    """Interpolate a per-vertex attribute (V, C) -> (H, W, C); zero where empty."""
    fid = frag.face_id.clamp_min(0)
    tri = attr[faces[fid]]  # (H, W, 3, C)
    out = (frag.bary[..., None] * tri).sum(-2)
    return out * frag.mask[..., None]


def shade(normals: torch.Tensor, albedo: torch.Tensor, ambient: float = 0.55) -> torch.Tensor:
    """View-independent Lambert shading, fixed world light: ``albedo * (a + (1 - a) max(0, n.l))``."""
    light = torch.as_tensor(LIGHT_DIR, dtype=normals.dtype, device=normals.device)
    n = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return albedo * (ambient + (1.0 - ambient) * (n @ light).clamp_min(0.0))[..., None]


def procedural_albedo(points: torch.Tensor) -> torch.Tensor:
    """A smooth, colourful solid texture of world positions (N, 3) -> (N, 3) in [0.1, 0.9]."""
    p = points * 4.0
    r = 0.5 + 0.4 * torch.sin(p[..., 0] + 0.5 * p[..., 2])
    g = 0.5 + 0.4 * torch.sin(p[..., 1] * 1.3 + 2.0)
    b = 0.5 + 0.4 * torch.cos(p[..., 2] * 1.7 + p[..., 0] * 0.5)
    return torch.stack([r, g, b], -1)


def mesh_colour_fn(mesh, device: torch.device) -> Callable[[Fragments, torch.Tensor], torch.Tensor]:
    """Per-pixel colours (H, W, 3) of a mesh's own visual: a UV texture (bilinear) or vertex colours."""
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64, device=device)
    visual = mesh.visual
    if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
        import torch.nn.functional as F

        image = visual.material.baseColorTexture if hasattr(visual.material, "baseColorTexture") else visual.material.image
        tex = torch.as_tensor(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, device=device)
        uv = torch.as_tensor(np.asarray(visual.uv), dtype=torch.float32, device=device)

        def from_texture(frag: Fragments, _positions: torch.Tensor) -> torch.Tensor:
            st = interpolate(frag, faces, uv)  # (H, W, 2), v up
            grid = torch.stack([st[..., 0] * 2 - 1, (1 - st[..., 1]) * 2 - 1], -1)[None]
            out = F.grid_sample(tex.permute(2, 0, 1)[None], grid, mode="bilinear", align_corners=False)
            return out[0].permute(1, 2, 0)

        return from_texture
    cols = torch.as_tensor(np.asarray(visual.vertex_colors)[:, :3].astype(np.float32) / 255.0, device=device)

    def from_vertices(frag: Fragments, _positions: torch.Tensor) -> torch.Tensor:
        return interpolate(frag, faces, cols)

    return from_vertices


def render_views(mesh, w2cs: np.ndarray, intr: Intrinsics, vertex_colors: np.ndarray | None = None,
                 device: str | torch.device = "cpu", ambient: float = 0.55,
                 albedo: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 use_mesh_colours: bool = False) -> np.ndarray:
    """RGBA float32 (N, H, W, 4) renders of a trimesh mesh over a transparent background.

    Colour, first that applies: the mesh's own texture or vertex colours (``use_mesh_colours``),
    ``vertex_colors`` (V, 3) in [0, 1], ``albedo`` (a function of the interpolated world
    position), :func:`procedural_albedo`. Lambert-shaded with :func:`shade` (``ambient``; 1.0
    renders the colours unlit).
    """
    dev = torch.device(device)
    verts = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32, device=dev)
    faces = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64, device=dev)
    vnorm = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32, device=dev)
    if use_mesh_colours:
        colour_fn = mesh_colour_fn(mesh, dev)
    elif vertex_colors is not None:
        vcol = torch.as_tensor(vertex_colors, dtype=torch.float32, device=dev)
        colour_fn = lambda frag, _pos: interpolate(frag, faces, vcol)  # noqa: E731
    else:
        fn = albedo or procedural_albedo
        colour_fn = lambda frag, pos: fn(pos.reshape(-1, 3)).reshape(pos.shape)  # noqa: E731
    out = []
    for w2c in w2cs:
        frag = rasterize(verts, faces, torch.as_tensor(w2c, dtype=torch.float32, device=dev), intr)
        n = interpolate(frag, faces, vnorm)
        colour = colour_fn(frag, interpolate(frag, faces, verts))
        rgb = shade(n, colour, ambient) * frag.mask[..., None]
        out.append(torch.cat([rgb, frag.mask[..., None].float()], -1).cpu().numpy())
    return np.stack(out).astype(np.float32)


def demo_mesh(shape: str = "capsule"):
    """A known mesh inside the unit sphere: ``capsule`` (tilted), ``torus``, ``box`` or ``sphere``.

    Each fits inside every view of the default orbit (no part crosses the image border; a test
    checks this): NeuS cannot constrain geometry outside the view frusta.
    """
    import trimesh

    if shape == "capsule":
        m = trimesh.creation.capsule(height=0.5, radius=0.25, count=[48, 48])
        m.apply_transform(trimesh.transformations.rotation_matrix(math.radians(60), [1, 0.3, 0]))
    elif shape == "torus":
        m = trimesh.creation.torus(major_radius=0.4, minor_radius=0.15, major_sections=96, minor_sections=48)
        m.apply_transform(trimesh.transformations.rotation_matrix(math.radians(20), [1, 0, 0]))
    elif shape == "box":
        m = trimesh.creation.box(extents=[0.8, 0.6, 0.5])
        m.apply_transform(trimesh.transformations.rotation_matrix(math.radians(25), [0, 0, 1]))
    elif shape == "sphere":
        m = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    else:
        raise ValueError(f"unknown demo shape {shape!r}")
    return m


def write_orbit(out_dir: str | Path, mesh, n_views: int = 16, image_size: int = 256, elevation_deg: float = 30.0,
                device: str = "cpu", albedo: Callable[[torch.Tensor], torch.Tensor] | None = None,
                low_ring: tuple[float, int] | None = None) -> Path:
    """Render ``mesh`` into an RGBA orbit (``views/XXX.png``), ``transforms.json`` and ``reference.ply``.

    ``albedo``: colour of world positions (N, 3) -> (N, 3), default :func:`procedural_albedo`.
    ``low_ring``: ``(elevation_deg, n_views)`` of a second ring (``views/low_XXX.png``), e.g. below the
    horizon so that the underside is seen.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "views").mkdir(parents=True, exist_ok=True)
    intr = Intrinsics.default(image_size)
    rings = [("", n_views, elevation_deg)] + ([("low_", low_ring[1], low_ring[0])] if low_ring else [])
    written = []
    for prefix, n, elevation in rings:
        rgba = render_views(mesh, orbit_world_to_camera(n, elevation), intr, device=device, albedo=albedo)
        names = []
        for i, img in enumerate(rgba):
            name = f"views/{prefix}{i:03d}.png"
            Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).save(out / name, optimize=True)
            names.append(name)
        written.append((n, elevation, names))
    write_transforms_json_rings(out / "transforms.json", written, image_size=image_size)
    mesh.export(out / "reference.ply")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Render a known textured mesh into an orbit of RGBA views.")
    p.add_argument("--demo", type=Path, required=True, help="output folder (e.g. examples/demo_orbit)")
    p.add_argument("--shape", default="capsule", choices=["capsule", "torus", "box", "sphere"])
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--elevation", type=float, default=30.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    write_orbit(a.demo, demo_mesh(a.shape), a.views, a.size, a.elevation)
    log.info("wrote %s", a.demo)


if __name__ == "__main__":
    main()
