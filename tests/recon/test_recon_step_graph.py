"""The training step that a CUDA graph can capture (``ReconConfig.cuda_graph``).

Everything a step reads per step lives on the device (cos-anneal ratio, sharpness floor, finite-
difference eps, learning rates, loss slot), so one captured step can be replayed for every step. On the
CPU the option falls back to the eager step (said in the log) and training is unchanged, bit for bit; the
GPU test holds the captured run to the same recipe run without capture.
"""
from __future__ import annotations

import logging

import pytest
import torch

from vfrt.recon import ReconConfig
from vfrt.recon.data import load_views
from vfrt.recon.fields import VarianceNetwork, build_fields
from vfrt.recon.renderer import CosAnneal, render_rays
from vfrt.recon import trainer
from vfrt.recon.trainer import train_neus

TINY = dict(steps=10, image_size=32, nan_check_every=2, warmup_steps=3, cos_anneal_steps=6, progressive_level_steps=3)


def _params(fields) -> list[torch.Tensor]:
    return [p.detach().clone() for m in fields.modules() for p in m.parameters()]


def test_cuda_graph_on_the_cpu_trains_eagerly_and_says_so(tiny_orbit, caplog):
    data = load_views(tiny_orbit, image_size=32)
    plain = train_neus(data, ReconConfig.from_preset("quick", **TINY, device="cpu"))
    with caplog.at_level(logging.INFO, logger="vfrt.recon.trainer"):
        asked = train_neus(data, ReconConfig.from_preset("quick", **TINY, device="cpu", cuda_graph=True))
    assert "cuda_graph: needs CUDA and the Triton encoding" in caplog.text
    assert plain.loss_history == asked.loss_history
    assert all(torch.equal(a, b) for a, b in zip(_params(plain.fields), _params(asked.fields)))


@pytest.mark.parametrize("ratio", [0.0, 1.0 / 3.0, 0.7, 1.0])
def test_cos_anneal_on_the_device_renders_as_the_number(ratio):
    """The device-scalar form of the cos-annealing ratio gives the same floats as the plain number."""
    cfg = ReconConfig.from_preset("quick", **TINY, device="cpu")
    fields = build_fields(cfg, "reference")
    gen = torch.Generator().manual_seed(3)
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen), dim=-1)
    o = -1.5 * d + 0.1 * torch.randn(64, 3, generator=gen)
    anneal = CosAnneal.zeros(torch.device("cpu"))
    anneal.fill_(ratio)
    kw = dict(n_samples=8, n_importance=8, up_sample_steps=2, perturb=False)
    a = render_rays(fields, o, d, cos_anneal_ratio=ratio, **kw)
    b = render_rays(fields, o, d, cos_anneal_ratio=anneal, **kw)
    assert torch.equal(a.color, b.color) and torch.equal(a.opacity, b.opacity)


def test_the_sharpness_floor_is_a_device_scalar():
    var = VarianceNetwork(0.3)                                    # exp(3) ~ 20
    assert var.inv_s().item() == pytest.approx(torch.exp(torch.tensor(3.0)).item())
    var.set_floor(100.0)
    value = var.inv_s()
    assert value.item() == 100.0
    value.backward()
    assert float(var.variance.grad) == 0.0                        # floored: no gradient to the variance
    var.set_floor(0.0)                                            # none
    assert var.inv_s().item() == pytest.approx(torch.exp(torch.tensor(3.0)).item())


@pytest.mark.gpu
def test_the_captured_step_trains_as_the_same_step_uncaptured(tiny_orbit, monkeypatch):
    """Captured after WARMUP_STEPS eager steps vs the same recipe never captured (WARMUP_STEPS raised
    above the step count): the same draws (default CUDA generator), so the losses agree until the Triton
    backward's atomic adds (their order varies) make the runs drift; both train."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    data = load_views(tiny_orbit, image_size=32)
    cfg = ReconConfig.from_preset("default", **{**TINY, "steps": 40, "nan_check_every": 1}, device="cuda",
                                  backend="triton", cuda_graph=True)
    captured = train_neus(data, cfg)
    monkeypatch.setattr(trainer, "WARMUP_STEPS", 10_000)
    uncaptured = train_neus(data, cfg)
    a = dict(captured.loss_history)
    b = dict(uncaptured.loss_history)
    for step in range(1, 6):                                       # 3 warm-up steps, the capture, a replay
        assert a[step] == pytest.approx(b[step], rel=1e-3), step
    assert all(torch.isfinite(torch.tensor(list(a.values()))))
    assert a[40] < a[1] and b[40] < b[1]
    assert a[40] == pytest.approx(b[40], rel=0.25)
