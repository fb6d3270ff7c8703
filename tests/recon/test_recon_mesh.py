"""Mesh extraction: outward orientation in every format, object-scaled grid, components, visual hull."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from vfrt.recon.errors import EmptySurfaceError
from vfrt.recon.mesh import MESH_FORMATS, drop_small_components, export_mesh, extract_mesh, orient_outward
from vfrt.recon.testobjects import sd_box, sd_sphere


class AnalyticSDF(torch.nn.Module):
    """Stands in for the trained SDF network: ``sdf(x (N, 3)) -> (N,)``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _fields(fn):
    return SimpleNamespace(sdf=AnalyticSDF(fn))


SHAPES = {
    "sphere": (lambda p: sd_sphere(p, (0.1, -0.05, 0.0), 0.5), 4.0 / 3.0 * math.pi * 0.5**3, (0.1, -0.05, 0.0)),
    "box": (lambda p: sd_box(p, (0.0, 0.0, 0.0), (0.4, 0.3, 0.2)), 0.8 * 0.6 * 0.4, (0.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_extracted_mesh_faces_outward_in_every_format(shape, tmp_path):
    fn, volume, centre = SHAPES[shape]
    mesh = extract_mesh(_fields(fn), torch.device("cpu"), resolution=48)
    assert mesh.volume == pytest.approx(volume, rel=0.06)
    # convex, around `centre`: every outward normal has a positive component along p - centre
    outward = np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices - np.asarray(centre))
    assert (outward > 0).mean() > 0.99
    mesh.visual.vertex_colors = np.tile([200, 100, 50, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    paths = export_mesh(mesh, tmp_path)
    assert sorted(paths) == sorted(MESH_FORMATS)
    for fmt, path in paths.items():
        back = trimesh.load(path, force="mesh")
        assert back.volume == pytest.approx(mesh.volume, rel=1e-3), fmt
        normals = back.vertex_normals
        assert (np.einsum("ij,ij->i", normals, back.vertices - np.asarray(centre)) > 0).mean() > 0.99, fmt


def test_orientation_fixes_inward_winding():
    fn, _, _ = SHAPES["sphere"]
    mesh = extract_mesh(_fields(fn), torch.device("cpu"), resolution=32)
    r = 32
    t = np.linspace(-1, 1, r)
    vol = fn(torch.as_tensor(np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3),
                             dtype=torch.float32)).reshape(r, r, r).numpy()
    step = np.full(3, 2.0 / (r - 1))
    flipped = np.asarray(mesh.faces)[:, ::-1]
    fixed = orient_outward(np.asarray(mesh.vertices), flipped, vol, np.full(3, -1.0), step)
    assert np.array_equal(fixed, np.asarray(mesh.faces))
    assert np.array_equal(orient_outward(np.asarray(mesh.vertices), np.asarray(mesh.faces), vol, np.full(3, -1.0),
                                         step), np.asarray(mesh.faces))


def test_grid_scales_with_the_object():
    small = lambda p: sd_sphere(p, (0.0, 0.0, 0.0), 0.1)  # noqa: E731
    mesh = extract_mesh(_fields(small), torch.device("cpu"), resolution=32)
    # 32 samples across the sphere's box (plus a margin), not across [-1, 1]^3 (cells of 2/31)
    edge = np.linalg.norm(mesh.vertices[mesh.edges_unique[:, 0]] - mesh.vertices[mesh.edges_unique[:, 1]], axis=1)
    assert np.median(edge) < 0.25 * 2.0 / 31
    assert mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * 0.1**3, rel=0.05)


def test_small_components_dropped_thin_parts_kept():
    big = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    rung = trimesh.creation.cylinder(radius=0.02, height=0.6, sections=32)  # 128 faces: 2.5 % of the sphere
    rung.apply_translation([0.8, 0.0, 0.0])
    floater = trimesh.creation.icosphere(subdivisions=0, radius=0.02)
    floater.apply_translation([0.0, 0.9, 0.0])
    kept = drop_small_components(trimesh.util.concatenate([big, rung, floater]), 0.01)  # floater: 0.4 %
    assert len(kept.faces) == len(big.faces) + len(rung.faces)


def test_no_surface_is_an_error():
    with pytest.raises(EmptySurfaceError, match="no zero crossing"):
        extract_mesh(_fields(lambda p: p.norm(dim=-1) + 1.0), torch.device("cpu"), resolution=16)
    with pytest.raises(EmptySurfaceError, match="non-finite"):
        extract_mesh(_fields(lambda p: p[:, 0] * float("nan")), torch.device("cpu"), resolution=16)


def test_visual_hull_bounds_the_object_and_the_rays(tiny_orbit):
    from vfrt.recon.data import load_views
    from vfrt.recon.hull import carve_hull
    from vfrt.recon.rays import pixel_rays
    from vfrt.recon.render_mesh import demo_mesh
    from vfrt.recon.renderer import near_far_from_sphere

    data = load_views(tiny_orbit)
    hull = carve_hull(data, 32, 0.1, torch.device("cpu"))
    ref = demo_mesh("capsule")
    surface = torch.as_tensor(ref.sample(2000, seed=0) if "seed" in ref.sample.__code__.co_varnames
                              else ref.sample(2000), dtype=torch.float32)
    assert bool(hull.contains(surface).all())  # conservative: the object is inside
    corners = torch.tensor([[0.9, 0.9, 0.9], [-0.9, 0.9, -0.9], [0.0, 0.0, 0.0]])
    assert hull.contains(corners).tolist() == [False, False, True]
    assert 0.02 < float(hull.occupied.float().mean()) < 0.3
    o, d = pixel_rays(torch.as_tensor(data.c2w[:1]), data.intrinsics)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    near, far = near_far_from_sphere(o, d)
    n2, f2 = hull.ray_intervals(o, d, near, far)
    assert bool((n2 >= near - 1e-6).all() and (f2 <= far + 1e-6).all())
    fg = torch.as_tensor(data.masks[0].reshape(-1) > 0.5)
    assert float((f2 - n2)[fg].mean()) < 0.6 * float((far - near)[fg].mean())  # samples concentrate on the object
