"""Procedural test objects that are hard for NeuS: thin parts, cavities, limbs and sharp colour patterns.

Each object is an analytic signed distance function (a union / difference of primitives, world
units, z up, inside the unit sphere) plus an albedo function of the world position. The
reference mesh is the marching-cubes surface of that SDF on a fine grid (watertight, no
interior faces, unlike a concatenation of primitives), and :func:`write_object_orbit` renders
the perfect SPEC §8 orbit with :mod:`vfrt.recon.render_mesh`, so every defect of a
reconstruction from it is the reconstruction's own.

* ``chair``: four square legs, side and front rungs (radius 0.016), a seat, a back of two
  posts, a top rail and three slats with gaps; checked seat, striped slats.
* ``mug``: a cylinder with a cavity open at the top (inner radius 0.22, 0.26 deep: from 30
  degrees of elevation the far inner wall shows down to the floor) and a ring handle;
  horizontal colour bands.
* ``toy``: a bear: ellipsoid body, head, ears, snout, four capsule limbs; checked belly,
  dark paws and ears.

The SDFs are exact for the primitives; unions (``min``) and differences (``max(a, -b)``) are
exact outside and a bound inside, which is all marching cubes needs (the zero set is exact).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Field = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- primitives: (N, 3) -> (N,)
def sd_sphere(p: torch.Tensor, centre, radius: float) -> torch.Tensor:
    return (p - p.new_tensor(centre)).norm(dim=-1) - radius


def sd_box(p: torch.Tensor, centre, half_extents, rounding: float = 0.0) -> torch.Tensor:
    """Axis-aligned box (optionally with rounded edges of radius ``rounding``)."""
    q = (p - p.new_tensor(centre)).abs() - (p.new_tensor(half_extents) - rounding)
    outside = q.clamp_min(0.0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp_max(0.0)
    return outside + inside - rounding


def sd_capsule(p: torch.Tensor, a, b, radius: float) -> torch.Tensor:
    """Segment ``a``-``b`` thickened by ``radius``."""
    a_t, b_t = p.new_tensor(a), p.new_tensor(b)
    pa, ba = p - a_t, b_t - a_t
    h = ((pa @ ba) / (ba @ ba)).clamp(0.0, 1.0)
    return (pa - h[:, None] * ba).norm(dim=-1) - radius


def sd_cylinder_z(p: torch.Tensor, centre, radius: float, half_height: float) -> torch.Tensor:
    """Capped cylinder along z."""
    q = p - p.new_tensor(centre)
    d = torch.stack([q[:, :2].norm(dim=-1) - radius, q[:, 2].abs() - half_height], -1)
    return d.clamp_min(0.0).norm(dim=-1) + d.max(dim=-1).values.clamp_max(0.0)


def sd_torus_xz(p: torch.Tensor, centre, major: float, minor: float) -> torch.Tensor:
    """Torus whose ring lies in the x-z plane (axis along y)."""
    q = p - p.new_tensor(centre)
    ring = torch.stack([q[:, [0, 2]].norm(dim=-1) - major, q[:, 1]], -1)
    return ring.norm(dim=-1) - minor


def sd_ellipsoid(p: torch.Tensor, centre, radii) -> torch.Tensor:
    """Ellipsoid (Quilez' bound: exact zero set, approximate distance)."""
    q = p - p.new_tensor(centre)
    r = p.new_tensor(radii)
    k0 = (q / r).norm(dim=-1)
    k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def _union(*ds: torch.Tensor) -> torch.Tensor:
    return torch.stack(ds, 0).min(dim=0).values


def _square_wave(t: torch.Tensor) -> torch.Tensor:
    """1 on even, 0 on odd unit intervals of ``t``."""
    return (torch.floor(t).remainder(2.0) < 1.0).float()


def _mix(mask: torch.Tensor, a, b) -> torch.Tensor:
    """``a`` where ``mask`` is 1, ``b`` where 0: (N,) -> (N, 3)."""
    a_t, b_t = mask.new_tensor(a), mask.new_tensor(b)
    return mask[:, None] * a_t + (1.0 - mask[:, None]) * b_t


# ---------------------------------------------------------------- objects
def _chair_sdf(p: torch.Tensor) -> torch.Tensor:
    leg_h, seat_z, s = 0.19, 0.0, 0.21  # legs from z = -0.4 to the seat; leg centres at +-s
    parts = [sd_box(p, (0.0, 0.0, seat_z), (0.25, 0.25, 0.025), 0.005)]  # seat
    for x in (-s, s):
        for y in (-s, s):
            parts.append(sd_box(p, (x, y, seat_z - 0.025 - leg_h), (0.022, 0.022, leg_h)))  # legs
    z_rung = -0.3
    for x in (-s, s):  # side rungs (along y)
        parts.append(sd_capsule(p, (x, -s, z_rung), (x, s, z_rung), 0.016))
    parts.append(sd_capsule(p, (-s, s, z_rung + 0.08), (s, s, z_rung + 0.08), 0.016))  # front rung
    back_y = -s
    for x in (-s, s):  # back posts continue the back legs up
        parts.append(sd_box(p, (x, back_y, 0.24), (0.022, 0.022, 0.215)))
    parts.append(sd_box(p, (0.0, back_y, 0.42), (0.23, 0.02, 0.035)))  # top rail
    for x in (-0.1, 0.0, 0.1):  # three slats with gaps of ~0.06
        parts.append(sd_box(p, (x, back_y, 0.2), (0.02, 0.012, 0.19)))
    return _union(*parts)


def _chair_albedo(p: torch.Tensor) -> torch.Tensor:
    wood = _mix(_square_wave(p[:, 2] * 30.0), (0.55, 0.33, 0.17), (0.45, 0.26, 0.13))  # fine stripes on the frame
    checks = _square_wave(p[:, 0] * 10.0 + 10.0) != _square_wave(p[:, 1] * 10.0 + 10.0)
    seat = _mix(checks.float(), (0.85, 0.8, 0.65), (0.2, 0.35, 0.6))
    on_seat = ((p[:, 2] > 0.018) & (p[:, 0].abs() < 0.245) & (p[:, 1].abs() < 0.245)).float()
    slat = _mix(_square_wave(p[:, 0] * 10.0 + 0.5), (0.75, 0.15, 0.12), (0.9, 0.85, 0.7))
    on_slat = ((p[:, 1] + 0.21).abs() < 0.03) & (p[:, 2] > 0.02) & (p[:, 2] < 0.385) & (p[:, 0].abs() < 0.15)
    out = torch.where(on_seat[:, None] > 0, seat, wood)
    return torch.where(on_slat[:, None], slat, out)


def _mug_sdf(p: torch.Tensor) -> torch.Tensor:
    body = sd_cylinder_z(p, (0.0, 0.0, -0.05), 0.27, 0.27)
    cavity = sd_cylinder_z(p, (0.0, 0.0, -0.04 + 0.5), 0.22, 0.5)  # floor at z = -0.04, 0.26 deep, open top
    handle = sd_torus_xz(p, (0.3, 0.0, -0.03), 0.13, 0.03)
    handle = torch.maximum(handle, -sd_cylinder_z(p, (0.0, 0.0, -0.05), 0.26, 0.4))  # no handle in the wall
    return torch.maximum(_union(body, handle), -cavity)


def _mug_albedo(p: torch.Tensor) -> torch.Tensor:
    band = torch.floor((p[:, 2] + 0.32) * 14.0).remainder(3.0)
    col = torch.stack([_mix((band == k).float(), c, (0.0, 0.0, 0.0)) for k, c in
                       enumerate([(0.15, 0.3, 0.75), (0.92, 0.92, 0.88), (0.8, 0.2, 0.15)])]).sum(0)
    inside = (p[:, :2].norm(dim=-1) < 0.235) & (p[:, 2] > -0.045)
    return torch.where(inside[:, None], p.new_tensor((0.95, 0.75, 0.35)).expand_as(col), col)


def _toy_sdf(p: torch.Tensor) -> torch.Tensor:
    parts = [
        sd_ellipsoid(p, (0.0, 0.0, -0.1), (0.22, 0.19, 0.26)),  # body
        sd_sphere(p, (0.0, 0.0, 0.27), 0.17),  # head
        sd_sphere(p, (0.11, 0.0, 0.41), 0.06), sd_sphere(p, (-0.11, 0.0, 0.41), 0.06),  # ears
        sd_sphere(p, (0.0, 0.15, 0.24), 0.06),  # snout
        sd_capsule(p, (0.17, 0.02, 0.02), (0.33, 0.14, -0.12), 0.055),  # arms
        sd_capsule(p, (-0.17, 0.02, 0.02), (-0.33, 0.14, -0.12), 0.055),
        sd_capsule(p, (0.11, 0.05, -0.3), (0.15, 0.2, -0.42), 0.065),  # legs
        sd_capsule(p, (-0.11, 0.05, -0.3), (-0.15, 0.2, -0.42), 0.065),
    ]
    return _union(*parts)


def _toy_albedo(p: torch.Tensor) -> torch.Tensor:
    fur = p.new_tensor((0.7, 0.48, 0.28)).expand(p.shape[0], 3)
    checks = (_square_wave(p[:, 0] * 14.0 + 10.0) != _square_wave(p[:, 2] * 14.0 + 10.0)).float()
    belly = _mix(checks, (0.95, 0.88, 0.7), (0.85, 0.3, 0.35))
    on_belly = (p[:, 1] > 0.1) & (p[:, 2] < 0.05) & (p[:, 2] > -0.28) & (p[:, 0].abs() < 0.13)
    dark = ((p[:, 2] > 0.36) | (p[:, 0].abs() > 0.29) | (p[:, 1] > 0.2)) & ~on_belly
    out = torch.where(on_belly[:, None], belly, fur)
    return torch.where(dark[:, None], p.new_tensor((0.25, 0.14, 0.08)).expand_as(out), out)


@dataclass(frozen=True)
class TestObject:
    """A procedural object: SDF and albedo of world positions, and the box that holds it."""

    __test__ = False  # not a pytest class

    name: str
    sdf: Field  # (N, 3) -> (N,)
    albedo: Field  # (N, 3) -> (N, 3) in [0, 1]
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]


OBJECTS: dict[str, TestObject] = {
    "chair": TestObject("chair", _chair_sdf, _chair_albedo, ((-0.28, -0.28, -0.44), (0.28, 0.28, 0.48))),
    "mug": TestObject("mug", _mug_sdf, _mug_albedo, ((-0.3, -0.3, -0.35), (0.49, 0.3, 0.25))),
    "toy": TestObject("toy", _toy_sdf, _toy_albedo, ((-0.42, -0.25, -0.52), (0.42, 0.3, 0.5))),
}


def get_object(name: str) -> TestObject:
    if name not in OBJECTS:
        raise ValueError(f"unknown test object {name!r}; choose one of {', '.join(OBJECTS)}")
    return OBJECTS[name]


@torch.no_grad()
def reference_mesh(obj: TestObject, spacing: float = 0.004, device: str | torch.device = "cpu"):
    """Watertight ``trimesh.Trimesh`` of the object's zero level set, outward normals (positive volume)."""
    import trimesh
    from skimage import measure

    lo = np.asarray(obj.bounds[0]) - 2 * spacing
    hi = np.asarray(obj.bounds[1]) + 2 * spacing
    axes = [torch.arange(a, b + spacing, spacing, dtype=torch.float32) for a, b in zip(lo, hi)]
    shape = tuple(len(a) for a in axes)
    vol = np.empty(shape, np.float32)
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2).to(device)
    for i, x in enumerate(axes[0].tolist()):
        pts = torch.cat([torch.full((yz.shape[0], 1), x, device=device), yz], -1)
        vol[i] = obj.sdf(pts).reshape(shape[1], shape[2]).cpu().numpy()
    verts, faces, _, _ = measure.marching_cubes(vol, 0.0, spacing=(spacing,) * 3)
    mesh = trimesh.Trimesh(verts + lo, faces, process=True)
    if mesh.volume < 0:  # skimage's winding: keep the normals pointing out whatever its version does
        mesh.invert()
    return mesh


def write_object_orbit(out_dir: str | Path, name: str, n_views: int = 36, image_size: int = 256,
                       elevation_deg: float = 30.0, spacing: float = 0.004, device: str = "cpu",
                       low_ring: tuple[float, int] | None = None) -> Path:
    """Render test object ``name`` into a perfect orbit folder (views, transforms.json, reference.ply);
    ``low_ring``: ``(elevation_deg, n_views)`` of a second ring (:func:`vfrt.recon.render_mesh.write_orbit`)."""
    from vfrt.recon.render_mesh import write_orbit

    obj = get_object(name)
    return write_orbit(out_dir, reference_mesh(obj, spacing, device), n_views, image_size, elevation_deg, device,
                       albedo=obj.albedo, low_ring=low_ring)

