"""Image loading and Zero123-style preprocessing, on real RGBA photos bundled in tests/data."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfrt.runtime.preprocess import ImageInputError, PreparedImage, find_foreground, load_image, prepare_image, to_uint8

# downsized copies of ViewFusion's real_images (Apache-2.0; tests/data/real_images/README.md)
PHOTOS = sorted((Path(__file__).resolve().parents[1] / "data" / "real_images").glob("*.png"))


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


def test_the_bundled_photos_are_there():
    assert len(PHOTOS) == 3      # a clean clone runs the real-photo tests too


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_white_background_mask_recovers_the_alpha_mask(path):
    rgba = np.asarray(Image.open(path).convert("RGBA")).astype(np.float32) / 255.0
    found = find_foreground(rgba, "grabcut")
    assert found.method == "alpha"          # a usable alpha wins over any segmentation choice
    white = rgba.copy()
    white[..., :3] = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    white[..., 3] = 1.0
    for method in ("none", "grabcut"):
        est = find_foreground(white, method)
        assert est.method == {"none": "non-white", "grabcut": "grabcut"}[method]
        iou = (est.mask & found.mask).sum() / (est.mask | found.mask).sum()
        assert iou > 0.9, (method, iou)
    assert load_image(path, size=256).shape == (1, 3, 256, 256)


def test_a_prepared_image_passes_through_load_image_unchanged():
    prepared = prepare_image(PHOTOS[0], size=64)
    assert prepared.method == "alpha" and prepared.mask.shape == (256, 256)
    assert load_image(prepared, size=64) is prepared.tensor
    # input_uint8 gives the preprocessed pixels exactly: reading them back is the same model input
    again = load_image(prepared.input_uint8(), preprocess=False)
    assert torch.equal(again, prepared.tensor)
    with pytest.raises(ImageInputError, match="the model needs 128"):
        load_image(prepared, size=128)
    assert isinstance(prepare_image(PHOTOS[0], preprocess=False), PreparedImage)
    assert prepare_image(PHOTOS[0], preprocess=False).mask is None


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


def test_non_white_background_without_alpha_is_segmented_or_warned_about(caplog):
    img = np.full((48, 48, 3), 40, np.uint8)
    img[14:34, 16:30] = (200, 120, 30)
    with caplog.at_level("INFO", logger="vfrt"):
        prepared = prepare_image(img, size=64, segment="grabcut")
    assert prepared.method == "grabcut" and "found the object with grabcut" in caplog.text
    ys, xs = np.nonzero(prepared.mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (14, 33, 16, 29)
    corners = prepared.tensor[0, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.all(corners == 1.0)                # background replaced by white
    caplog.clear()
    with caplog.at_level("WARNING"):
        prepared = prepare_image(img, size=64, segment="none")
    assert prepared.method == "non-white" and prepared.mask.all()     # the old behaviour: all of it
    assert "background is not white" in caplog.text
