"""Colours of the extracted mesh: from the input views by visibility, or the radiance field
seen along the true viewing directions; as vertex colours or a UV texture (xatlas unwrap).

Which views see a surface point: :mod:`vfrt.recon.visibility` (inside the frame, facing the
camera, on the view's mask, not behind the mesh).

* ``colour_source="views"``: the views' bilinearly sampled colours, averaged with weights
  ``cos^COS_POWER`` (frontal views dominate; grazing ones are blurred by foreshortening).
* ``colour_source="field"``: the colour network at ``p`` with the normal and the viewing
  direction ``(p - c_i) / |p - c_i|`` of each view that sees ``p``, averaged with the same weights.

Points that no view sees (under the base, deep in a cavity) get the colour network's frontal
colour (view direction ``-n``).

A UV texture (``texture_size > 0``): xatlas charts the mesh, each texel's surface point and
normal come from rasterising the atlas in UV space with :mod:`vfrt.recon.render_mesh`, texels
are coloured like vertices, and colours are pushed ``TEXTURE_PADDING`` texels past the chart
borders so bilinear lookups and mipmaps do not pick up the empty background.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vfrt.recon.data import ReconData
from vfrt.recon.fields import NeuSFields
from vfrt.recon.render_mesh import rasterize
from vfrt.recon.visibility import iter_view_hits, sample_image
from vfrt.runtime.cameras import Intrinsics

log = logging.getLogger(__name__)

COS_POWER = 4.0
TEXTURE_PADDING = 4

ColourFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (points, normals, view dirs) -> rgb


@torch.no_grad()
def visible_colours(points: torch.Tensor, normals: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                    data: ReconData, source: str = "views", field_colour: ColourFn | None = None,
                    chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean colour of surface points over the views that see them (:mod:`vfrt.recon.visibility`).

    Args:
        points, normals: (M, 3) float32 on the device; normals unit length, outward.
        vertices, faces: the mesh (V, 3) float32 / (F, 3) int64 that occludes (for the depth test).
        data: the views (images (N, H, W, 3) over white, masks, OpenCV c2w, intrinsics).
        source: ``"views"`` (sample the images) or ``"field"`` (``field_colour`` along the view rays).
    Returns:
        colours (M, 3) in [0, 1] (zero where unseen) and the total weight (M,) (0 = no view sees it).
    """
    dev = points.device
    acc = torch.zeros(points.shape[0], 3, device=dev)
    wsum = torch.zeros(points.shape[0], device=dev)
    image, image_of = None, -1
    for hit in iter_view_hits(points, normals, vertices, faces, data, chunk):
        if not bool(hit.seen.any()):
            continue
        w = hit.cos.clamp_min(0.0) ** COS_POWER * hit.seen
        rows = slice(hit.start, hit.start + hit.seen.shape[0])
        if source == "views":
            if image_of != hit.view:
                image, image_of = torch.as_tensor(data.images[hit.view], device=dev), hit.view
            col = sample_image(image, hit.u, hit.v)
        else:
            p, n = points[rows], normals[rows]
            col = torch.zeros_like(p)
            idx = torch.nonzero(hit.seen).squeeze(1)
            col[idx] = field_colour(p[idx], n[idx], -hit.to_camera[idx] / hit.distance[idx, None])
        acc[rows] += w[:, None] * col
        wsum[rows] += w
    colours = acc / wsum.clamp_min(1e-12)[:, None]
    return colours.clamp(0.0, 1.0), wsum


def field_colour_fn(fields: NeuSFields) -> ColourFn:
    """The colour network at surface points: ``(points, normals, view dirs) -> rgb`` (M, 3)."""

    @torch.no_grad()
    def colour(points: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, points.shape[0], 1 << 18):
            p = points[s:s + (1 << 18)]
            _, feat, grad = fields.sdf.forward_with_gradient(p)
            out.append(fields.color(p, grad, dirs[s:s + (1 << 18)], feat).float())
        return torch.cat(out) if out else points.new_zeros(0, 3)

    return colour


@torch.no_grad()
def surface_colours(points: torch.Tensor, normals: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                    data: ReconData, fields: NeuSFields, source: str) -> torch.Tensor:
    """(M, 3) colours: visible views (``source``), else the field's frontal colour."""
    field = field_colour_fn(fields)
    colours, weight = visible_colours(points, normals, vertices, faces, data, source, field)
    unseen = torch.nonzero(weight <= 0).squeeze(1)
    if unseen.numel():
        colours[unseen] = field(points[unseen], normals[unseen], -normals[unseen])
    return colours


@torch.no_grad()
def bake_vertex_colours(mesh, data: ReconData, fields: NeuSFields, device: torch.device,
                        source: str = "views") -> np.ndarray:
    """(V, 3) float32 vertex colours in [0, 1] of ``mesh`` (trimesh, outward normals)."""
    verts = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32, device=device)
    faces = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64, device=device)
    normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32, device=device)
    return surface_colours(verts, normals, verts, faces, data, fields, source).cpu().numpy()


def _dilate(colour: torch.Tensor, valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Grow ``colour`` (S, S, 3) from ``valid`` texels into the empty ones, one texel per step."""
    c = colour.permute(2, 0, 1)[None] * valid[None, None]
    m = valid[None, None].float()
    for _ in range(steps):
        c_sum = F.avg_pool2d(c, 3, stride=1, padding=1, divisor_override=1)
        m_sum = F.avg_pool2d(m, 3, stride=1, padding=1, divisor_override=1)
        grow = (m == 0) & (m_sum > 0)
        c = torch.where(grow, c_sum / m_sum.clamp_min(1e-8), c)
        m = torch.where(grow, torch.ones_like(m), m)
    return c[0].permute(1, 2, 0)


@torch.no_grad()
def bake_texture(mesh, data: ReconData, fields: NeuSFields, device: torch.device, size: int,
                 source: str = "views"):
    """A copy of ``mesh`` with an xatlas UV atlas and a ``size`` x ``size`` baked colour texture.

    Returns a ``trimesh.Trimesh`` with ``TextureVisuals`` (UVs with v up, trimesh's convention;
    the glTF exporter flips them).
    """
    import trimesh
    import xatlas
    from PIL import Image

    vmapping, indices, uvs = xatlas.parametrize(np.asarray(mesh.vertices, dtype=np.float32),
                                                np.asarray(mesh.faces, dtype=np.uint32))
    verts = np.asarray(mesh.vertices, dtype=np.float32)[vmapping]
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32)[vmapping]
    faces_t = torch.as_tensor(indices.astype(np.int64), device=device)
    # rasterise the atlas: texel (col, row) at pixel-index coordinates (u S - 1/2, (1 - v) S - 1/2)
    uv_pts = torch.as_tensor(np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5,
                                       np.ones(len(uvs))], -1), dtype=torch.float32, device=device)
    frag = rasterize(uv_pts, faces_t, torch.eye(4, device=device), Intrinsics(1.0, 1.0, 0.5, 0.5, size, size))
    valid = frag.mask
    fid = frag.face_id[valid]
    bary = frag.bary[valid]
    v_t = torch.as_tensor(verts, device=device)
    n_t = torch.as_tensor(normals, device=device)
    tri = faces_t[fid]
    points = (bary[:, :, None] * v_t[tri]).sum(1)
    normal = F.normalize((bary[:, :, None] * n_t[tri]).sum(1), dim=-1)
    occ_v = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32, device=device)
    occ_f = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64, device=device)
    colours = surface_colours(points, normal, occ_v, occ_f, data, fields, source)
    tex = torch.zeros(size, size, 3, device=device)
    tex[valid] = colours
    tex = _dilate(tex, valid, TEXTURE_PADDING)
    image = Image.fromarray(np.clip(tex.cpu().numpy() * 255 + 0.5, 0, 255).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    return trimesh.Trimesh(verts, indices.astype(np.int64), visual=visual, process=False)
