"""Turning a user's image into the model's input tensor (SPEC §2 input; issue 2, item 5).

Accepted inputs: a path, a PIL image, a uint8 (H, W, 3|4) array, or a float tensor/array in
[-1, 1] shaped (3, H, W) or (1, 3, H, W).

* ``preprocess=False``: the pixels as given; RGBA is composited on white. The size must be a
  multiple of 8.
* ``preprocess=True`` (Zero123's ``load_and_preprocess`` recipe): foreground from the alpha
  channel (alpha > 127), or - without a usable alpha - found by :mod:`vfrt.runtime.segment`
  (``segment``: rembg, GrabCut, or just the non-white pixels); composite on white, crop to the
  foreground's bounding box, fit it into 200/256 of the frame (Lanczos) and centre it on a white
  square of the model's resolution.

:func:`prepare_image` returns the model input with the mask and the method that found it (what
``vfrt run`` saves as ``input.png`` / ``mask.png``); :func:`load_image` returns just the tensor
and passes a :class:`PreparedImage` through unchanged, so a prepared photo can go to the Pipeline.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vfrt.runtime.segment import Segmentation, SegmentMethod, UsedMethod, segment as segment_photo

log = logging.getLogger(__name__)

#: Zero123 fits the object into a 200 px box of a 256 px frame.
OBJECT_FRACTION = 200 / 256


class ImageInputError(ValueError):
    """The given image cannot be used (unreadable, wrong shape or size, no foreground)."""


def _to_rgba_float(image) -> np.ndarray:
    """Any accepted input -> (H, W, 4) float32 in [0, 1]; alpha 1 where none was given."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageInputError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = ImageOps.exif_transpose(im)  # phone photos: honour the EXIF orientation
        except Exception as exc:
            raise ImageInputError(f"cannot read {path} as an image: {exc}") from exc
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits first
            arr16 = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.round(arr16 / max(arr16.max(), 1) * 255).astype(np.uint8))
        im = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB")
        arr = np.asarray(im).astype(np.float32) / 255.0
        if arr.shape[2] == 3:
            arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=2)
        return arr
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise ImageInputError(f"a uint8 image must be (H, W, 3|4), got {image.shape}")
            arr = image.astype(np.float32) / 255.0
            if arr.shape[2] == 3:
                arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=2)
            return arr
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise ImageInputError(f"a float image must be (3, H, W) or (1, 3, H, W) in [-1, 1], got {image.shape}")
        if not np.isfinite(arr).all():
            raise ImageInputError("the image tensor contains NaN or inf")
        rgb = np.clip((arr.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        return np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=2)
    raise ImageInputError(f"unsupported image type {type(image).__name__}; give a path, PIL image, uint8 array or tensor")


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + (1.0 - a)


def find_foreground(rgba: np.ndarray, method: SegmentMethod = "auto") -> Segmentation:
    """(H, W, 4) float in [0, 1] -> the object's (H, W) bool mask and how it was found.

    A usable alpha channel (any pixel not opaque) is the mask (alpha > 0.5) whatever ``method``
    says; otherwise :func:`vfrt.runtime.segment.segment` finds the object with ``method``.
    """
    alpha = rgba[..., 3]
    if alpha.min() < 0.999:
        return Segmentation(mask=alpha > 127.0 / 255.0, method="alpha")
    return segment_photo(np.round(rgba[..., :3] * 255.0).astype(np.uint8), method)


@dataclass(frozen=True)
class PreparedImage:
    """A photo turned into the model's input.

    Attributes:
        tensor: (1, 3, H, W) float32 in [-1, 1], exactly what the model is given.
        mask: (h, w) bool foreground on the photo as given (its own resolution); None without
            preprocessing.
        method: how ``mask`` was found ("alpha", "rembg", "grabcut", "non-white"); None without
            preprocessing.
    """

    tensor: torch.Tensor
    mask: np.ndarray | None = None
    method: UsedMethod | None = None

    def input_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8 of the model input (rounded: the preprocessed pixels exactly)."""
        rgb = (self.tensor[0].numpy().transpose(1, 2, 0) + 1.0) / 2.0
        return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def prepare_image(image, size: int | None = None, preprocess: bool = True,
                  segment: SegmentMethod = "auto") -> PreparedImage:
    """The model input of ``image`` with its foreground mask (see the module docstring).

    Args:
        size: output side length when ``preprocess`` is True (the model's resolution, 256 for
            Zero123). Ignored when ``preprocess`` is False.
        segment: how to find the object in a photo without alpha (``auto``, ``rembg``,
            ``grabcut``, ``none``); a photo with a usable alpha always uses it.
    """
    if isinstance(image, PreparedImage):
        if preprocess and size is not None and image.tensor.shape[-1] != size:
            raise ImageInputError(f"the prepared image is {image.tensor.shape[-1]} px, the model needs {size}")
        return image
    rgba = _to_rgba_float(image)
    if not preprocess:
        h, w = rgba.shape[:2]
        if h % 8 or w % 8:
            raise ImageInputError(f"image size {w}x{h} is not a multiple of 8; resize it or use preprocess=True")
        rgb = _composite_white(rgba)
        return PreparedImage(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None] * 2.0 - 1.0)
    if size is None or size % 8:
        raise ImageInputError(f"preprocess needs an output size that is a multiple of 8, got {size}")
    found = find_foreground(rgba, segment)
    mask = found.mask
    if not mask.any():
        raise ImageInputError("no foreground found: the image is fully transparent or plain white"
                              + ("" if found.method == "alpha" else f" (segmentation: {found.method})"))
    rgb = _composite_white(rgba)
    rgb[~mask] = 1.0
    ys, xs = np.nonzero(mask)
    crop = rgb[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    im = Image.fromarray(np.round(crop * 255.0).astype(np.uint8))
    box = max(1, int(round(size * OBJECT_FRACTION)))
    im.thumbnail((box, box), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    arr = np.asarray(canvas).astype(np.float32) / 255.0
    return PreparedImage(torch.from_numpy(arr.transpose(2, 0, 1).copy())[None] * 2.0 - 1.0, mask, found.method)


def load_image(image, size: int | None = None, preprocess: bool = True,
               segment: SegmentMethod = "auto") -> torch.Tensor:
    """Return the model input, (1, 3, H, W) float32 in [-1, 1] (:func:`prepare_image`'s tensor)."""
    return prepare_image(image, size, preprocess, segment).tensor


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, the way the original saves views (truncation)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    x = 255.0 * (np.asarray(image, dtype=np.float32).transpose(1, 2, 0) / 2 + 0.5)
    return np.clip(x, 0, 255).astype(np.uint8)
