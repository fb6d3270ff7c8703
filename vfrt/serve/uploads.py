"""Checking an uploaded photo before it is stored: size, type (by decoding, not by name), pixels,
completeness; and a safe file name for it.

Every rejection is an :class:`~vfrt.serve.errors.UploadRejected` with the HTTP status and a
message for the person who sent it: 413 too large (bytes or pixels), 415 not an accepted image
type, 400 empty, truncated or corrupt.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, UnidentifiedImageError

from vfrt.serve.errors import UploadRejected

#: image types accepted, by Pillow's format name -> file suffixes (the first is used when the
#: uploaded name has none of them)
ACCEPTED_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
}
_ACCEPTED_TEXT = "PNG, JPEG, WebP, BMP or TIFF"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CheckedImage:
    """A photo that decoded completely. ``name`` is a safe file name with the right suffix."""

    data: bytes
    name: str
    format: str
    width: int
    height: int


def safe_name(filename: str | None, image_format: str) -> str:
    """A file name for an upload: the sender's base name reduced to ``[A-Za-z0-9._-]``, at most 64
    characters, with a suffix matching the decoded format (``photo.<ext>`` when nothing is left)."""
    suffixes = ACCEPTED_FORMATS[image_format]
    base = PurePath(PurePath((filename or "").replace("\\", "/")).name)
    stem = _UNSAFE.sub("_", base.stem).strip("._-")[:56] or "photo"
    suffix = base.suffix.lower() if base.suffix.lower() in suffixes else suffixes[0]
    return stem + suffix


def check_image(data: bytes, filename: str | None, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Accept ``data`` only if it is a complete image of an accepted type within the limits.

    The pixel count is read from the header and checked before the pixels are decoded, so a small
    file that would decode to a huge image is refused without decoding it.
    """
    if not data:
        raise UploadRejected("the uploaded file is empty", 400)
    if len(data) > max_bytes:
        raise UploadRejected(f"the photo is {len(data) / 2**20:.1f} MiB; this server accepts at most "
                             f"{max_bytes / 2**20:.1f} MiB", 413)
    with warnings.catch_warnings():
        # the pixel limit is checked here; Pillow's own bomb check stays as a backstop (its error)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UploadRejected(f"the file is not an image ({_ACCEPTED_TEXT} accepted)", 415) from None
        except Image.DecompressionBombError as exc:
            raise UploadRejected(f"the image has too many pixels ({exc})", 413) from None
        except (OSError, SyntaxError, ValueError) as exc:    # a header Pillow recognised but cannot parse
            raise UploadRejected(f"the image is truncated or corrupt ({exc})", 400) from None
        return _check_opened(im, data, filename, max_pixels)


def _check_opened(im: Image.Image, data: bytes, filename: str | None, max_pixels: int) -> CheckedImage:
    with im:
        if im.format not in ACCEPTED_FORMATS:
            raise UploadRejected(f"{im.format} images are not accepted ({_ACCEPTED_TEXT} are)", 415)
        width, height = im.size
        if width * height > max_pixels:
            raise UploadRejected(f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this "
                                 f"server accepts at most {max_pixels / 1e6:.1f}", 413)
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise UploadRejected(f"the image has too many pixels ({exc})", 413) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise UploadRejected(f"the {im.format} image is truncated or corrupt ({exc})", 400) from None
        return CheckedImage(data, safe_name(filename, im.format), im.format, width, height)
