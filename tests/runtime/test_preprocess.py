"""Image loading and Zero123-style preprocessing on the real RGBA photos in shared/data."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfrt.runtime.preprocess import ImageInputError, foreground_mask, load_image, to_uint8

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_images"
PHOTOS = sorted(DATA.glob("*.png")) if DATA.is_dir() else []


def _synthetic_rgba(size=96):
    rng = np.random.default_rng(0)
    img = np.zeros((size, size, 4), np.uint8)
    img[..., :3] = rng.integers(0, 200, (size, size, 3))
    img[20:60, 30:80, 3] = 255
    return img


def test_all_input_types_agree_without_preprocessing():
    arr = _synthetic_rgba()
    a = load_image(arr, preprocess=False)
    b = load_image(Image.fromarray(arr), preprocess=False)
    assert a.shape == (1, 3, 96, 96) and torch.equal(a, b)
    # transparent pixels composite to white
    assert torch.all(a[0, :, 0, 0] == 1.0)
    t = load_image(a[0] * 1.0, preprocess=False)
    torch.testing.assert_close(t, a)


def test_preprocess_crops_and_centres_the_object():
    out = load_image(_synthetic_rgba(), size=64, preprocess=True)
    assert out.shape == (1, 3, 64, 64)
    fg = (out[0] < 0.99).any(0).numpy()
    ys, xs = np.nonzero(fg)
    assert xs.max() - xs.min() + 1 == 50  # long side fit to round(64 * 200/256) = 50
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 1 and abs((ys.min() + ys.max()) / 2 - 31.5) <= 1


@pytest.mark.skipif(not PHOTOS, reason="shared/data/real_images not present")
@pytest.mark.parametrize("path", PHOTOS[:4], ids=lambda p: p.name)
def test_white_background_mask_recovers_the_alpha_mask(path):
    rgba = np.asarray(Image.open(path).convert("RGBA")).astype(np.float32) / 255.0
    alpha_mask = foreground_mask(rgba)
    white = rgba.copy()
    white[..., :3] = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    white[..., 3] = 1.0
    est = foreground_mask(white)
    iou = (est & alpha_mask).sum() / (est | alpha_mask).sum()
    assert iou > 0.85
    assert load_image(path, size=256).shape == (1, 3, 256, 256)


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ImageInputError, match="not found"):
        load_image(tmp_path / "nope.png", size=64)
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(ImageInputError, match="cannot read"):
        load_image(tmp_path / "x.png", size=64)
    with pytest.raises(ImageInputError, match="multiple of 8"):
        load_image(np.zeros((30, 30, 3), np.uint8), preprocess=False)
    with pytest.raises(ImageInputError, match="no foreground"):
        load_image(np.full((32, 32, 3), 255, np.uint8), size=64)
    with pytest.raises(ImageInputError, match="NaN"):
        load_image(torch.full((3, 8, 8), float("nan")), preprocess=False)
    with pytest.raises(ImageInputError, match="unsupported"):
        load_image(42, size=64)


def test_to_uint8_truncates_like_the_original():
    img = np.full((3, 2, 2), 0.999, np.float32)
    assert to_uint8(img)[0, 0, 0] == int(255.0 * (0.999 / 2 + 0.5))


def test_exif_orientation_and_16_bit_images(tmp_path):
    img = np.full((40, 24, 3), 255, np.uint8)
    img[5:15, 4:20] = 0                       # object in the top part of a portrait image
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6                          # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg", preprocess=False)
    assert out.shape == (1, 3, 24, 40)        # displayed landscape, as a viewer shows it
    g16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 4096 * 16).astype(np.uint16))
    t = load_image(g16, preprocess=False)
    assert t.shape == (1, 3, 64, 64) and float(t.std()) > 0.1


def test_non_white_background_without_alpha_warns(caplog):
    img = np.full((32, 32, 3), 40, np.uint8)
    img[10:20, 10:20] = 200
    with caplog.at_level("WARNING"):
        load_image(img, size=64)
    assert "background is not white" in caplog.text
