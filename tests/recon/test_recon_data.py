"""Loading views: both input kinds, masks, and every bad-input error."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vfrt.runtime.cameras import orbit_world_to_camera
from vfrt.recon.data import load_views, mask_from_white_background
from vfrt.recon.errors import InputDataError


def test_transforms_folder_loads(tiny_orbit):
    data = load_views(tiny_orbit)
    assert data.n_views == 8 and data.images.shape == (8, 48, 48, 3) and data.source == "transforms.json"
    np.testing.assert_allclose(data.c2w, np.linalg.inv(orbit_world_to_camera(8, 30.0)), atol=1e-5)
    assert data.intrinsics.fx == pytest.approx(280 * 48 / 256)
    fg = data.masks.mean()
    assert 0.05 < fg < 0.6
    # background composited over white
    assert data.images[data.masks == 0].min() > 0.99


def test_images_only_folder_gets_default_orbit(tiny_orbit, tmp_path):
    for f in sorted((tiny_orbit / "views").iterdir()):
        rgba = np.asarray(Image.open(f), dtype=np.float32) / 255
        rgb = rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]
        Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(tmp_path / f.name)  # RGB, white background
    data = load_views(tmp_path, elevation_deg=30.0)
    ref = load_views(tiny_orbit)
    assert data.source == "default-orbit"
    np.testing.assert_allclose(data.c2w, ref.c2w, atol=1e-5)
    agree = (data.masks == (ref.masks > 0.5)).mean()
    assert agree > 0.97  # white-background masks vs alpha masks


def test_white_mask_keeps_enclosed_white():
    rgb = np.ones((20, 20, 3), np.float32)
    rgb[5:15, 5:15] = 0.2
    rgb[8:12, 8:12] = 1.0  # white inside the object stays foreground
    m = mask_from_white_background(rgb)
    assert m[10, 10] and not m[0, 0] and m.sum() == 100


def test_resize(tiny_orbit):
    data = load_views(tiny_orbit, image_size=24)
    assert data.images.shape == (8, 24, 24, 3) and data.intrinsics.width == 24
    assert data.intrinsics.cx == pytest.approx(128.5 * 24 / 256)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_too_few_views(tiny_orbit, tmp_path):
    d = _copy(tiny_orbit, tmp_path / "o")
    meta = json.loads((d / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:3]
    (d / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="only 3 view"):
        load_views(d)


def test_missing_image_file(tiny_orbit, tmp_path):
    d = _copy(tiny_orbit, tmp_path / "o")
    (d / "views" / "003.png").unlink()
    with pytest.raises(InputDataError, match="views/003.png.*does not exist"):
        load_views(d)


def test_missing_camera_fields(tiny_orbit, tmp_path):
    d = _copy(tiny_orbit, tmp_path / "o")
    meta = json.loads((d / "transforms.json").read_text())
    del meta["frames"][2]["transform_matrix"]
    (d / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="frame 2 lacks"):
        load_views(d)
    meta = json.loads((tiny_orbit / "transforms.json").read_text())
    del meta["fl_x"]
    (d / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="no focal length"):
        load_views(d)


def test_inconsistent_sizes(tiny_orbit, tmp_path):
    d = _copy(tiny_orbit, tmp_path / "o")
    Image.open(d / "views" / "001.png").resize((40, 40)).save(d / "views" / "001.png")
    with pytest.raises(InputDataError, match="inconsistent sizes"):
        load_views(d)


def test_all_white_images(tmp_path):
    for i in range(6):
        Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / f"{i:03d}.png")
    with pytest.raises(InputDataError, match="no foreground"):
        load_views(tmp_path)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(InputDataError, match="no images"):
        load_views(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        load_views(tmp_path / "nope")


def test_unfinished_orbit_uses_its_cameras_json(tiny_orbit, tmp_path):
    """`vfrt run --generate K` writes cameras.json (no transforms.json): its poses are used, not a guess."""
    import math

    from vfrt.runtime.cameras import Intrinsics, world_to_camera

    d = tmp_path / "run"
    (d / "views").mkdir(parents=True)
    k = Intrinsics.default(48)
    views = []
    for i in range(6):  # views 0-5 of an 8-view orbit: azimuths 0..225, not 0..300
        shutil.copy(tiny_orbit / "views" / f"{i:03d}.png", d / "views" / f"{i:03d}.png")
        views.append({"file": f"views/{i:03d}.png", "azimuth_deg": 45.0 * i, "elevation_deg": 30.0,
                      "world_to_camera_opencv": world_to_camera(math.radians(45.0 * i), math.radians(30.0)).tolist()})
    (d / "cameras.json").write_text(json.dumps({
        "K": [[k.fx, 0.0, k.cx - 0.5], [0.0, k.fy, k.cy - 0.5], [0.0, 0.0, 1.0]], "width": 48, "height": 48,
        "views": views}))
    data = load_views(d)
    ref = load_views(tiny_orbit)
    assert data.source == "cameras.json" and data.n_views == 6
    np.testing.assert_allclose(data.c2w, ref.c2w[:6], atol=1e-5)
    assert (data.intrinsics.fx, data.intrinsics.cx) == pytest.approx((ref.intrinsics.fx, ref.intrinsics.cx))
    views[2]["world_to_camera_opencv"] = [[1.0, 0.0], [0.0, 1.0]]
    (d / "cameras.json").write_text(json.dumps({"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "views": views}))
    with pytest.raises(InputDataError, match="view 2 world_to_camera_opencv is not a finite 4x4"):
        load_views(d)


def test_input_notes_say_how_the_folder_is_read(tiny_orbit, tmp_path):
    from vfrt.recon.data import input_layout, input_notes

    assert input_notes(tiny_orbit, input_layout(tiny_orbit), 8, 30.0) == ()
    d = _copy(tiny_orbit, tmp_path / "o")
    meta = json.loads((d / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:5]
    (d / "transforms.json").write_text(json.dumps(meta))
    data = load_views(d)
    assert data.n_views == 5 and "lists 5 frames but the folder holds 8 images" in data.notes[0]
    (d / "transforms.json").unlink()
    data = load_views(d, elevation_deg=20.0)
    assert data.source == "default-orbit" and "elevation 20 degrees" in data.notes[0]


def test_a_file_is_not_a_folder(tiny_orbit):
    with pytest.raises(InputDataError, match="is a file"):
        load_views(tiny_orbit / "transforms.json")
