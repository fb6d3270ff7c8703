"""Orbit cameras of ViewFusion / SyncDreamer (SPEC §8): the poses a run writes (``cameras.json``,
``transforms.json``) and NeuS reads back.

Conventions
-----------
* World: z up, object centred in the unit sphere.
* Default camera: 256x256, focal 280 px; rays through integer pixel coordinates
  ``K^-1 [u, v, 1]`` with ``cx = cy = 128`` (SPEC §8), which is ``cx = cy = 128.5`` in
  nerfstudio's pixel-centre convention. Internally every intrinsic is kept in the
  nerfstudio convention: pixel ``(u, v)`` (integer index) is the ray through
  ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``.
* World-to-camera (OpenCV: +z forward, y down) of azimuth ``a``, elevation ``e`` above the
  horizon: ``row0 = [-sin a, cos a, 0]``, ``row1 = [sin e cos a, sin e sin a, -cos e]``,
  ``row2 = row0 x row1``, ``t = [0, 0, distance]``.
* OpenGL camera-to-world (``transforms.json``): ``[R^T | -R^T t] . diag(1, -1, -1, 1)``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_IMAGE_SIZE = 256
DEFAULT_FOCAL = 280.0
DEFAULT_DISTANCE = 1.5
DEFAULT_ELEVATION_DEG = 30.0
_GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in nerfstudio's pixel-centre convention (see module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def default(cls, image_size: int = DEFAULT_IMAGE_SIZE, focal_256: float = DEFAULT_FOCAL) -> "Intrinsics":
        """SPEC §8 camera scaled to ``image_size`` (focal 280 px and cx = 128.5 at 256 px)."""
        s = image_size / DEFAULT_IMAGE_SIZE
        c = (DEFAULT_IMAGE_SIZE / 2 + 0.5) * s
        return cls(focal_256 * s, focal_256 * s, c, c, image_size, image_size)

    def resized(self, width: int, height: int) -> "Intrinsics":
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)


def world_to_camera(azimuth_rad: float, elevation_rad: float, distance: float = DEFAULT_DISTANCE) -> np.ndarray:
    """(4, 4) float64 OpenCV world-to-camera matrix of SPEC §8."""
    a, e = azimuth_rad, elevation_rad
    row0 = np.array([-math.sin(a), math.cos(a), 0.0])
    row1 = np.array([math.sin(e) * math.cos(a), math.sin(e) * math.sin(a), -math.cos(e)])
    row2 = np.cross(row0, row1)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([row0, row1, row2])
    w2c[:3, 3] = [0.0, 0.0, distance]
    return w2c


def camera_to_world_opengl(w2c: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[R^T | -R^T t] . diag(1, -1, -1, 1)`` of an OpenCV w2c."""
    r, t = w2c[:3, :3], w2c[:3, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = r.T
    c2w[:3, 3] = -r.T @ t
    return c2w @ _GL_FROM_CV


def opengl_to_opencv_c2w(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world from an OpenGL one (flip the camera's y and z axes). Batched ok."""
    return c2w_gl @ _GL_FROM_CV


def orbit_azimuths_deg(n_views: int) -> list[float]:
    """Azimuth of view ``i`` of an ``n_views`` orbit: ``i * 360 / n_views`` degrees."""
    return [i * 360.0 / n_views for i in range(n_views)]


def orbit_world_to_camera(n_views: int, elevation_deg: float = DEFAULT_ELEVATION_DEG,
                          distance: float = DEFAULT_DISTANCE) -> np.ndarray:
    """(n_views, 4, 4) OpenCV world-to-camera matrices of an evenly spaced orbit."""
    e = math.radians(elevation_deg)
    return np.stack([world_to_camera(math.radians(a), e, distance) for a in orbit_azimuths_deg(n_views)])


def transforms_dict(n_views: int, elevation_deg: float = DEFAULT_ELEVATION_DEG,
                    image_names: Sequence[str] | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                    focal_256: float = DEFAULT_FOCAL, distance: float = DEFAULT_DISTANCE) -> dict:
    """The nerfstudio ``transforms.json`` content of an orbit (see :func:`write_transforms_json`)."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    names = list(image_names) if image_names is not None else [f"views/{i:03d}.png" for i in range(n_views)]
    if len(names) != n_views:
        raise ValueError(f"got {len(names)} image names for {n_views} views")
    k = Intrinsics.default(image_size, focal_256)
    frames = []
    for i, (az, w2c) in enumerate(zip(orbit_azimuths_deg(n_views), orbit_world_to_camera(n_views, elevation_deg, distance))):
        frames.append({
            "file_path": names[i],
            "transform_matrix": camera_to_world_opengl(w2c).tolist(),
            "azimuth_deg": az,
            "elevation_deg": elevation_deg,
        })
    return {
        "camera_model": "OPENCV",
        "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "camera_distance": distance,
        "frames": frames,
    }


def write_transforms_json(path: str | Path, n_views: int, elevation_deg: float = DEFAULT_ELEVATION_DEG,
                          image_names: Sequence[str] | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                          focal_256: float = DEFAULT_FOCAL, distance: float = DEFAULT_DISTANCE) -> Path:
    """Write a nerfstudio ``transforms.json`` for an ``n_views`` orbit (SPEC §8) and return its path.

    ``path`` is the file to write (a directory gets ``transforms.json`` appended).
    ``image_names`` default to ``views/000.png ...`` (relative to the file's folder).
    ``elevation_deg`` is the elevation above the horizon (30 for Zero123's polar 60).
    At 256 px: ``fl_x = fl_y = 280``, ``cx = cy = 128.5``; other sizes scale these.
    """
    return write_transforms_json_rings(path, [(n_views, elevation_deg, image_names)], image_size, focal_256, distance)


def write_transforms_json_rings(path: str | Path, rings: Sequence[tuple[int, float, Sequence[str] | None]],
                                image_size: int = DEFAULT_IMAGE_SIZE, focal_256: float = DEFAULT_FOCAL,
                                distance: float = DEFAULT_DISTANCE) -> Path:
    """One ``transforms.json`` for several orbit rings: ``rings`` = ``(n_views, elevation_deg, image names or
    None)`` each (view i of a ring at azimuth i * 360 / n_views); the frames of the rings in that order.
    ``path``: the file (a directory gets ``transforms.json`` appended)."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [transforms_dict(n, elevation, names, image_size, focal_256, distance) for n, elevation, names in rings]
    data = {**parts[0], "frames": [f for part in parts for f in part["frames"]]}
    path.write_text(json.dumps(data, indent=2))
    return path
