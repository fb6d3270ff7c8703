"""Camera maths of SPEC §8 and transforms.json writing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vfrt.recon.rays import pixel_rays
from vfrt.runtime.cameras import (Intrinsics, camera_to_world_opengl, opengl_to_opencv_c2w, orbit_world_to_camera,
                                  world_to_camera, write_transforms_json)


@pytest.mark.parametrize("az,el", [(0.0, 30.0), (90.0, 30.0), (200.0, -10.0), (45.0, 60.0)])
def test_world_to_camera_rows_and_centre(az, el):
    a, e = math.radians(az), math.radians(el)
    w2c = world_to_camera(a, e)
    r = w2c[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(r[0], [-math.sin(a), math.cos(a), 0.0], atol=1e-12)
    np.testing.assert_allclose(r[1], [math.sin(e) * math.cos(a), math.sin(e) * math.sin(a), -math.cos(e)], atol=1e-12)
    centre = -r.T @ w2c[:3, 3]
    np.testing.assert_allclose(centre, 1.5 * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]),
                               atol=1e-12)
    # world z (up) maps to image "up" (negative y in OpenCV) when the camera is above the horizon
    assert (r @ [0, 0, 1])[1] < 0


def test_object_centre_lands_on_pixel_128():
    k = Intrinsics.default(256)
    assert (k.fx, k.cx) == (280.0, 128.5)
    c2w = torch.as_tensor(np.linalg.inv(orbit_world_to_camera(4, 30.0)), dtype=torch.float32)
    o, d = pixel_rays(c2w, k)
    # the ray of integer pixel (u, v) = (128, 128) passes through the origin
    ray_o, ray_d = o[:, 128, 128].double(), d[:, 128, 128].double()
    t = -(ray_o * ray_d).sum(-1, keepdim=True)
    closest = ray_o + t * ray_d
    assert closest.norm(dim=-1).max() < 1e-5


def test_write_transforms_json_roundtrip(tmp_path):
    path = write_transforms_json(tmp_path / "transforms.json", 8, 20.0)
    meta = json.loads(path.read_text())
    assert meta["fl_x"] == 280.0 and meta["cx"] == 128.5 and meta["w"] == 256
    assert [f["file_path"] for f in meta["frames"]] == [f"views/{i:03d}.png" for i in range(8)]
    w2c = orbit_world_to_camera(8, 20.0)
    for f, m in zip(meta["frames"], w2c):
        gl = np.asarray(f["transform_matrix"])
        np.testing.assert_allclose(gl, camera_to_world_opengl(m), atol=1e-12)
        np.testing.assert_allclose(opengl_to_opencv_c2w(gl), np.linalg.inv(m), atol=1e-12)
    assert meta["frames"][1]["azimuth_deg"] == pytest.approx(45.0)


def test_write_transforms_json_validates_names(tmp_path):
    with pytest.raises(ValueError, match="image names"):
        write_transforms_json(tmp_path, 3, 30.0, ["a.png"])
