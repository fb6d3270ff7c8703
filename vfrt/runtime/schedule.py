"""DDPM noise schedule and the DDIM step coefficients used by ViewFusion (SPEC §3).

Symbols (DDIM paper, Song et al. 2021, eq. 12) -> names here:
    alpha_bar_t          -> ``a_t``        (``alphas_cumprod[t]``)
    alpha_bar_{t-1}      -> ``a_prev``
    sigma_t(eta)         -> ``sigma``
    sqrt(1 - alpha_bar_t)-> ``sqrt_one_minus_a_t``

The numbers are produced with the same dtypes as the original code so that a float32
reference run matches it to rounding: the 1000-step schedule is computed in float64 and
stored as float32; sigma is computed in float64 from those float32 values; every per-step
scalar handed to the sampler is float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def linear_alphas_cumprod(timesteps: int = 1000, linear_start: float = 0.00085,
                          linear_end: float = 0.012) -> np.ndarray:
    """``alphas_cumprod`` of ldm's "linear" schedule, rounded to float32 as the original stores it.

    betas = linspace(sqrt(start), sqrt(end), T, float64) ** 2;  alphas_cumprod = cumprod(1 - betas).
    Returns: (T,) float32 numpy array.
    """
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas.numpy(), axis=0)
    return alphas_cumprod.astype(np.float32)


def linear_betas(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> np.ndarray:
    """(T,) float32 betas of the linear schedule (for checking checkpoint buffers)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return betas.numpy().astype(np.float32)


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step DDIM coefficients, in the order the sampler runs them (largest t first).

    Attributes (all numpy, length S = number of UNet evaluations per view):
        timesteps:           (S,) int64, e.g. [976, 963, ..., 1] for 75 DDIM steps (76 entries).
        a_t, a_prev, sigma, sqrt_one_minus_a_t: (S,) float32.
        eta: the DDIM eta used for sigma.
    """

    timesteps: np.ndarray
    a_t: np.ndarray
    a_prev: np.ndarray
    sigma: np.ndarray
    sqrt_one_minus_a_t: np.ndarray
    eta: float

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def coefficients(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """All per-step scalars as float32 tensors of shape (S,) on ``device``."""
        return {name: torch.from_numpy(getattr(self, name).copy()).to(device)
                for name in ("a_t", "a_prev", "sigma", "sqrt_one_minus_a_t")}


def ddim_timesteps(ddim_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """ldm's ``make_ddim_timesteps(uniform)``: ``range(0, T, T // S) + 1``.

    For S = 75 this has 77 entries (1, 14, ..., 989): 1000 // 75 = 13 does not divide 1000.
    """
    if ddim_steps < 1 or ddim_steps > num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {ddim_steps}")
    c = num_train_timesteps // ddim_steps
    ts = np.asarray(list(range(0, num_train_timesteps, c))) + 1
    if ts[-1] >= num_train_timesteps:
        # e.g. 3, 9, 27, 37 or 111 steps: range(0, 1000, c) reaches 999 and +1 indexes past the
        # schedule (the original crashes with an IndexError there)
        ok = next(s for s in range(ddim_steps + 1, num_train_timesteps)
                  if (np.arange(0, num_train_timesteps, num_train_timesteps // s)[-1] + 1) < num_train_timesteps)
        raise ValueError(f"steps={ddim_steps} is not usable with the original DDIM discretisation (it would "
                         f"need timestep {ts[-1]} of 0..{num_train_timesteps - 1}); use e.g. steps={ok}")
    return ts


def make_ddim_schedule(ddim_steps: int = 75, eta: float = 1.0, *, num_train_timesteps: int = 1000,
                       linear_start: float = 0.00085, linear_end: float = 0.012) -> DDIMSchedule:
    """The schedule ViewFusion's ``my_ddim.DDIMSampler`` runs (SPEC §3).

    The sampler's default ``t_start=-1`` drops the LARGEST DDIM timestep, so S DDIM steps run
    ``len(range(0, 1000, 1000 // S)) - 1`` UNet evaluations: 76 for S = 75 (t = 976 ... 1).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alphacums = linear_alphas_cumprod(num_train_timesteps, linear_start, linear_end)  # float32
    ts = ddim_timesteps(ddim_steps, num_train_timesteps)
    # ddim_alphas: float32 values; ddim_alphas_prev: float64 copies of float32 values.
    alphas = alphacums[ts]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ts[:-1]].tolist(), dtype=np.float64)
    a64 = alphas.astype(np.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
    sqrt_one_minus = np.sqrt(np.float32(1.0) - alphas).astype(np.float32)
    run = len(ts) - 1  # timesteps[:-1]: the largest one is dropped
    if run < 1:
        raise ValueError(f"steps={ddim_steps} leaves no UNet step after the original's t_start=-1 drop; use >= 2")
    order = np.arange(run)[::-1]  # index = total_steps - i - 1
    return DDIMSchedule(
        timesteps=ts[order].astype(np.int64),
        a_t=alphas[order].astype(np.float32),
        a_prev=alphas_prev[order].astype(np.float32),
        sigma=sigmas[order].astype(np.float32),
        sqrt_one_minus_a_t=sqrt_one_minus[order],
        eta=float(eta),
    )
