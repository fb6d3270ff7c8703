"""Visual hull of the views' masks on an occupancy grid: where NeuS samples, and where the mesh may be.

Space carving (Laurentini 1994) with a tolerance: grid cell centres are projected into every
view; a cell is kept when at most a fraction ``tolerance`` of the views see it outside their
(dilated) foreground mask or outside their frame (an orbit frames the whole object in every
view: NeuS could not constrain a part that leaves the frame anyway). The masks are dilated by the projected
half-diagonal of a cell (at half the bound in front of the origin), so a cell that touches
the object is not carved, and the kept set is grown by one cell. With perfect views this is a conservative bound of the object; with
generated views the tolerance absorbs a few inconsistent silhouettes.

Uses:
* sampling: each ray's uniform NeuS samples span only its stretch through the hull (first to
  last occupied cell along the ray) instead of the whole unit sphere, so thin parts are not
  stepped over; rays that miss the hull keep the whole sphere (they teach "empty");
* extraction: the SDF is kept positive outside the hull, so nothing unconstrained by the
  views (floaters outside every silhouette) becomes part of the mesh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vfrt.recon.data import ReconData


@dataclass(frozen=True)
class VisualHull:
    """Occupancy over ``[-bound, bound]^3``: ``occupied`` (R, R, R) bool, index order (x, y, z)."""

    occupied: torch.Tensor
    bound: float

    @property
    def resolution(self) -> int:
        return int(self.occupied.shape[0])

    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """(M,) bool: the cell holding each point (M, 3) is occupied; points outside the box are not."""
        r = self.resolution
        idx = torch.floor((points + self.bound) / (2 * self.bound) * r).long()
        inside = ((idx >= 0) & (idx < r)).all(-1)
        idx = idx.clamp(0, r - 1)
        return self.occupied[idx[:, 0], idx[:, 1], idx[:, 2]] & inside

    def ray_intervals(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor,
                      far: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each ray's stretch (near, far) (R,) through the hull, one cell of margin; misses keep their input."""
        n_steps = 2 * self.resolution
        t = torch.linspace(0.0, 1.0, n_steps, device=rays_o.device)
        z = near[:, None] + (far - near)[:, None] * t[None]  # (R, S)
        pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
        occ = self.contains(pts.reshape(-1, 3)).reshape(z.shape)
        hit = occ.any(-1)
        first = torch.argmax(occ.int(), dim=-1)
        last = n_steps - 1 - torch.argmax(occ.flip(-1).int(), dim=-1)
        margin = 2.0 * self.bound / self.resolution * math.sqrt(3.0)
        z_first = z.gather(1, first[:, None])[:, 0] - margin
        z_last = z.gather(1, last[:, None])[:, 0] + margin
        new_near = torch.where(hit, torch.maximum(z_first, near), near)
        new_far = torch.where(hit, torch.minimum(z_last, far), far)
        return new_near, torch.maximum(new_far, new_near + 1e-3)


@torch.no_grad()
def carve_hull(data: ReconData, resolution: int, tolerance: float, device: torch.device,
               bound: float = 1.0) -> VisualHull:
    """The visual hull of ``data``'s masks on a ``resolution^3`` grid (see module docstring)."""
    k = data.intrinsics
    cell = 2.0 * bound / resolution
    centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) * cell - bound
    grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    outside = torch.zeros(grid.shape[0], device=device)
    half_diag = 0.5 * cell * math.sqrt(3.0)
    for i in range(data.n_views):
        c2w = torch.as_tensor(data.c2w[i], dtype=torch.float32, device=device)
        w2c = torch.linalg.inv(c2w)
        cam = grid @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        front = z > 1e-3
        zc = z.clamp_min(1e-3)
        u = torch.round(k.fx * cam[:, 0] / zc + k.cx - 0.5).long()
        v = torch.round(k.fy * cam[:, 1] / zc + k.cy - 0.5).long()
        in_frame = front & (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
        # footprint of a cell half a unit in front of the origin (objects fill about the unit ball's middle)
        z_near = max(float(c2w[:3, 3].norm()) - 0.5 * bound, 0.25)
        radius = int(math.ceil(k.fx * half_diag / z_near))
        mask = torch.as_tensor(data.masks[i], device=device)[None, None]
        dilated = F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0.5
        fg = dilated[v.clamp(0, k.height - 1), u.clamp(0, k.width - 1)]
        outside += (~(in_frame & fg)).float()
    keep = outside <= tolerance * data.n_views
    occ = keep.reshape(resolution, resolution, resolution)
    occ = F.max_pool3d(occ[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0  # one cell of margin
    return VisualHull(occ, bound)
