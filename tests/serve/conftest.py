"""Fixtures of the serve tests: a tiny-checkpoint pipeline on the CPU, photos, and services.

Each test module skips itself, saying why, when the ``serve`` extra is not installed.
"""
from __future__ import annotations

import threading
import time

from pathlib import Path

import pytest

from vfrt import EngineConfig, Pipeline
from vfrt.recon import ReconConfig
from vfrt.serve.config import ServeConfig

#: NeuS settings small enough for a test on two CPU cores (a few seconds; one progress report)
TINY_RECON = ReconConfig.from_preset("quick", steps=25, mc_resolution=32, turntable_frames=2, turntable_size=32,
                                     device="cpu")


class GatedPipeline(Pipeline):
    """A real pipeline whose orbits pause after each generated view until ``gate`` is set, and count
    the views they generate (``generated``) - so a test can act while a job is between two views."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.reached = threading.Event()
        self.generated = 0

    def orbit(self, image, views=36, *, on_view=None, **kwargs):
        def gated(v, img, plan):
            self.generated += 1
            self.reached.set()
            assert self.gate.wait(30), "the test never opened the gate"
            if on_view is not None:
                on_view(v, img, plan)
        return super().orbit(image, views, on_view=gated, **kwargs)


def _pipeline(cls, tiny_checkpoint):
    return cls.from_checkpoint(tiny_checkpoint.ckpt, tiny_checkpoint.yaml, engine=EngineConfig(device="cpu"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint):
    """What `vfrt run -c tiny.ckpt --config tiny.yaml --device cpu` loads."""
    return _pipeline(Pipeline, tiny_checkpoint)


@pytest.fixture
def gated_pipeline(tiny_checkpoint):
    return _pipeline(GatedPipeline, tiny_checkpoint)


@pytest.fixture(scope="session")
def photo():
    """A real RGBA product photo (background removed) from the test data."""
    return Path(__file__).resolve().parents[1] / "data" / "real_images" / "chair_7_rgba.png"


@pytest.fixture
def serve_config(tmp_path):
    def make(**overrides):
        return ServeConfig(**{"runs_dir": tmp_path / "jobs", "recon": TINY_RECON, "ui": False, **overrides})
    return make


@pytest.fixture
def wait_ended():
    """``wait_ended(client, job_id)``: poll ``GET /api/jobs/{id}`` until the job is no longer queued
    or running; its last status."""
    def wait(client, job_id: str, timeout: float = 120.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            status = client.get(f"/api/jobs/{job_id}").json()
            if status["state"] not in ("queued", "running"):
                return status
            assert time.monotonic() < end, f"job {job_id} did not end within {timeout} s: {status}"
            time.sleep(0.05)
    return wait
