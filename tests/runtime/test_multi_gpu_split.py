"""One orbit with each step's rows split across processes (gloo on the CPU) against one process."""
import numpy as np
import pytest
import torch

from vfrt import EngineConfig, SamplerConfig
from vfrt.engines.distributed import DistributedError, RowSplit
from vfrt.engines.step import split_rows
from vfrt.runtime.multigpu import CheckpointPipeline, orbit_multi_gpu, run_multi_gpu, spawn_ranks
from vfrt.runtime.run import RunConfig, run_to_folder

STEPS = 8
TOL = 1e-5     # the all-reduce sums the rows' partial products in another order than one GEMM


def test_row_slices_cover_every_row_once():
    for total in (1, 2, 5, 26, 27):
        for parts in (1, 2, 3, 4):
            slices = [split_rows(total, parts, p) for p in range(parts)]
            assert slices[0][0] == 0 and slices[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
            sizes = [hi - lo for lo, hi in slices]
            assert max(sizes) - min(sizes) <= 1
    assert RowSplit(1, 4).rows(2) == (0, 1) and RowSplit(0, 4).rows(2) == (0, 0)   # a rank may get no rows
    with pytest.raises(ValueError):
        RowSplit(2, 2)


@pytest.fixture(scope="module")
def make_pipeline(tiny_checkpoint):
    return CheckpointPipeline(str(tiny_checkpoint.ckpt), str(tiny_checkpoint.yaml),
                              EngineConfig(backend="fast", device="cpu"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image
    g = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_two_processes_equal_one(make_pipeline, image, tmp_path, assert_same_run_folders):
    """2 ranks (gloo): view 0 has 2 rows (one each), later views 3 and 4 rows; guided. The folders are
    those of `run_to_folder` in one process (same files and run.json apart from timings)."""
    sampler = SamplerConfig(steps=STEPS, seed=4)
    cfg = RunConfig(views=36, generate=3, preprocess=False, sampler=sampler)
    pipe = make_pipeline("cpu")
    alone = pipe.orbit(image, generate=3, sampler=sampler, preprocess=False)
    split = orbit_multi_gpu(make_pipeline, [image], generate=3, sampler=sampler, preprocess=False, gpus=2,
                            backend="gloo")
    assert np.abs(split[0].images - alone.images).max() <= TOL
    seen = []
    outcomes = run_multi_gpu(make_pipeline, [image], cfg, [tmp_path / "split"], gpus=2, backend="gloo",
                             on_view=lambda i, done, total: seen.append((i, done, total)))
    assert outcomes == [tmp_path / "split"] and seen == [(0, 1, 3), (0, 2, 3), (0, 3, 3)]
    run_to_folder(pipe, image, cfg, tmp_path / "alone")
    assert_same_run_folders(tmp_path / "split", tmp_path / "alone")


def test_a_failing_rank_stops_the_run_with_one_error():
    with pytest.raises(DistributedError, match="rank of the 2-process run failed"):
        spawn_ranks(_fail_on_rank_1, 2, backend="gloo")
    with pytest.raises(DistributedError, match="gpus must be an integer >= 1"):
        spawn_ranks(_fail_on_rank_1, 0, backend="gloo")
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="2 GPUs were requested"):
            spawn_ranks(_fail_on_rank_1, 2, backend="nccl")


def _fail_on_rank_1(ctx):
    if ctx.rank == 1:
        raise RuntimeError("rank 1 gives up")
    ctx.share("hello")     # rank 0 waits in a collective until the launcher stops it
    return "unreachable"
