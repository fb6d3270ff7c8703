"""Finding the object in a photo that has no usable alpha channel.

Zero123 expects the object on white, so a photo taken against a wall, a table or a gradient has
to be cut out first. Photos that carry an alpha channel keep it (:mod:`vfrt.runtime.preprocess`
decides that); this module handles the rest, by one of

* ``rembg``: the U^2-Net salient-object model through the ``rembg`` package - used only when the
  package imports *and* its model file is already on disk (:func:`rembg_model_path`); vfrt never
  downloads weights at run time.
* ``grabcut``: OpenCV's GrabCut, needing no weights. The border of the photo is taken as
  background; pixels whose colour is close to the border's colours start as "probably
  background", the rest as "probably foreground"; GrabCut's colour models and graph cut then
  settle the boundary, and small specks are removed afterwards.
* ``none``: no segmentation; the object is every pixel that is not near-white (the recipe for
  renders on white, and vfrt's behaviour before segmentation existed), with a warning when the
  photo's background is not white.

``SegmentMethod`` (the user's choice) is one of those, or ``auto``: rembg when usable, else
GrabCut (which also beat the non-white threshold on white backgrounds). Measured mask quality:
docs/SEGMENTATION.md.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

log = logging.getLogger(__name__)

#: what the user asks for (one typed place: RunConfig, the CLI's --segment and load_image use it)
SegmentMethod = Literal["auto", "rembg", "grabcut", "none"]
SEGMENT_METHODS: tuple[str, ...] = get_args(SegmentMethod)
#: what was actually done to find the foreground ("alpha": the image's own alpha channel)
UsedMethod = Literal["alpha", "rembg", "grabcut", "non-white"]

#: a pixel is background when all channels are at least this bright (0..255), for ``none``
WHITE_THRESHOLD = 245
#: the rembg model vfrt uses (the general-purpose U^2-Net) and its file name in rembg's model folder
REMBG_MODEL = "u2net"
#: GrabCut runs on a copy whose long side is at most this (cost grows with the pixel count)
GRABCUT_MAX_SIDE = 320
#: width of the border band taken as certain background, as a fraction of the short side
BORDER_FRACTION = 0.02
#: colour clusters that model the border (enough for gradients and textures)
BORDER_CLUSTERS = 8


class SegmentationError(ValueError):
    """The requested segmentation method cannot run here (e.g. rembg or its model is missing)."""


@dataclass(frozen=True)
class Segmentation:
    """Foreground of one photo.

    Attributes:
        mask: (H, W) bool, True on the object, at the photo's resolution.
        method: how it was found.
    """

    mask: np.ndarray
    method: UsedMethod


# ---------------------------------------------------------------------------------------- rembg
def rembg_model_path() -> Path:
    """Where rembg keeps its ``u2net.onnx``: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else
    ``~/.u2net`` - the same lookup rembg's sessions make before they would download the file."""
    home = os.environ.get("U2NET_HOME") or os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net")
    return Path(home).expanduser() / f"{REMBG_MODEL}.onnx"


def rembg_status() -> tuple[bool, str]:
    """(usable, why): rembg is usable when it is installed and its model file already exists."""
    import importlib.util
    if importlib.util.find_spec("rembg") is None:
        return False, "rembg is not installed (pip install 'vfrt[segment]')"
    path = rembg_model_path()
    if not path.is_file():
        return False, f"rembg is installed but its model {path} is missing (vfrt never downloads it)"
    return True, f"rembg with {path}"


@functools.lru_cache(maxsize=1)
def rembg_session():
    """rembg's ONNX Runtime session for REMBG_MODEL, made once per process (loading takes seconds)."""
    from rembg import new_session
    return new_session(REMBG_MODEL)


def rembg_mask(rgb8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool foreground from rembg's U^2-Net (model must be on disk)."""
    usable, why = rembg_status()
    if not usable:
        raise SegmentationError(why)
    from PIL import Image
    try:
        from rembg import remove
        matte = remove(Image.fromarray(rgb8), session=rembg_session(), only_mask=True)
    except Exception as exc:   # e.g. a model file whose checksum rembg rejects makes it try a download
        raise SegmentationError(f"rembg failed ({type(exc).__name__}: {exc}); use segment 'grabcut'") from exc
    return np.asarray(matte.convert("L")) > 127


# ---------------------------------------------------------------------------------------- GrabCut
def _border_band(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the outer band taken as certain background."""
    b = max(2, int(round(BORDER_FRACTION * min(h, w))))
    band = np.zeros((h, w), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    return band


def _distance_to_border_colours(lab: np.ndarray, band: np.ndarray, seed: int = 0) -> np.ndarray:
    """(h, w) float32: Lab distance of every pixel to the nearest border colour cluster."""
    import cv2
    samples = lab[band].reshape(-1, 3).astype(np.float32)
    k = min(BORDER_CLUSTERS, len(samples))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, _, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    dist = np.sqrt(((flat - centres[None]) ** 2).sum(-1)).min(axis=1)
    return dist.reshape(lab.shape[:2])


def _clean(mask: np.ndarray) -> np.ndarray:
    """Open away specks, keep the object's large connected parts, fill pinholes."""
    import cv2
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return m.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.nonzero(areas >= 0.1 * areas.max())[0]    # the largest part and others of similar size
    m = np.isin(labels, keep)
    # holes smaller than 0.2 % of the frame are mislabelled object pixels, not gaps such as a chair's back
    n_bg, bg_labels, bg_stats, _ = cv2.connectedComponentsWithStats((~m).astype(np.uint8), connectivity=4)
    small = 1 + np.nonzero(bg_stats[1:, cv2.CC_STAT_AREA] < 0.002 * m.size)[0]
    touching = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    m |= np.isin(bg_labels, np.setdiff1d(small, touching))
    return m


def grabcut_mask(rgb8: np.ndarray, iterations: int = 5, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool foreground by GrabCut seeded from the photo's border.

    Deterministic for a given ``seed`` (k-means and GrabCut's GMM initialisation use OpenCV's RNG).
    """
    import cv2
    h0, w0 = rgb8.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(h0, w0))
    small = rgb8 if scale == 1.0 else cv2.resize(rgb8, (max(8, round(w0 * scale)), max(8, round(h0 * scale))),
                                                 interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    bgr = np.ascontiguousarray(small[..., ::-1])
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    band = _border_band(h, w)
    dist = _distance_to_border_colours(lab, band, seed)
    # "close to a border colour": within the spread the border itself shows (textures spread more)
    tau = max(12.0, float(np.percentile(dist[band], 95)))
    labels = np.where(dist < tau, cv2.GC_PR_BGD, cv2.GC_PR_FGD).astype(np.uint8)
    labels[band] = cv2.GC_BGD
    if not (labels == cv2.GC_PR_FGD).any():
        return np.zeros((h0, w0), bool)      # nothing differs from the border: no object found
    bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(bgr, labels, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
    fg = _clean((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    if (h, w) != (h0, w0):
        fg = cv2.resize(fg.astype(np.float32), (w0, h0), interpolation=cv2.INTER_LINEAR) > 0.5
    return fg


# ---------------------------------------------------------------------------------------- choice
def non_white_mask(rgb8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: pixels with any channel below WHITE_THRESHOLD."""
    return (rgb8 < WHITE_THRESHOLD).any(axis=2)


def has_white_background(rgb8: np.ndarray) -> bool:
    """True when most of the photo's outermost pixels are near-white."""
    fg = non_white_mask(rgb8)
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    return bool(border.mean() <= 0.5)


def auto_method() -> UsedMethod:
    """What ``segment="auto"`` does here: rembg when usable, else GrabCut."""
    return "rembg" if rembg_status()[0] else "grabcut"


def segment(rgb8: np.ndarray, method: SegmentMethod = "auto") -> Segmentation:
    """Foreground of a photo without alpha. ``rgb8``: (H, W, 3) uint8."""
    if method not in SEGMENT_METHODS:
        raise SegmentationError(f"segment must be one of {', '.join(SEGMENT_METHODS)}, got {method!r}")
    if rgb8.ndim != 3 or rgb8.shape[2] != 3 or rgb8.dtype != np.uint8:
        raise SegmentationError(f"segment() needs an (H, W, 3) uint8 image, got {rgb8.dtype} {rgb8.shape}")
    used: UsedMethod = auto_method() if method == "auto" else "non-white" if method == "none" else method
    if method == "none" and not has_white_background(rgb8):
        log.warning("the image has no alpha channel and its background is not white, and segmentation is off: "
                    "Zero123 expects the object on white - results will suffer")
    mask = None
    if used == "rembg":
        try:
            mask = rembg_mask(rgb8)
        except SegmentationError as exc:
            if method != "auto":
                raise
            log.warning("%s - falling back to GrabCut", exc)
            used = "grabcut"
    if mask is None:
        mask = grabcut_mask(rgb8) if used == "grabcut" else non_white_mask(rgb8)
    log.info("no alpha channel: found the object with %s (%.1f %% of the image)", used, 100.0 * mask.mean())
    return Segmentation(mask=mask, method=used)
