"""`vfrt recon` command line: value errors exit 2 before any work, input kinds, output location."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from vfrt.cli.recon import recon

FAST = ["--preset", "quick", "--steps", "2", "--image-size", "16", "--mc-resolution", "16", "--no-turntable",
        "--grid-levels", "3", "--grid-log2-table", "10", "--grid-finest", "32"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: these errors must come before any heavy work."""
    import vfrt.recon.pipeline as pipeline

    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "train_neus", boom)


def _invoke(*args):
    return CliRunner().invoke(recon, [str(a) for a in args])


def _assert_usage_error(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)


def test_missing_input_and_file_input(tmp_path, no_training):
    _assert_usage_error(_invoke(tmp_path / "missing"), "does not exist")
    f = tmp_path / "views.png"
    f.write_bytes(b"x")
    _assert_usage_error(_invoke(f), "is a file", "folder that holds the views")


def test_unwritable_output_fails_before_training(tiny_orbit, tmp_path, no_training):
    _assert_usage_error(_invoke(tiny_orbit, "-o", "/proc/x"), "cannot write")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_usage_error(_invoke(tiny_orbit, "-o", blocker), "is a file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    _assert_usage_error(_invoke(tiny_orbit, "-o", other), "not empty")


def test_bad_values_exit_2(tiny_orbit, tmp_path, no_training):
    out = ["-o", tmp_path / "o"]
    _assert_usage_error(_invoke(tiny_orbit, *out, "--device", "gpu"), "auto, cpu, cuda or cuda:N")
    _assert_usage_error(_invoke(tiny_orbit, *out, "--steps", "0"), "--steps")
    _assert_usage_error(_invoke(tiny_orbit, *out, "--elevation", "90"), "--elevation")
    _assert_usage_error(_invoke(tiny_orbit, *out, "--texture-size", "10"), "texture_size")
    _assert_usage_error(_invoke(tiny_orbit, *out, "--grid-levels", "4", "--grid-finest", "2"), "base_resolution")
    if not torch.cuda.is_available():
        _assert_usage_error(_invoke(tiny_orbit, *out, "--device", "cuda:0"), "no CUDA GPU")
        _assert_usage_error(_invoke(tiny_orbit, *out, "--backend", "tcnn"), "tinycudann")


def test_single_target_run_folder_is_refused(tiny_orbit, tmp_path, no_training):
    run = tmp_path / "single"
    (run / "views").mkdir(parents=True)
    shutil.copy(tiny_orbit / "views" / "000.png", run / "views" / "input.png")
    views = []
    for i in range(8):
        shutil.copy(tiny_orbit / "views" / f"{i:03d}.png", run / "views" / f"step_{i + 1:02d}.png")
        views.append({"file": f"views/step_{i + 1:02d}.png", "delta_polar_deg": 0.0,
                      "delta_azimuth_deg": 65.0 * (i + 1) / 8, "delta_radius": 0.0})
    (run / "cameras.json").write_text(json.dumps({"convention": "pose deltas", "views": views}))
    _assert_usage_error(_invoke(run), "single-target", "not a 360-degree orbit", "0 to 65")


def test_default_output_goes_next_to_the_views(tiny_orbit, tmp_path, monkeypatch):
    src = tmp_path / "run"
    shutil.copytree(tiny_orbit, src)
    monkeypatch.chdir(tmp_path)
    res = _invoke(src, *FAST)
    assert res.exit_code == 0, res.output
    assert (src / "recon" / "mesh.glb").is_file() and (src / "recon" / "recon.json").is_file()
    assert not (tmp_path / "recon_run").exists()
    res = _invoke(src, *FAST)  # a second run replaces the earlier reconstruction
    assert res.exit_code == 0, res.output
    assert not list(tmp_path.glob("run/.recon*"))  # no temporary folders left


def test_views_from_one_side_are_announced_with_what_they_cannot_show(tiny_orbit, tmp_path):
    """An orbit from above (the tiny orbit: 30 degrees) is told what it cannot show; a ring at the horizon,
    whose cameras surround the object, is not."""
    from vfrt.recon.render_mesh import demo_mesh, write_orbit

    res = _invoke(tiny_orbit, "-o", tmp_path / "above", *FAST)
    assert res.exit_code == 0, res.output
    assert "all 8 views look at the object from above" in res.output and "--low-ring 12" in res.output
    assert any("from above" in n for n in json.loads((tmp_path / "above" / "recon.json").read_text())["notes"])
    ring = write_orbit(tmp_path / "ring", demo_mesh("capsule"), n_views=8, image_size=48, elevation_deg=0.0)
    res = _invoke(ring, "-o", tmp_path / "around", *FAST)
    assert res.exit_code == 0, res.output
    assert "look at the object from" not in res.output


def test_images_only_and_partial_transforms_are_announced_before_training(tiny_orbit, tmp_path, no_training):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_orbit / "views", plain)
    res = _invoke(plain, "-o", tmp_path / "o1", *FAST)
    assert "training started" in str(res.exception)  # the note came first
    assert "default orbit cameras" in res.output and "elevation 30" in res.output
    partial = tmp_path / "partial"
    shutil.copytree(tiny_orbit, partial)
    meta = json.loads((partial / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:5]
    (partial / "transforms.json").write_text(json.dumps(meta))
    res = _invoke(partial, "-o", tmp_path / "o2", *FAST)
    assert "training started" in str(res.exception)
    assert "lists 5 frames but the folder holds 8 images" in res.output
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())  # nothing half-written


def test_help_shows_defaults_and_ranges():
    res = CliRunner().invoke(recon, ["--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for piece in ("[default: default]", "[default: auto]", "cuda:N", "16-2048", "INPUT_DIR/recon", "64-8192",
                  "[default: 1000; quick: 600]"):
        assert piece in text, piece
