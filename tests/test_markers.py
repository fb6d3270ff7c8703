"""The gpu marker must really skip on a machine without CUDA (and run where there is one)."""
import pytest
import torch


@pytest.mark.gpu
def test_gpu_marker_only_runs_with_cuda():
    assert torch.cuda.is_available()


def test_gpu_marker_is_registered(pytestconfig):
    markers = "\n".join(pytestconfig.getini("markers"))
    assert "gpu:" in markers and "slow:" in markers
