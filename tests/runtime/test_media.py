"""Contact sheet labels and the GIF / MP4 turntables (imageio + imageio-ffmpeg are base dependencies)."""
import numpy as np
import pytest
from PIL import Image

from vfrt.runtime.media import FRAME_MS, MediaError, contact_sheet, write_gif, write_mp4


def _frames(n=5, size=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_contact_sheet_writes_each_label_under_its_view():
    views = [np.full((64, 64, 3), 255, np.uint8) for _ in range(8)]
    sheet = np.asarray(contact_sheet(views, [f"az {a}°" for a in range(0, 360, 45)], cols=6))
    strip = (sheet.shape[0] - 2 * 64) // 2
    assert strip > 0 and sheet.shape == (2 * (64 + strip), 6 * 64, 3)
    for i in range(8):
        y, x = (i // 6) * (64 + strip), (i % 6) * 64
        label = sheet[y + 64: y + 64 + strip, x: x + 64]
        assert (label < 128).any(), i                          # text drawn under view i
        assert (sheet[y: y + 64, x: x + 64] == 255).all()      # the view itself untouched
    # no text under the empty cells of the last row
    assert (sheet[64 + strip + 64:, 2 * 64:] == 255).all()
    # different labels draw different pixels
    a = np.asarray(contact_sheet(views[:1], ["az 10°"]))
    b = np.asarray(contact_sheet(views[:1], ["az 20°"]))
    assert not np.array_equal(a, b)
    assert np.asarray(contact_sheet(views[:2])).shape == (64, 128, 3)     # no labels: no strips


def test_contact_sheet_errors():
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        contact_sheet(_frames(2), ["x"])
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([], [])


def test_gif_and_mp4_hold_every_frame(tmp_path):
    frames = _frames(5)
    write_gif(tmp_path / "o.gif", frames)
    with Image.open(tmp_path / "o.gif") as gif:
        assert gif.n_frames == 5 and gif.info["duration"] == FRAME_MS and gif.info["loop"] == 0
    write_mp4(tmp_path / "o.mp4", frames)
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "o.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (64, 64) and meta["fps"] == pytest.approx(1000 / FRAME_MS)
    decoded = [np.frombuffer(f, np.uint8).reshape(64, 64, 3) for f in reader]
    assert len(decoded) == 5
    flat = [np.full((64, 64, 3), v, np.uint8) for v in (30, 200)]   # lossy codec: flat frames come back close
    write_mp4(tmp_path / "flat.mp4", flat)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "flat.mp4"))
    next(reader)
    means = [np.frombuffer(f, np.uint8).mean() for f in reader]
    assert means == pytest.approx([30, 200], abs=3)


def test_gif_frames_stay_close_to_the_views(tmp_path):
    """Smooth shaded views (a turntable's kind) come back from the 256-colour GIF within 35 dB PSNR."""
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    frames = [np.stack([xx * 255, yy * 255, np.full_like(xx, 40.0 * i)], -1).astype(np.uint8) for i in range(4)]
    frames[2][30:60, 30:60] = (250, 250, 250)                       # a sharp-edged patch in one view
    write_gif(tmp_path / "o.gif", frames)
    with Image.open(tmp_path / "o.gif") as gif:
        for i, want in enumerate(frames):
            gif.seek(i)
            got = np.asarray(gif.convert("RGB")).astype(np.float64)
            mse = np.mean((got - want) ** 2)
            assert 10 * np.log10(255 ** 2 / mse) > 35, i


def test_unwritable_animation_is_a_media_error(tmp_path):
    with pytest.raises(MediaError, match="could not write o.mp4"):
        write_mp4(tmp_path / "missing" / "o.mp4", _frames(2))
    with pytest.raises(MediaError, match="could not write o.gif"):
        write_gif(tmp_path / "missing" / "o.gif", _frames(2))
