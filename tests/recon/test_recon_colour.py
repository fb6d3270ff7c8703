"""Mesh colours: baked from the views by visibility, from the field along the true view directions,
as a UV texture; the colour PSNR metric."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from vfrt.recon.bake import bake_texture, bake_vertex_colours, visible_colours
from vfrt.recon.data import load_views
from vfrt.recon.metrics import colour_psnr
from vfrt.recon.render_mesh import procedural_albedo, shade, write_orbit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sphere_orbit(tmp_path_factory):
    """12 views (64 px) of a sphere with the smooth procedural albedo, Lambert-shaded."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    folder = write_orbit(tmp_path_factory.mktemp("sphere"), mesh, n_views=12, image_size=64)
    return mesh, load_views(folder)


class StubSDF(torch.nn.Module):
    """A sphere of radius 0.5 with the interface of the SDF network (feature: 1 zero channel)."""

    def forward_with_gradient(self, x):
        n = x / x.norm(dim=-1, keepdim=True)
        return x.norm(dim=-1) - 0.5, x.new_zeros(x.shape[0], 1), n


def _stub_fields(record: list | None = None):
    def colour(x, normal, view_dir, feature):
        if record is not None:
            record.append((x.clone(), view_dir.clone()))
        return shade(normal, procedural_albedo(x))  # what the views show: view-independent Lambert

    return SimpleNamespace(sdf=StubSDF(), color=colour)


def _with_colours(mesh, cols):
    m = mesh.copy()
    m.visual.vertex_colors = np.concatenate([np.clip(cols * 255 + 0.5, 0, 255), np.full((len(cols), 1), 255)],
                                            1).astype(np.uint8)
    return m


def test_colours_baked_from_views_match_the_views(sphere_orbit):
    mesh, data = sphere_orbit
    cols = bake_vertex_colours(mesh, data, _stub_fields(), CPU, "views")
    truth = shade(torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32),
                  procedural_albedo(torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32))).numpy()
    seen = np.asarray(mesh.vertices)[:, 2] > -0.3  # the orbit at 30 degrees does not see under the sphere
    assert np.abs(cols[seen] - truth[seen]).mean() < 0.02
    score = colour_psnr(_with_colours(mesh, cols), data)
    assert score.psnr >= 25.0 and score.psnr_full > score.psnr
    assert score.psnr_shared >= score.psnr and 0.0 <= score.silhouette_error_share < 0.5
    grey = colour_psnr(_with_colours(mesh, np.full_like(cols, 0.5)), data)
    assert grey.psnr < score.psnr - 5.0  # the metric notices wrong colours
    assert grey.silhouette_error_share < 0.2  # ... and that they are wrong where the shapes agree
    shrunk = _with_colours(mesh, cols)
    shrunk.vertices = np.asarray(shrunk.vertices) * 0.9
    small = colour_psnr(shrunk, data)  # a shape error: most of the error is on the ring the mesh no longer covers
    assert small.silhouette_error_share > 0.5 and small.psnr_shared > small.psnr + 3.0


def test_field_colours_use_the_true_view_directions(sphere_orbit):
    mesh, data = sphere_orbit
    record: list = []
    cols = bake_vertex_colours(mesh, data, _stub_fields(record), CPU, "field")
    assert colour_psnr(_with_colours(mesh, cols), data).psnr >= 25.0
    # every query of a visible point looks from a camera centre, through the point, into the surface
    # (unseen points are asked for their frontal colour, d = -n: left out here)
    centres = torch.as_tensor(data.c2w[:, :3, 3])
    x, d = torch.cat([r[0] for r in record]), torch.cat([r[1] for r in record])
    frontal = ((x / x.norm(dim=-1, keepdim=True)) + d).norm(dim=-1) < 0.02  # mesh normals ~ x / |x|
    assert 0 < int(frontal.sum()) < 0.3 * len(mesh.vertices)
    x, d = x[~frontal], d[~frontal]
    to_point = torch.nn.functional.normalize(x[:, None] - centres[None], dim=-1)  # (M, N, 3)
    best = (to_point * d[:, None]).sum(-1).max(dim=1).values
    assert float(best.min()) > 1 - 1e-4
    assert float(((x / x.norm(dim=-1, keepdim=True)) * d).sum(-1).max()) <= 0.0 + 1e-4  # d . n <= 0


def test_occluded_points_take_no_colour_from_the_occluder(sphere_orbit):
    _, data = sphere_orbit
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = torch.as_tensor(np.array(sphere.vertices), dtype=torch.float32)
    f = torch.as_tensor(np.array(sphere.faces), dtype=torch.int64)
    centre = torch.tensor([[0.0, 0.0, 0.0]])  # inside the sphere: hidden from every view
    _, weight = visible_colours(centre, torch.tensor([[0.0, 0.0, 1.0]]), v, f, data)
    assert float(weight[0]) == 0.0


def test_uv_texture_bake_and_glb(sphere_orbit, tmp_path):
    pytest.importorskip("xatlas")
    mesh, data = sphere_orbit
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    textured = bake_texture(small, data, _stub_fields(), CPU, size=128)
    assert textured.visual.uv.shape == (len(textured.vertices), 2)
    score = colour_psnr(textured, data)
    vertex = colour_psnr(_with_colours(small, bake_vertex_colours(small, data, _stub_fields(), CPU)), data)
    assert score.psnr >= 25.0 and score.psnr > vertex.psnr  # the texture holds detail between vertices
    textured.export(tmp_path / "mesh.glb")
    back = trimesh.load(tmp_path / "mesh.glb", force="mesh")
    assert back.visual.kind == "texture" and back.volume > 0
    assert colour_psnr(back, data).psnr == pytest.approx(score.psnr, abs=0.5)  # survives the .glb round trip
