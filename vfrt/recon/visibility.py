"""Which input views see which surface points (shared by colour baking and the flat base).

Visibility of a surface point ``p`` (normal ``n``) in view ``i``: it projects inside the image,
faces the camera (``cos = n . (c_i - p) / |c_i - p| > 0``), lies on the view's foreground
mask, and is not behind the mesh: its camera depth is at most the smallest rasterised depth
in the 3x3 pixels around its projection plus a tolerance of ``DEPTH_TOLERANCE_PX`` pixel
footprints (the 3x3 minimum keeps colours from bleeding across occlusion edges).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vfrt.recon.data import ReconData
from vfrt.recon.render_mesh import rasterize

DEPTH_TOLERANCE_PX = 3.0


def sample_image(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` (H, W, C) at pixel-index coordinates ``u, v`` (M,) -> (M, C)."""
    h, w = image.shape[:2]
    grid = torch.stack([(u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1], -1)[None, None]
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


@dataclass(frozen=True)
class ViewHits:
    """Points ``start : start + M`` of one chunk as seen from view ``view``.

    ``seen`` (M,) bool; ``cos`` (M,) cosine between the normal and the direction to the camera;
    ``u, v`` (M,) pixel-index coordinates of the projections; ``to_camera`` (M, 3) camera centre
    minus point and ``distance`` (M,) its length.
    """

    view: int
    start: int
    seen: torch.Tensor
    cos: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    to_camera: torch.Tensor
    distance: torch.Tensor


@torch.no_grad()
def iter_view_hits(points: torch.Tensor, normals: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                   data: ReconData, chunk: int = 1 << 18) -> Iterator[ViewHits]:
    """For every view and every chunk of ``points`` (M, 3) with unit outward ``normals`` (M, 3): which
    points the view sees, with the occluding mesh ``vertices`` (V, 3) float32 / ``faces`` (F, 3) int64
    rasterised once per view (module docstring for the rule)."""
    dev = points.device
    k = data.intrinsics
    for i in range(data.n_views):
        c2w = torch.as_tensor(data.c2w[i], dtype=torch.float32, device=dev)
        w2c = torch.linalg.inv(c2w)
        depth = rasterize(vertices, faces, w2c, k).depth
        depth_min = -F.max_pool2d(-depth[None, None], 3, stride=1, padding=1)[0, 0]
        mask = torch.as_tensor(data.masks[i], device=dev)[..., None]
        centre = c2w[:3, 3]
        for s in range(0, points.shape[0], chunk):
            p, n = points[s:s + chunk], normals[s:s + chunk]
            cam = p @ w2c[:3, :3].T + w2c[:3, 3]
            z = cam[:, 2].clamp_min(1e-6)
            u = k.fx * cam[:, 0] / z + k.cx - 0.5
            v = k.fy * cam[:, 1] / z + k.cy - 0.5
            to_cam = centre - p
            dist = to_cam.norm(dim=-1).clamp_min(1e-8)
            cos = (n * to_cam).sum(-1) / dist
            ui, vi = u.round().long(), v.round().long()
            inside = (ui >= 0) & (ui < k.width) & (vi >= 0) & (vi < k.height) & (cos > 0) & (cam[:, 2] > 1e-3)
            d_ref = depth_min[vi.clamp(0, k.height - 1), ui.clamp(0, k.width - 1)]
            tol = DEPTH_TOLERANCE_PX * z / k.fx + 1e-3
            seen = inside & (z <= d_ref + tol)
            seen &= sample_image(mask, u, v)[:, 0] > 0.5
            yield ViewHits(i, s, seen, cos, u, v, to_cam, dist)
