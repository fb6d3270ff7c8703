"""`vfrt run FOLDER`: a folder among IMAGES stands for the photos directly in it (sorted by name), in every mode."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vfrt.cli.main import cli


def _photo(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.zeros((64, 64, 4), np.uint8)
    img[..., :3] = rng.integers(0, 255, (64, 64, 3))
    img[12:52, 16:48, 3] = 255
    Image.fromarray(img).save(path)


def _args(tc, *images, out):
    return ["run", *map(str, images), "-c", str(tc.ckpt), "--config", str(tc.yaml), "--steps", "4", "--views", "2",
            "--device", "cpu", "-o", str(out)]


def test_a_folder_runs_its_photos_in_name_order_and_nothing_else(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    for seed, name in enumerate(["b.png", ".hidden.png", "nested/c.png"]):
        _photo(photos / name, seed)
    rgb = np.full((64, 64, 3), (60, 90, 160), np.uint8)       # no alpha: an object on a blue background
    rgb[16:48, 20:44] = (230, 200, 40)
    Image.fromarray(rgb).save(photos / "a.JPG", format="JPEG", quality=95)
    (photos / "notes.txt").write_text("not a photo")
    other = tmp_path / "z.png"
    _photo(other, 9)
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photos, other, out=tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert [line.split("/")[-1] for line in res.output.splitlines() if line.startswith("done:")] == ["a", "b", "z"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a", "b", "z"]


def test_a_folder_with_one_photo_still_writes_a_folder_per_photo(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "only.png", 0)
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photos, out=tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "only" / "run.json").is_file()


def test_a_folder_without_photos_is_a_usage_error(tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, empty, out=tmp_path / "o"))
    assert res.exit_code == 2 and f"no photos (.png, .jpg" in res.output and str(empty) in res.output
    assert not (tmp_path / "o").exists()
