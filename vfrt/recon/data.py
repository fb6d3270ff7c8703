"""Loading views and cameras for NeuS.

Accepted inputs:

(a) a folder with a nerfstudio ``transforms.json`` (a ``vfrt run`` output folder is one):
    any images it names, OpenGL camera-to-world matrices, ``fl_x/fl_y/cx/cy/w/h`` (or
    ``camera_angle_x``);
(b) a folder of images only (``*.png|jpg|jpeg|webp``, sorted by name, or in ``views/``):
    the default orbit of SPEC §8 at the given elevation, view ``i`` at azimuth ``i*360/N``.

Foreground masks come from alpha when the image has one, else from the white background:
near-white pixels (all channels >= ``WHITE_THRESHOLD``) connected to the image border.
Colours are composited over white.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vfrt.runtime.cameras import Intrinsics, orbit_world_to_camera
from vfrt.recon.errors import InputDataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WHITE_THRESHOLD = 0.96
MIN_FOREGROUND_FRACTION = 1e-3  # a view with less foreground than this is "empty"


@dataclass(frozen=True)
class ReconData:
    """Views ready for training.

    Attributes:
        images: (N, H, W, 3) float32 in [0, 1], composited over white.
        masks: (N, H, W) float32 in [0, 1] (1 = object).
        c2w: (N, 4, 4) float32 OpenCV camera-to-world.
        intrinsics: shared pinhole intrinsics (pixel-centre convention, see cameras.py).
        names: image paths relative to the input folder.
        source: "transforms.json" or "default-orbit".
    """

    images: np.ndarray
    masks: np.ndarray
    c2w: np.ndarray
    intrinsics: Intrinsics
    names: tuple[str, ...]
    source: str

    @property
    def n_views(self) -> int:
        return int(self.images.shape[0])


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float32 (H, W, 3) and alpha (H, W) or None."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read image {path}: {exc}") from exc
    if has_alpha:
        return arr[..., :3], arr[..., 3]
    return arr, None


def mask_from_white_background(rgb: np.ndarray, threshold: float = WHITE_THRESHOLD) -> np.ndarray:
    """Foreground mask (H, W) bool: not a near-white pixel connected to the border."""
    from scipy import ndimage

    white = (rgb >= threshold).all(axis=-1)
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    background = np.isin(labels, border)
    return ~background


def _intrinsics_from_transforms(meta: dict, path: Path, width: int, height: int) -> Intrinsics:
    w = int(meta.get("w", width))
    h = int(meta.get("h", height))
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
        fy = float(meta.get("fl_y", fx))
    elif "camera_angle_x" in meta:
        fx = fy = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    else:
        raise InputDataError(f"{path}: no focal length (need 'fl_x' or 'camera_angle_x')")
    cx = float(meta.get("cx", w / 2.0))
    cy = float(meta.get("cy", h / 2.0))
    k = Intrinsics(fx, fy, cx, cy, w, h)
    if (w, h) != (width, height):
        k = k.resized(width, height)
    return k


def _load_transforms(folder: Path) -> tuple[list[Path], np.ndarray, dict]:
    path = folder / "transforms.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from exc
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputDataError(f"{path}: missing or empty 'frames' list")
    files, mats = [], []
    for i, fr in enumerate(frames):
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise InputDataError(f"{path}: frame {i} lacks 'file_path' or 'transform_matrix' (missing camera)")
        f = folder / fr["file_path"]
        if not f.exists() and f.suffix == "":
            f = next((f.with_suffix(s) for s in IMAGE_SUFFIXES if f.with_suffix(s).exists()), f)
        if not f.exists():
            raise InputDataError(f"{path}: frame {i} names {fr['file_path']!r}, which does not exist")
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise InputDataError(f"{path}: frame {i} transform_matrix is not a finite 4x4 matrix")
        files.append(f)
        mats.append(m)
    from vfrt.runtime.cameras import opengl_to_opencv_c2w

    return files, opengl_to_opencv_c2w(np.stack(mats)), meta


def _list_images(folder: Path) -> list[Path]:
    for d in (folder / "views", folder):
        if d.is_dir():
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                return files
    return []


def load_views(folder: str | Path, *, elevation_deg: float = 30.0, image_size: int | None = None,
               min_views: int = 4) -> ReconData:
    """Load a view folder (see module docstring) into :class:`ReconData`.

    Raises:
        InputDataError: too few views, missing cameras/files, inconsistent image sizes,
            unreadable images, or no foreground in any view.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"input folder {folder} does not exist")
    meta = None
    if (folder / "transforms.json").exists():
        files, c2w, meta = _load_transforms(folder)
        source = "transforms.json"
    else:
        files = _list_images(folder)
        if not files:
            raise InputDataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no transforms.json")
        c2w = np.linalg.inv(orbit_world_to_camera(len(files), elevation_deg))
        source = "default-orbit"
        log.info("no transforms.json in %s: default orbit of %d views at elevation %.1f deg (SPEC §8)",
                 folder, len(files), elevation_deg)
    if len(files) < min_views:
        raise InputDataError(f"{folder}: only {len(files)} view(s); NeuS needs at least {min_views}")

    rgbs, masks, sizes = [], [], {}
    for f in files:
        rgb, alpha = _read_image(f)
        sizes.setdefault(rgb.shape[:2], []).append(f.name)
        mask = alpha > 0.5 if alpha is not None else mask_from_white_background(rgb)
        if alpha is not None:
            rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])  # composite over white
        rgbs.append(rgb)
        masks.append(mask.astype(np.float32))
    if len(sizes) > 1:
        desc = "; ".join(f"{w}x{h}: {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}" for (h, w), n in sizes.items())
        raise InputDataError(f"{folder}: images have inconsistent sizes ({desc}); all views must share one size")
    height, width = rgbs[0].shape[:2]
    if meta is not None:
        intr = _intrinsics_from_transforms(meta, folder / "transforms.json", width, height)
    else:
        if width != height:
            raise InputDataError(f"{folder}: default cameras need square images, got {width}x{height}")
        intr = Intrinsics.default(width)

    images, mask_arr = np.stack(rgbs), np.stack(masks)
    fg = mask_arr.reshape(len(files), -1).mean(axis=1)
    if (fg < MIN_FOREGROUND_FRACTION).all():
        raise InputDataError(f"{folder}: no foreground in any view (all images are background/white); "
                             "give RGBA views or views of an object on a white background")
    for name, frac in zip(files, fg):
        if frac < MIN_FOREGROUND_FRACTION:
            log.warning("view %s has no foreground", name.name)

    if image_size is not None and (width, height) != (image_size, image_size):
        images, mask_arr = _resize(images, mask_arr, image_size)
        intr = intr.resized(image_size, image_size)
    names = tuple(str(f.relative_to(folder)) for f in files)
    return ReconData(images.astype(np.float32), mask_arr.astype(np.float32), c2w.astype(np.float32), intr, names,
                     source)


def _resize(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-resize views and masks to ``size x size`` (masks stay fractional)."""
    out_i, out_m = [], []
    for img, m in zip(images, masks):
        pil = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
        out_i.append(np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0)
        pm = Image.fromarray(m.astype(np.float32))  # mode "F"
        out_m.append(np.asarray(pm.resize((size, size), Image.Resampling.BOX), dtype=np.float32))
    return np.stack(out_i), np.clip(np.stack(out_m), 0.0, 1.0)
