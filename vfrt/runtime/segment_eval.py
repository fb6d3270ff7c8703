"""Measuring segmentation: RGBA cut-outs composited onto seeded procedural backgrounds, and the
IoU of the mask found in the composite against the cut-out's own alpha.

Serves benchmarks/segmentation_iou.py (docs/SEGMENTATION.md) and the CI test that holds an IoU
floor on the bundled photos, so both measure the same thing.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Background = Literal["plain", "gradient", "textured", "white"]
BACKGROUNDS: tuple[str, ...] = get_args(Background)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random mid-range RGB colour in [0, 1] (not near-white, which is the easy case)."""
    return rng.uniform(0.1, 0.85, 3)


def make_background(kind: Background, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1].

    * ``plain``: one colour; ``white``: pure white (the renders' case);
    * ``gradient``: a linear blend of two colours along a random direction;
    * ``textured``: smooth colour blobs (bicubic-upsampled random grid over a 3-colour palette)
      plus stripes at a random angle and period, and pixel noise - like a patterned cloth or wood.
    """
    if kind not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "white":
        return np.ones((height, width, 3), np.float32)
    if kind == "plain":
        return np.broadcast_to(_colour(rng).astype(np.float32), (height, width, 3)).copy()
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx / width + np.sin(angle) * yy / height
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        a, b = _colour(rng), _colour(rng)
        return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    from PIL import Image
    palette = np.stack([_colour(rng) for _ in range(3)])
    blobs = []
    for _ in range(3):
        grid = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        blobs.append(np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)))
    weights = np.exp(4.0 * np.stack(blobs, -1))
    weights /= weights.sum(-1, keepdims=True)
    image = weights @ palette
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.12) * min(height, width)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    image = image * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def composite(rgba8: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 cut-out over an (H, W, 3) float background -> (H, W, 3) uint8 photo."""
    rgba = rgba8.astype(np.float32) / 255.0
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + background * (1 - alpha)
    return np.round(rgb * 255.0).astype(np.uint8)


def alpha_mask(rgba8: np.ndarray) -> np.ndarray:
    """(H, W) bool ground truth: alpha > 127 (the rule preprocessing applies to RGBA inputs)."""
    return rgba8[..., 3] > 127


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
