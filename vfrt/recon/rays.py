"""Ray generation for NeuS from the orbit cameras of :mod:`vfrt.runtime.cameras` (pixel-centre convention there)."""
from __future__ import annotations

from vfrt.runtime.cameras import Intrinsics


def pixel_rays(c2w_cv, intrinsics: Intrinsics):
    """Rays of every pixel of each camera.

    Args:
        c2w_cv: (N, 4, 4) torch float32 OpenCV camera-to-world.
    Returns:
        origins (N, H, W, 3), directions (N, H, W, 3) unit length, torch float32.
    """
    import torch

    k = intrinsics
    v, u = torch.meshgrid(torch.arange(k.height, dtype=torch.float32), torch.arange(k.width, dtype=torch.float32),
                          indexing="ij")
    d_cam = torch.stack([(u + 0.5 - k.cx) / k.fx, (v + 0.5 - k.cy) / k.fy, torch.ones_like(u)], dim=-1)
    c2w = c2w_cv.to(torch.float32)
    dirs = torch.einsum("nij,hwj->nhwi", c2w[:, :3, :3], d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs).contiguous()
    return origins, dirs
