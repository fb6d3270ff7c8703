"""Shared pytest configuration: the `gpu` and `slow` markers are declared once here.

* ``@pytest.mark.gpu`` tests are skipped when ``torch.cuda.is_available()`` is False.
* ``@pytest.mark.slow`` tests are skipped unless ``--runslow`` is given.
"""
from __future__ import annotations

import os

import pytest

# Triton picks its interpreter when it is imported, and some libraries the suite loads (diffusers,
# transformers) import Triton early: choose the CPU interpreter here, before any of them, so the
# recon kernel tests run through it on machines without a GPU.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    has_gpu = _cuda_available()
    run_slow = config.getoption("--runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow; pass --runslow")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A seeded tiny random Zero123 checkpoint in the original formats (.ckpt, .safetensors, YAML)."""
    from vfrt.models import write_tiny_checkpoint
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"), seed=0, image_size=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from vfrt.models import load_zero123
    return load_zero123(tiny_checkpoint.ckpt, config=tiny_checkpoint.yaml)


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """An 80x80 RGBA photo: random colours, an opaque 50x40 object on a transparent background."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    img = np.zeros((80, 80, 4), np.uint8)
    img[..., :3] = rng.integers(0, 255, (80, 80, 3))
    img[15:65, 20:60, 3] = 255
    path = tmp_path_factory.mktemp("img") / "object.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """vfrt's cache (built engines, fingerprints) in a temporary folder: a user's real cache never
    changes what a test does (e.g. `vfrt run -c tiny.ckpt` finding engines built on this machine)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("vfrt_cache")
        mp.setenv("VFRT_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def fake_backend(tiny_model):
    """A 'fake' engine backend for tests of everything around artifacts (manifests, checks, cache
    lookup, publishing): its exporter writes a small file per network, its loader returns eager
    executors over the tiny model's networks (so the engine's results equal the torch path's)."""
    import torch

    from vfrt.engines import engine_dir
    from vfrt.engines.executors import EagerExecutor
    from vfrt.engines.specs import build_networks
    from vfrt.export import build

    networks = build_networks(tiny_model, "cpu", torch.float32, torch.float32, channels_last=False)

    def export(spec, module, path, device):
        path.write_bytes(f"fake artifact of {spec.name}\n".encode() * 64)
        return build.ExportedNetwork(spec)

    def load(manifest, directory, device):
        specs = manifest.specs()
        return {name: EagerExecutor(specs[name], networks.module(name)) for name in specs}

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(build.EXPORTERS, "fake", lambda: build.Exporter(".bin", lambda device: None, export))
        mp.setitem(engine_dir.ENGINE_BACKENDS, "fake", lambda: engine_dir.BackendLoader(lambda: "fake 1", load))
        yield networks
