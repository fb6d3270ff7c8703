"""Pictures and animations of a run: the labelled contact sheet, GIF and MP4 turntables.

GIF goes through Pillow (each frame's own 256-colour palette by fast octree quantisation: its time does
not grow with how busy a frame is, where median cut took seconds on noisy frames - docs/PERF.md); MP4
through imageio-ffmpeg, which ships its own ffmpeg binary, so both work on a plain ``pip install vfrt``.
All frames are (H, W, 3) uint8.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: turntable speed: 80 ms a frame, a 36-view orbit in ~2.9 s
FRAME_MS = 80


class MediaError(RuntimeError):
    """An animation could not be written (e.g. ffmpeg failed)."""


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)      # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):         # older Pillow / no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fitting_font(labels: Sequence[str], width: int):
    """The largest font (<= width/16 px, >= 6 px) in which every label fits ``width`` pixels."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(9, width // 16)
    while True:
        font = _font(size)
        longest = max((draw.textlength(t, font=font) for t in labels), default=0)
        if longest <= width - 4 or size <= 6:
            return font, size
        size -= 1


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str] | None = None, cols: int = 6) -> Image.Image:
    """Tile ``images`` ((H, W, 3) uint8, all one size) ``cols`` to a row, each with its label
    centred on a white strip under it (no strips when ``labels`` is None)."""
    if not len(images):
        raise ValueError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    h, w = images[0].shape[:2]
    font, size = _fitting_font(labels, w) if labels else (None, 0)
    strip = size + 6 if labels else 0
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (min(cols, len(images)) * w, rows * (h + strip)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + strip)
        sheet.paste(Image.fromarray(im), (x, y))
        if labels:
            draw.text((x + w / 2, y + h + strip / 2), labels[i], fill=(0, 0, 0), font=font, anchor="mm")
    return sheet


def require_media_tools() -> None:
    """Raise :class:`MediaError` unless the GIF and MP4 writers' packages import.

    Both are dependencies of vfrt; a run checks them before any work (a source checkout run without
    ``pip install`` lacked imageio-ffmpeg and failed only after generating every view)."""
    import importlib.util
    missing = [pkg for mod, pkg in (("imageio", "imageio"), ("imageio_ffmpeg", "imageio-ffmpeg"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise MediaError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                         f"(orbit.gif / orbit.mp4 need {'it' if len(missing) == 1 else 'them'}): "
                         f"pip install {' '.join(missing)}")


def write_gif(path: Path, frames: Sequence[np.ndarray], frame_ms: int = FRAME_MS) -> None:
    """A looping GIF of ``frames``."""
    try:
        pictures = [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)).quantize(
            256, method=Image.Quantize.FASTOCTREE) for f in frames]
        pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    except Exception as exc:
        raise MediaError(f"could not write {path.name}: {exc}") from exc


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float = 1000 / FRAME_MS) -> None:
    """An H.264 MP4 (yuv420p, plays everywhere) of ``frames`` with imageio-ffmpeg's ffmpeg.

    Sizes that are not a multiple of 16 are resized up by ffmpeg (its macro-block rule).
    """
    import imageio_ffmpeg
    h, w = frames[0].shape[:2]
    try:
        writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=8,
                                             macro_block_size=16, ffmpeg_log_level="error")
        writer.send(None)                            # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        writer.close()
    except Exception as exc:
        raise MediaError(f"could not write {path.name} with {imageio_ffmpeg.get_ffmpeg_exe()}: {exc}") from exc
    if not path.is_file() or path.stat().st_size == 0:      # ffmpeg can fail without the writer raising
        raise MediaError(f"could not write {path.name}: {imageio_ffmpeg.get_ffmpeg_exe()} produced no file")
