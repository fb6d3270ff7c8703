"""The flat base (vfrt/recon/ground.py): what no view sees under an object is cut off flat."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vfrt.recon.data import ReconData
from vfrt.recon.ground import Floor, find_floor, up_direction, worth_cutting
from vfrt.recon.mesh import mesh_from_grid, surface_grid
from vfrt.recon.testobjects import sd_cylinder_z, sd_sphere
from vfrt.runtime.cameras import Intrinsics, orbit_world_to_camera

CPU = torch.device("cpu")
RADIUS, HALF, BOTTOM = 0.3, 0.2, -0.2          # the visible cylinder: z in [-0.2, 0.2]
BLOB = ((0.0, 0.0, -0.25), 0.15)                  # under its base: hidden from an orbit 30 degrees above


class _SDF(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def sdf(self, x):
        return self.fn(x)


def _cylinder_with_blob(p: torch.Tensor) -> torch.Tensor:
    return torch.minimum(sd_cylinder_z(p, (0.0, 0.0, 0.0), RADIUS, HALF), sd_sphere(p, *BLOB))


def _views(elevation_deg: float, n: int = 12, size: int = 64) -> ReconData:
    """Cameras only (all-foreground masks): visibility then depends on facing and occlusion."""
    c2w = np.linalg.inv(orbit_world_to_camera(n, elevation_deg)).astype(np.float32)
    return ReconData(np.zeros((n, size, size, 3), np.float32), np.ones((n, size, size), np.float32), c2w,
                     Intrinsics.default(size), tuple(f"{i}.png" for i in range(n)), "test")


def test_up_is_the_side_the_cameras_look_from():
    assert up_direction(_views(30.0).c2w) == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    assert up_direction(_views(-30.0).c2w) == pytest.approx([0.0, 0.0, -1.0], abs=1e-6)
    assert up_direction(_views(0.0).c2w) is None      # an orbit at the horizon sees as much from below


def test_hidden_blob_under_the_base_is_cut_off_flat():
    grid = surface_grid(SimpleNamespace(sdf=_SDF(_cylinder_with_blob)), CPU, resolution=72)
    mesh = mesh_from_grid(grid)
    cylinder = math.pi * RADIUS**2 * 2 * HALF
    cap_h = BLOB[1] - (BLOB[0][2] - BOTTOM)                       # the blob's part below the base
    blob = math.pi * (BLOB[1] + BOTTOM - BLOB[0][2]) ** 2 * (3 * BLOB[1] - cap_h) / 3
    assert mesh.volume == pytest.approx(cylinder + blob, rel=0.03)
    floor = find_floor(mesh, _views(30.0), CPU, margin=grid.step)
    assert floor is not None and floor.up == pytest.approx((0.0, 0.0, 1.0))
    assert floor.height == pytest.approx(BOTTOM, abs=2.5 * grid.step)   # the base's edge, seen from the side
    flat = mesh_from_grid(grid, floor=floor)
    assert grid.inside_volume() == pytest.approx(mesh.volume, rel=0.03)          # the grid's estimate
    assert grid.inside_volume(below=floor) == pytest.approx(mesh.volume - flat.volume, rel=0.2, abs=1e-3)
    assert worth_cutting(grid.inside_volume(), grid.inside_volume() - grid.inside_volume(below=floor))
    assert flat.volume == pytest.approx(cylinder, rel=0.015)
    assert flat.bounds[0][2] == pytest.approx(BOTTOM, abs=1.5 * grid.step)
    assert flat.volume > 0 and flat.is_watertight


def test_nothing_is_cut_when_the_views_see_the_underside():
    """An orbit from below sees the blob: its lowest seen point is the blob's bottom."""
    grid = surface_grid(SimpleNamespace(sdf=_SDF(_cylinder_with_blob)), CPU, resolution=72)
    mesh = mesh_from_grid(grid)
    floor = find_floor(mesh, _views(-30.0), CPU, margin=grid.step)       # up = -z: the "floor" is the top, seen from below
    assert floor is not None
    assert mesh_from_grid(grid, floor=floor).volume == pytest.approx(mesh.volume, rel=0.01)
    assert find_floor(mesh, _views(0.0), CPU) is None


def test_grid_heights_above_a_tilted_floor():
    from vfrt.recon.mesh import SurfaceGrid

    up = np.array([0.3, -0.4, 0.866])
    floor = Floor(tuple(up / np.linalg.norm(up)), -0.1)
    grid = SurfaceGrid(np.zeros((4, 5, 6), np.float32), np.array([-0.5, -0.2, 0.1]), 0.07)
    axes = [grid.lo[k] + grid.step * np.arange(n) for k, n in enumerate(grid.values.shape)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    assert grid.heights_above(floor) == pytest.approx(floor.signed_height(points), abs=1e-6)


def test_only_a_sizeable_hidden_part_is_cut():
    assert worth_cutting(1.0, 0.9) and worth_cutting(1.0, 0.99)
    assert not worth_cutting(1.0, 0.995) and not worth_cutting(0.0, 0.0)
