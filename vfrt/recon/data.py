"""Loading views and cameras for NeuS.

Accepted inputs:

(a) a folder with a nerfstudio ``transforms.json`` (a ``vfrt run`` output folder is one):
    any images it names, OpenGL camera-to-world matrices, ``fl_x/fl_y/cx/cy/w/h`` (or
    ``camera_angle_x``);
(b) an orbit folder of ``vfrt run`` without ``transforms.json`` (an unfinished orbit made with
    ``--generate``): the OpenCV world-to-camera matrices and ``K`` of its ``cameras.json``;
(c) a folder of images only (``*.png|jpg|jpeg|webp``, sorted by name, or in ``views/``):
    the default orbit of SPEC §8 at the given elevation, view ``i`` at azimuth ``i*360/N``.

Refused with a message: a file instead of a folder, and a single-target ``vfrt run`` folder
(views along a path to one pose, whose ``cameras.json`` holds pose deltas): its few views span
a small arc, and taking them for a 360-degree orbit would build a wrong object.

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
        source: "transforms.json", "cameras.json" or "default-orbit".
        notes: things the user should know about how the input was read (shown by the CLI).
    """

    images: np.ndarray
    masks: np.ndarray
    c2w: np.ndarray
    intrinsics: Intrinsics
    names: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()

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
        files.append(f)
        mats.append(_matrix4(fr["transform_matrix"], f"{path}: frame {i} transform_matrix"))
    from vfrt.runtime.cameras import opengl_to_opencv_c2w

    return files, opengl_to_opencv_c2w(np.stack(mats)), meta


def _matrix4(value, what: str) -> np.ndarray:
    """A finite (4, 4) float64 matrix from JSON, or an InputDataError naming ``what``."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-12:
        raise InputDataError(f"{what} is not a finite 4x4 (invertible) matrix")
    return m


def _load_cameras_json(folder: Path) -> tuple[list[Path], np.ndarray, dict]:
    """Files, OpenCV c2w and nerfstudio-style intrinsics of an orbit ``cameras.json`` (``vfrt run``)."""
    path = folder / "cameras.json"
    meta = _read_cameras_json(path)
    files, mats = [], []
    for i, view in enumerate(meta["views"]):
        f = folder / str(view.get("file", ""))
        if not f.is_file():
            raise InputDataError(f"{path}: view {i} names {view.get('file')!r}, which does not exist")
        files.append(f)
        mats.append(np.linalg.inv(_matrix4(view["world_to_camera_opencv"], f"{path}: view {i} world_to_camera_opencv")))
    k = np.asarray(meta.get("K", []), dtype=np.float64)
    if k.shape != (3, 3):
        raise InputDataError(f"{path}: no 3x3 'K'")
    # cameras.json keeps SPEC's K (rays through integer pixels); +0.5 is the pixel-centre convention
    intr = {"fl_x": k[0, 0], "fl_y": k[1, 1], "cx": k[0, 2] + 0.5, "cy": k[1, 2] + 0.5}
    if "width" in meta and "height" in meta:
        intr.update(w=int(meta["width"]), h=int(meta["height"]))
    return files, np.stack(mats), intr


def _read_cameras_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("views"), list) or not meta["views"]:
        raise InputDataError(f"{path}: missing or empty 'views' list")
    return meta


def input_layout(folder: str | Path) -> str:
    """How :func:`load_views` will read ``folder``: ``"transforms.json"``, ``"cameras.json"`` or ``"default-orbit"``.

    Cheap (reads at most one small JSON file), so the CLI can refuse bad input before any work.

    Raises:
        InputDataError: missing path, a file instead of a folder, a single-target run folder,
            or a folder without images.
    """
    folder = Path(folder)
    if folder.is_file():
        raise InputDataError(f"{folder} is a file; give the folder that holds the views: a `vfrt run` output "
                             "folder, a folder with a transforms.json, or a folder of orbit images")
    if not folder.is_dir():
        raise InputDataError(f"input folder {folder} does not exist")
    if (folder / "transforms.json").exists():
        return "transforms.json"
    if (folder / "cameras.json").exists():
        views = _read_cameras_json(folder / "cameras.json")["views"]
        if any("world_to_camera_opencv" not in v for v in views):
            if any("delta_azimuth_deg" in v for v in views):
                az = [float(v.get("delta_azimuth_deg", 0.0)) for v in views]
                raise InputDataError(
                    f"{folder} is a single-target `vfrt run` folder: {len(views)} views along a path to one pose "
                    f"(azimuth {min(az + [0.0]):.0f} to {max(az + [0.0]):.0f} degrees from the input), not a "
                    "360-degree orbit, and NeuS needs an orbit; make one with `vfrt run IMAGE` (orbit mode)")
            raise InputDataError(f"{folder / 'cameras.json'}: views lack 'world_to_camera_opencv' (no cameras)")
        return "cameras.json"
    if not _list_images(folder):
        raise InputDataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no transforms.json")
    return "default-orbit"


def input_notes(folder: Path, layout: str, n_views: int, elevation_deg: float) -> tuple[str, ...]:
    """What a user should know about how ``folder`` is read (the CLI prints these before training)."""
    notes = []
    n_images = len(_list_images(folder))
    if layout == "transforms.json" and n_images > n_views:
        notes.append(f"transforms.json lists {n_views} frames but the folder holds {n_images} images: "
                     f"training on the {n_views} listed views only")
    elif layout == "cameras.json":
        notes.append(f"no transforms.json: cameras of {n_views} views from cameras.json")
    elif layout == "default-orbit":
        notes.append(f"no transforms.json or cameras.json: assuming the default orbit cameras (SPEC §8) of "
                     f"{n_views} views, view i at azimuth i*360/{n_views} degrees, elevation {elevation_deg:g} "
                     "degrees (set it with --elevation)")
    return tuple(notes)


def count_views(folder: Path, layout: str) -> int:
    """Number of views :func:`load_views` will use (cheap: reads the camera file or lists images)."""
    if layout in ("transforms.json", "cameras.json"):
        meta = json.loads((folder / layout).read_text())
        return len(meta.get("frames" if layout == "transforms.json" else "views") or [])
    return len(_list_images(folder))


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
    source = input_layout(folder)
    meta = None
    if source == "transforms.json":
        files, c2w, meta = _load_transforms(folder)
    elif source == "cameras.json":
        files, c2w, meta = _load_cameras_json(folder)
    else:
        files = _list_images(folder)
        c2w = np.linalg.inv(orbit_world_to_camera(len(files), elevation_deg))
    notes = input_notes(folder, source, len(files), elevation_deg)
    for note in notes:
        log.info("%s", note)
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
        intr = _intrinsics_from_transforms(meta, folder / source, width, height)
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
                     source, tuple(notes))


def _resize(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-resize views and masks to ``size x size`` (masks stay fractional)."""
    out_i, out_m = [], []
    for img, m in zip(images, masks):
        pil = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
        out_i.append(np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0)
        pm = Image.fromarray(m.astype(np.float32))  # mode "F"
        out_m.append(np.asarray(pm.resize((size, size), Image.Resampling.BOX), dtype=np.float32))
    return np.stack(out_i), np.clip(np.stack(out_m), 0.0, 1.0)
