"""Batched orbits and the multi-GPU row split on CUDA: CUDA-graph replays (and NCCL inside them) against one
orbit at a time in one process (tiny model; the full-size figures come from benchmarks/bench_*.py)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _images(n):
    g = torch.Generator().manual_seed(4)
    return [torch.rand((1, 3, 64, 64), generator=g) * 2 - 1 for _ in range(n)]


def _sampler(seed=1):
    from vfrt import SamplerConfig
    return SamplerConfig(steps=10, seed=seed)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
def test_batched_graph_replays_equal_one_orbit_at_a_time(tiny_model, dtype, tol, monkeypatch):
    """Three photos in two slots (continuous batching), graphs per total row count, vs three single orbits."""
    from vfrt import EngineConfig, Pipeline
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    pipe = Pipeline(tiny_model, EngineConfig(backend="fast", device="cuda", dtype=dtype, vae_dtype=dtype,
                                             compile=False))
    images = _images(3)
    alone = [pipe.orbit(im, generate=3, sampler=_sampler(), preprocess=False) for im in images]
    together = pipe.orbit_many(images, generate=3, sampler=_sampler(), batch=2, preprocess=False,
                               resume=[alone[0].images[:1], (), ()])
    for got, want in zip(together, alone):
        assert np.abs(got.images - want.images).max() <= tol
    assert {5, 6, 7} <= set(pipe.engine.step_cache.captured)   # R of the rounds with two objects


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_with_nccl_inside_the_graphs_equal_one(tiny_checkpoint):
    from vfrt import EngineConfig
    from vfrt.runtime.multigpu import CheckpointPipeline, orbit_multi_gpu
    make = CheckpointPipeline(str(tiny_checkpoint.ckpt), str(tiny_checkpoint.yaml),
                              EngineConfig(backend="fast", dtype="float32", vae_dtype="float32", compile=False))
    one = orbit_multi_gpu(make, _images(2), generate=4, sampler=_sampler(), batch=2, preprocess=False, gpus=1)
    two = orbit_multi_gpu(make, _images(2), generate=4, sampler=_sampler(), batch=2, preprocess=False, gpus=2)
    for a, b in zip(one, two):
        assert np.abs(a.images - b.images).max() <= 1e-4
