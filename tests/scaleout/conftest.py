"""Fixtures of the scale-out tests: four photos in a folder, their sequential `vfrt run` (the yardstick),
and a local Ray instance with 2 CPUs per test module that needs Ray (Ray takes ~10 s to start on two
busy cores; only test_ray_run.py uses it without a GPU)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

PHOTO_STEMS = ("p0", "p1", "p2", "p3")


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Four seeded RGBA photos (an opaque box of random colours on transparent)."""
    folder = tmp_path_factory.mktemp("photos")
    for i, stem in enumerate(PHOTO_STEMS):
        rng = np.random.default_rng(i)
        img = np.zeros((80, 80, 4), np.uint8)
        img[..., :3] = rng.integers(0, 255, (80, 80, 3))
        img[10 + 2 * i:66, 18:62 - 3 * i, 3] = 255
        Image.fromarray(img).save(folder / f"{stem}.png")
    return folder


@pytest.fixture(scope="session")
def run_args(tiny_checkpoint):
    """`vfrt run` options shared by the sequential and the Ray runs: tiny model, 4 steps, 4 views, CPU."""
    return ["-c", str(tiny_checkpoint.ckpt), "--config", str(tiny_checkpoint.yaml), "--steps", "4", "--views", "4",
            "--device", "cpu"]


@pytest.fixture(scope="session")
def sequential_run(tmp_path_factory, photo_dir, run_args):
    """`vfrt run PHOTOS -o OUT` without Ray, at one torch thread as each Ray CPU worker runs (a CPU's float
    sums depend on how many threads split them: a pixel or two would differ by 1/255 otherwise)."""
    import torch

    from vfrt.cli.main import cli
    out = tmp_path_factory.mktemp("sequential") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(out), "-q"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance (2 CPUs, no GPU) for the tests of one module; the runner reuses a connected driver.

    Module-scoped, not session-scoped: Ray's processes (GCS, raylet, idle workers holding a loaded model)
    should not outlive the tests that use them and share two CPU cores with every later test."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vfrt[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
