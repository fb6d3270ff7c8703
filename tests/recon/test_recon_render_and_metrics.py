"""CPU rasteriser (exact cameras) and mesh metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from vfrt.runtime.cameras import Intrinsics, world_to_camera
from vfrt.recon.metrics import evaluate_mesh, normalise_mesh
from vfrt.recon.render_mesh import rasterize


def test_rasterised_sphere_matches_projection():
    r = 0.5
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=r)
    k = Intrinsics.default(128)
    w2c = torch.as_tensor(world_to_camera(0.3, math.radians(30)), dtype=torch.float32)
    frag = rasterize(torch.as_tensor(np.array(sphere.vertices), dtype=torch.float32),
                     torch.as_tensor(np.array(sphere.faces)), w2c, k)
    # silhouette of a sphere at distance d: a disc of angular radius asin(r/d)
    rad_px = k.fx * math.tan(math.asin(r / 1.5))
    assert frag.mask.sum().item() == pytest.approx(math.pi * rad_px**2, rel=0.03)
    # centre pixel (integer coords 64, 64 at 128 px) sees the sphere front at depth d - r
    assert frag.depth[64, 64].item() == pytest.approx(1.5 - r, abs=2e-3)
    ys, xs = torch.nonzero(frag.mask, as_tuple=True)
    assert abs(xs.float().mean().item() - 64.0) < 0.5 and abs(ys.float().mean().item() - 64.0) < 0.5


def test_metrics_identity_and_normalisation():
    a = trimesh.creation.capsule(height=0.5, radius=0.25)
    b = a.copy()
    b.apply_scale(2.7)
    b.apply_translation([3.0, -1.0, 0.5])
    m = evaluate_mesh(b, a, n_samples=20_000)
    assert m.chamfer < 0.01 and m.fscore > 0.95
    n = normalise_mesh(b)
    assert max(n.extents) == pytest.approx(1.6)
    np.testing.assert_allclose(n.bounds.mean(0), 0, atol=1e-9)


def test_metrics_different_shapes():
    m = evaluate_mesh(trimesh.creation.box(extents=[1, 1, 1]), trimesh.creation.icosphere(radius=1), n_samples=20_000)
    assert m.chamfer > 0.05 and m.fscore < 0.5
    assert "not squared" in m.definition


def test_eval_mesh_cli(tmp_path):
    from click.testing import CliRunner

    from vfrt.cli.recon import eval_mesh

    trimesh.creation.icosphere(radius=1).export(tmp_path / "a.ply")
    trimesh.creation.icosphere(radius=2).export(tmp_path / "b.obj")
    res = CliRunner().invoke(eval_mesh, [str(tmp_path / "a.ply"), str(tmp_path / "b.obj"), "--samples", "5000",
                                         "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "chamfer" in res.output and (tmp_path / "m.json").exists()
    res = CliRunner().invoke(eval_mesh, [str(tmp_path / "a.ply"), str(tmp_path / "missing.ply")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("shape", ["capsule", "torus", "box", "sphere"])
def test_demo_shapes_stay_inside_the_frame(shape):
    from vfrt.runtime.cameras import orbit_world_to_camera
    from vfrt.recon.render_mesh import demo_mesh, render_views

    alpha = render_views(demo_mesh(shape), orbit_world_to_camera(8, 30.0), Intrinsics.default(64))[..., 3]
    border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
    assert border.max() == 0 and alpha.mean() > 0.05


@pytest.mark.parametrize("name", ["chair", "mug", "toy"])
def test_test_objects_are_closed_outward_and_in_frame(name):
    from vfrt.runtime.cameras import orbit_world_to_camera
    from vfrt.recon.render_mesh import render_views
    from vfrt.recon.testobjects import get_object, reference_mesh

    obj = get_object(name)
    mesh = reference_mesh(obj, spacing=0.02)
    assert mesh.volume > 0
    lo, hi = mesh.bounds
    assert (lo >= np.asarray(obj.bounds[0]) - 0.03).all() and (hi <= np.asarray(obj.bounds[1]) + 0.03).all()
    rgba = render_views(mesh, orbit_world_to_camera(8, 30.0), Intrinsics.default(48), albedo=obj.albedo)
    alpha = rgba[..., 3]
    border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
    assert border.max() == 0 and alpha.mean() > 0.03
    colours = rgba[..., :3][alpha > 0]
    assert colours.std(0).min() > 0.05  # patterned, not flat


def test_mug_has_an_open_cavity():
    import torch

    from vfrt.recon.testobjects import get_object

    sdf = get_object("mug").sdf
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -0.29], [0.245, 0.0, 0.0], [0.3, 0.0, -0.03 + 0.13]])
    inside = (sdf(pts) < 0).tolist()
    assert inside == [False, True, True, True]  # cavity air, floor, wall, handle top


def test_orbit_with_a_low_ring_is_one_folder_the_loader_reads(tmp_path):
    """``low_ring`` adds a second ring of views (here from below) to the same transforms.json."""
    from vfrt.recon.data import load_views
    from vfrt.recon.render_mesh import demo_mesh, write_orbit

    out = write_orbit(tmp_path / "o", demo_mesh("sphere"), n_views=6, image_size=32, elevation_deg=30.0,
                      low_ring=(-15.0, 4))
    assert len(list((out / "views").glob("low_*.png"))) == 4 and len(list((out / "views").glob("*.png"))) == 10
    data = load_views(out)
    assert data.n_views == 10
    heights = data.c2w[:, 2, 3] / np.linalg.norm(data.c2w[:, :3, 3], axis=1)      # sin(elevation) of each camera
    assert heights[:6] == pytest.approx([0.5] * 6, abs=1e-5)
    assert heights[6:] == pytest.approx([math.sin(math.radians(-15.0))] * 4, abs=1e-5)
