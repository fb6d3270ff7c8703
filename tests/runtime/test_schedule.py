"""SPEC §3: the linear schedule, the DDIM timesteps and the 76-step quirk."""
import numpy as np
import pytest
import torch

from vfrt.runtime.schedule import ddim_timesteps, linear_alphas_cumprod, make_ddim_schedule


def test_alphas_cumprod_matches_independent_formula():
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000, dtype=np.float64) ** 2
    expected = np.cumprod(1.0 - betas)
    got = linear_alphas_cumprod()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == np.float32(1 - 0.00085)


def test_75_ddim_steps_give_77_timesteps_and_76_unet_steps():
    ts = ddim_timesteps(75)
    assert len(ts) == 77 and ts[0] == 1 and ts[1] == 14 and ts[-1] == 989
    s = make_ddim_schedule(75, 1.0)
    assert s.num_steps == 76
    assert s.timesteps[0] == 976 and s.timesteps[-1] == 1
    assert np.all(np.diff(s.timesteps) == -13)


def test_step_coefficients_follow_the_ddim_formulas():
    ac = linear_alphas_cumprod().astype(np.float64)
    s = make_ddim_schedule(75, 1.0)
    for i, t in enumerate(s.timesteps):
        prev = ac[s.timesteps[i + 1]] if i + 1 < s.num_steps else ac[0]
        assert s.a_t[i] == np.float32(ac[t])
        assert s.a_prev[i] == np.float32(prev)
        sig = np.sqrt((1 - prev) / (1 - ac[t]) * (1 - ac[t] / prev))
        assert s.sigma[i] == pytest.approx(sig, rel=1e-6)
        assert s.sqrt_one_minus_a_t[i] == pytest.approx(np.sqrt(1 - ac[t]), rel=1e-6)
    assert all(getattr(s, n).dtype == np.float32 for n in ("a_t", "a_prev", "sigma", "sqrt_one_minus_a_t"))


def test_eta_zero_is_deterministic_ddim():
    s = make_ddim_schedule(50, 0.0)
    assert np.all(s.sigma == 0)
    assert s.num_steps == 49  # 1000 // 50 = 20 divides 1000: 50 timesteps, largest dropped


def test_step_counts_that_would_index_past_the_schedule_are_rejected_clearly():
    for steps in (3, 9, 27, 37, 111):
        with pytest.raises(ValueError, match="use e.g. steps="):
            make_ddim_schedule(steps)


@pytest.mark.parametrize("steps", [0, 1, 1001])
def test_bad_step_counts_are_rejected(steps):
    with pytest.raises(ValueError):
        make_ddim_schedule(steps)


def test_coefficients_as_tensors():
    c = make_ddim_schedule(10).coefficients()
    assert set(c) == {"a_t", "a_prev", "sigma", "sqrt_one_minus_a_t"}
    assert all(v.dtype == torch.float32 and v.shape == (9,) for v in c.values())  # 10 timesteps, largest dropped
