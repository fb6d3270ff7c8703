"""Which reference views each generated view uses, with which weights and pose deltas (SPEC §5).

Every plan is static: it depends only on poses, never on pixels, so it is computed up front and
tested on its own. The arithmetic follows the original scripts' dtypes (float32 angle arrays,
float32 softmax) so that weights and pose conditions match them to rounding.

When no generated view is within reach of a target (e.g. a 4-view orbit: the -90 degree view is
180 degrees from the +90 one), the original scripts crash on an empty softmax; vfrt gives the
input view(s) all the weight instead.

Slot numbering: slots ``0 .. M-1`` are the M input views (M = 1 except in multi-view mode) and
slot ``M + j`` is the j-th generated view, in generation order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: references farther than this (radians) are dropped, except the input view(s).
DROP_DISTANCE = 125.0 / 180.0 * np.pi
#: single-target mode inserts one intermediate view per 10 degrees.
SINGLE_STEP = np.pi / 18


@dataclass(frozen=True)
class ViewPlan:
    """How to generate one view.

    Attributes:
        pose: (polar, azimuth, radius) of the target relative to input view 0; radians.
        references: (K,) int64 slot ids of the reference views, input view first.
        weights: (K,) float32 interpolation weights w_k, summing to 1.
        pose_conditions: (K, 4) float32, SPEC's T: [d_polar, sin d_az, cos d_az, d_radius]
            (target - reference).
    """

    pose: tuple[float, float, float]
    references: np.ndarray
    weights: np.ndarray
    pose_conditions: np.ndarray

    @property
    def K(self) -> int:
        return int(self.references.shape[0])


def _softmax32(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softmax(x, dim=0)


def _single_mode_weights(w: torch.Tensor, inference_temp: float, auto_temp: float) -> None:
    """Single-target weighting (SPEC §5), in place on the float32 distances ``w`` (K,), input first: the
    input gets ``exp(-d_input / pi / tau_inf)``, the others share the rest by ``softmax(-d / max d /
    tau_auto)``; a lone input gets 1. Shared by :func:`plan_single` and :func:`plan_low_ring`."""
    if len(w) > 1:
        w_in = torch.exp(-w[0] / np.pi / inference_temp)
        w[1:] = _softmax32(-w[1:] / w[1:].max() / auto_temp) * (1 - w_in)
        w[0] = w_in
    else:
        w[0] = 1


def orbit_azimuth(v: int, n_views: int) -> float:
    """Azimuth (radians, python float) of generated view v: +10, -10, +20, -20, ... for N = 36."""
    step = 2 * np.pi / n_views * (v // 2 + 1)
    return -step if v & 1 else step


def plan_orbit(n_views: int = 36, generate: int | None = None, inference_temp: float = 0.5,
               auto_temp: float = 0.5) -> list[ViewPlan]:
    """The 360-degree orbit of ``generate_360_view_autoregressive.py`` (SPEC §5).

    Returns one plan per generated view (``generate`` of them, default N - 1), generation order.
    """
    _check_temps(inference_temp, auto_temp)
    if n_views < 2:
        raise ValueError(f"an orbit needs at least 2 views, got views={n_views}")
    total = n_views - 1
    generate = total if generate is None else generate
    if not 1 <= generate <= total:
        raise ValueError(f"generate must be in [1, {total}] for views={n_views}, got {generate}")
    anchors = [0.0]
    plans = []
    for v in range(generate):
        view_angle = orbit_azimuth(v, n_views)
        anchor = np.array(anchors).astype(np.float32)
        rot = view_angle - anchor                                   # float32 (K_all,)
        dist = np.where(np.abs(rot) < np.pi, np.abs(rot), 2 * np.pi - np.abs(rot))
        valid = dist < DROP_DISTANCE
        valid[0] = True
        w = torch.from_numpy(dist)[torch.from_numpy(valid)].clone()
        if v >= 1 and len(w) > 1:
            w_in = np.exp(-(v + 1) / n_views / inference_temp)
            w[1:] = _softmax32(-w[1:] / w[1:].max() / auto_temp) * (1 - w_in)
            w[0] = w_in
        else:
            w[0] = 1
        T = torch.zeros(len(anchors), 4)
        rot_t = torch.from_numpy(rot)
        T[:, 1] = torch.sin(rot_t)
        T[:, 2] = torch.cos(rot_t)
        T = T[torch.from_numpy(valid)]
        plans.append(ViewPlan(pose=(0.0, float(view_angle), 0.0), references=np.nonzero(valid)[0].astype(np.int64),
                              weights=w.numpy().astype(np.float32), pose_conditions=T.numpy()))
        anchors.append(view_angle)
    return plans


def plan_single(delta_polar: float, delta_azimuth: float, delta_radius: float = 0.0,
                inference_temp: float = 0.5, auto_temp: float = 0.5) -> list[ViewPlan]:
    """Single target pose via intermediate views (``generate_zero123renderings_autoregressive.py``).

    Args are in radians (radius in the model's units). The azimuth delta is wrapped to (-pi, pi]
    as the original data loader does. n = ceil(max(|d_az|, |d_polar|) / 10 deg) views are
    generated at fractions (v+1)/n; the last one is the target. A radius-only change (n = 0, on
    which the original crashes) generates the target directly (n = 1).
    """
    _check_temps(inference_temp, auto_temp)
    for name, val in (("delta_polar", delta_polar), ("delta_azimuth", delta_azimuth), ("delta_radius", delta_radius)):
        if not math.isfinite(val):
            raise ValueError(f"{name} must be finite, got {val}")
    if abs(delta_polar) >= np.pi:
        raise ValueError(f"|delta_polar| must be < 180 degrees, got {math.degrees(delta_polar):.1f}")
    az = delta_azimuth % (2 * np.pi)
    az = az - 2 * np.pi if az > np.pi else az
    info = torch.tensor([delta_polar, az, delta_radius])          # float32, as the original
    n = torch.max(torch.ceil(torch.abs(info[1]) / SINGLE_STEP), torch.ceil(torch.abs(info[0]) / SINGLE_STEP))
    n = max(int(n.item()), 1)
    anchors = [np.array([0, 0, 0])]
    plans = []
    for v in range(n):
        view_angle = np.array([(info[0] / n * (v + 1)).item(), (info[1] / n * (v + 1)).item(),
                               (info[2] / n * (v + 1)).item()], dtype=np.float32)
        anchor = np.array(anchors).astype(np.float32)
        rot = view_angle - anchor                                   # (K_all, 3) float32
        dist = np.abs(rot[:, 0]) + np.abs(rot[:, 1])
        valid = dist < DROP_DISTANCE
        valid[0] = True
        w = torch.from_numpy(dist)[torch.from_numpy(valid)].clone()
        if v >= 1:
            _single_mode_weights(w, inference_temp, auto_temp)
        else:
            w[0] = 1
        rot_t = torch.from_numpy(rot)
        T = torch.stack([rot_t[:, 0], torch.sin(rot_t[:, 1]), torch.cos(rot_t[:, 1]), rot_t[:, 2]], dim=1)
        T = T[torch.from_numpy(valid)]
        plans.append(ViewPlan(pose=tuple(float(a) for a in view_angle), references=np.nonzero(valid)[0].astype(np.int64),
                              weights=w.numpy().astype(np.float32),
                              pose_conditions=T.numpy().astype(np.float32)))
        anchors.append(view_angle)
    return plans


def plan_multi_input(input_poses, n_views: int = 36, generate: int | None = None,
                     inference_temp: float = 0.5, auto_temp: float = 1.0) -> list[ViewPlan]:
    """Orbit from several input views (``generate_360_multi_view_autoregressive.py``).

    Args:
        input_poses: (M, 3) (polar, azimuth, radius) of each input view relative to input 0,
            radians; row 0 must be zeros. Generated targets sit at input 0's polar and radius.
    Weights: inputs share exp(-v/(N-1)/tau_inf) by softmax(-d/max d) (no temperature, as in the
    original); generated references share the rest by softmax(-d/max d/tau_auto). Input i > 0's
    distance also counts its polar offset |d_polar_i|.
    """
    _check_temps(inference_temp, auto_temp)
    poses = np.asarray(input_poses, dtype=np.float32).reshape(-1, 3)
    m = poses.shape[0]
    if m < 2:
        raise ValueError("multi-input mode needs at least 2 input views; use orbit() for one")
    if np.any(poses[0] != 0):
        raise ValueError("input_poses[0] must be (0, 0, 0): poses are relative to the first input view")
    total = n_views - 1
    generate = total if generate is None else generate
    if not 1 <= generate <= total:
        raise ValueError(f"generate must be in [1, {total}] for views={n_views}, got {generate}")
    anchors = [poses[i] for i in range(m)]
    plans = []
    for v in range(generate):
        view_angle = np.array([0, orbit_azimuth(v, n_views), 0])      # float64, as the original
        anchor = np.array(anchors).astype(np.float32)
        rot = view_angle - anchor                                       # float64 (K_all, 3)
        rot[:, 1] = rot[:, 1] % (2 * np.pi)
        dist = np.where(np.abs(rot[:, 1]) < np.pi, np.abs(rot[:, 1]), 2 * np.pi - np.abs(rot[:, 1]))
        dist = dist.astype(np.float32)
        for i in range(1, m):
            dist[i] += np.abs(poses[i, 0] - poses[0, 0])
        valid = dist < DROP_DISTANCE
        valid[:m] = True
        w = torch.from_numpy(dist)[torch.from_numpy(valid)].clone()
        w_inputs = np.exp(-v / (n_views - 1) / inference_temp) * _softmax32(-w[:m] / w[:m].max())
        if v >= 1 and len(w) > m:
            w[m:] = _softmax32(-w[m:] / w[m:].max() / auto_temp) * (1 - w_inputs.sum())
        elif v >= 1:  # no generated reference within reach: the inputs take all the weight
            w_inputs = w_inputs / w_inputs.sum()
        w[:m] = w_inputs
        T = torch.zeros(len(anchors), 4)
        T[:, 0] = torch.from_numpy(rot[:, 0])
        T[:, 1] = torch.sin(torch.from_numpy(rot[:, 1]))
        T[:, 2] = torch.cos(torch.from_numpy(rot[:, 1]))
        T[:, 3] = torch.from_numpy(rot[:, 2])
        T = T[torch.from_numpy(valid)]
        plans.append(ViewPlan(pose=(0.0, float(view_angle[1]), 0.0), references=np.nonzero(valid)[0].astype(np.int64),
                              weights=w.numpy().astype(np.float32), pose_conditions=T.numpy()))
        anchors.append(view_angle)
    return plans


def low_ring_azimuth(j: int, n_low: int) -> float:
    """Azimuth (radians) of the j-th view of a low ring: 0 (under the input), then +s, -s, +2s, ... (s = 2 pi / n_low)."""
    return 0.0 if j == 0 else orbit_azimuth(j - 1, n_low)


def plan_low_ring(n_views: int, n_low: int, delta_polar: float, inference_temp: float = 0.5,
                  auto_temp: float = 0.5) -> list[ViewPlan]:
    """A second ring of ``n_low`` views at ``delta_polar`` (radians, positive = below the input's
    elevation) after a complete ``n_views`` orbit: a vfrt extension, not in the original scripts.

    Targets follow :func:`low_ring_azimuth`. References are the input, the orbit's views and the
    low views generated before, at distance ``|d_polar| + |d_azimuth|`` (azimuth wrapped to
    [0, pi]), dropped from ``DROP_DISTANCE`` on except the input; weights as in single-target mode
    (SPEC §5): ``w_input = exp(-d_input / pi / tau_inf)``, the others share the rest by
    ``softmax(-d / max d / tau_auto)``. T = [d_polar, sin d_az, cos d_az, 0] (target - reference).
    Returns the ring's plans only; their slots continue the orbit's (slot ``n_views + j`` is low view j).
    """
    _check_temps(inference_temp, auto_temp)
    if n_low < 1:
        raise ValueError(f"a low ring needs at least 1 view, got {n_low}")
    if not (math.isfinite(delta_polar) and 0 < abs(delta_polar) < np.pi):
        raise ValueError(f"the low ring's polar offset must be within (0, 180) degrees, got {math.degrees(delta_polar):g}")
    anchors = [(0.0, 0.0)] + [(0.0, orbit_azimuth(v, n_views)) for v in range(n_views - 1)]
    plans = []
    for j in range(n_low):
        target = (float(delta_polar), low_ring_azimuth(j, n_low))
        anchor = np.array(anchors, dtype=np.float32)
        d_polar = np.float32(target[0]) - anchor[:, 0]
        d_az = (np.float32(target[1]) - anchor[:, 1]) % np.float32(2 * np.pi)
        wrapped = np.where(d_az <= np.pi, d_az, 2 * np.pi - d_az).astype(np.float32)
        dist = (np.abs(d_polar) + wrapped).astype(np.float32)
        valid = dist < DROP_DISTANCE
        valid[0] = True
        w = torch.from_numpy(dist)[torch.from_numpy(valid)].clone()
        _single_mode_weights(w, inference_temp, auto_temp)
        T = torch.stack([torch.from_numpy(d_polar), torch.sin(torch.from_numpy(d_az)), torch.cos(torch.from_numpy(d_az)),
                         torch.zeros(len(anchors))], dim=1)[torch.from_numpy(valid)]
        plans.append(ViewPlan(pose=(target[0], target[1], 0.0), references=np.nonzero(valid)[0].astype(np.int64),
                              weights=w.numpy().astype(np.float32), pose_conditions=T.numpy().astype(np.float32)))
        anchors.append(target)
    return plans


def orbit_order(azimuths) -> np.ndarray:
    """Indices that sort views by azimuth mod 2*pi (stable), as the original's final ``sorted``."""
    keys = [float(a) % (2 * np.pi) for a in azimuths]
    return np.array(sorted(range(len(keys)), key=lambda i: keys[i]), dtype=np.int64)


def _check_temps(inference_temp: float, auto_temp: float) -> None:
    if not (inference_temp > 0 and math.isfinite(inference_temp)):
        raise ValueError(f"inference_temp must be a positive number, got {inference_temp}")
    if not (auto_temp > 0 and math.isfinite(auto_temp)):
        raise ValueError(f"auto_temp must be a positive number, got {auto_temp}")
