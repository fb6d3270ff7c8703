"""The flat base: space below the lowest surface point that a view sees is empty.

An orbit that looks at an object from above (Zero123's and vfrt's default: 30 degrees above the
horizon) never sees what lies under it. The visual hull there is a cone under the base (every
point in it projects inside every mask), and nothing in the photometric or mask losses prefers
the flat base a real object stands on: a mug came out with a cone 0.15 deep under it. The prior
this module applies is the one a user expects of an object photographed on a table: nothing lies
below the lowest surface point that some view sees clearly.

* **Up** is the side the cameras look from: the mean of the camera centres (the object is at the
  origin). When the cameras surround the object (that mean is shorter than ``MIN_UP_BIAS`` of their
  mean distance, e.g. an orbit at the horizon or views from below as well) there is no unseen
  underside and nothing is cut.
* **The floor** is the ``SEEN_QUANTILE`` quantile of the heights (along up) of the mesh vertices
  that some view sees (:mod:`vfrt.recon.visibility`) at a cosine of at least ``MIN_SEEN_COS``
  between the normal and the direction to the camera: the surface of the hidden cone is grazed by
  the rays that bound it (cosine ~0), so only surface a view really faces counts. The floor is
  put one grid cell lower (``margin``): that vertex sits about a cell above the rounded edge.
* The SDF grid is intersected with the half-space above the floor (``max(f, floor - h)``), and
  marching cubes closes the base flat at that height. The cut is kept only when it removes at
  least ``MIN_REMOVED_FRACTION`` of the volume (:func:`worth_cutting`): a hidden cone is a sizeable
  part of the object, while under a rounded foot the lowest point seen clearly lies above the true
  bottom (a sphere's surface is faced at a cosine >= 0.25 from 30 degrees above only down to 45
  degrees below its equator), and cutting there would shave off a sliver that was right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vfrt.recon.data import ReconData
from vfrt.recon.visibility import iter_view_hits

MIN_UP_BIAS = 0.25
MIN_SEEN_COS = 0.25
SEEN_QUANTILE = 0.001
MIN_REMOVED_FRACTION = 0.01


@dataclass(frozen=True)
class Floor:
    """The plane ``x . up = height`` below which the reconstruction is empty (``up`` unit (3,))."""

    up: tuple[float, float, float]
    height: float

    def signed_height(self, points: np.ndarray) -> np.ndarray:
        """Height of ``points`` (..., 3) above the floor."""
        return points @ np.asarray(self.up) - self.height

    def to_dict(self) -> dict:
        return {"up": list(self.up), "height": self.height}


def up_direction(c2w: np.ndarray) -> np.ndarray | None:
    """Unit vector towards the side the cameras (OpenCV c2w (N, 4, 4), object at the origin) look
    from, or None when they surround the object."""
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    mean = centres.mean(0)
    reach = float(np.linalg.norm(centres, axis=1).mean())
    if reach <= 0 or np.linalg.norm(mean) < MIN_UP_BIAS * reach:
        return None
    return mean / np.linalg.norm(mean)


def one_sided_note(c2w: np.ndarray) -> str | None:
    """What a user should know when every camera looks from one side (None when they surround the object)."""
    up = up_direction(c2w)
    if up is None:
        return None
    side = "above" if up[2] > 0.5 else "below" if up[2] < -0.5 else "one side"
    return (f"all {len(c2w)} views look at the object from {side}: what none of them sees (the space under a "
            "seat or a table top) comes out filled; views from the other side show it (`vfrt run "
            "--low-ring 12` adds 12 views from below)")


@torch.no_grad()
def find_floor(mesh, data: ReconData, device: torch.device, margin: float = 0.0) -> Floor | None:
    """The floor under ``mesh`` (trimesh, outward normals) seen by the views of ``data``, ``margin``
    lower (marching cubes rounds an edge over about one cell, so the lowest vertex seen clearly sits
    about one cell above the base's edge: pass the grid step), or None (cameras all round, or no
    vertex seen clearly)."""
    up = up_direction(data.c2w)
    if up is None or len(mesh.vertices) == 0:
        return None
    verts = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32, device=device)
    faces = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64, device=device)
    normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32, device=device)
    clearly = torch.zeros(verts.shape[0], dtype=torch.bool, device=device)
    for hit in iter_view_hits(verts, normals, verts, faces, data):
        clearly[hit.start:hit.start + hit.seen.shape[0]] |= hit.seen & (hit.cos >= MIN_SEEN_COS)
    if not bool(clearly.any()):
        return None
    heights = (verts[clearly].double() @ torch.as_tensor(up, device=device)).cpu().numpy()
    return Floor(tuple(float(c) for c in up), float(np.quantile(heights, SEEN_QUANTILE)) - margin)


def worth_cutting(volume: float, volume_above_floor: float) -> bool:
    """Keep the flat base only when it removes at least ``MIN_REMOVED_FRACTION`` of ``volume`` (module docstring)."""
    return volume > 0 and (volume - volume_above_floor) >= MIN_REMOVED_FRACTION * volume
