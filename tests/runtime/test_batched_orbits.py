"""Batched orbits (several objects per UNet call, continuous batching) against one orbit at a time (CPU, fp32)."""
import json
import shutil

import numpy as np
import pytest
import torch

from vfrt import EngineConfig, NoiseBank, Pipeline, SamplerConfig
from vfrt.runtime.noise import NoiseBankError
from vfrt.runtime.schedule import make_ddim_schedule

STEPS = 8        # 7 UNet steps per view: the maths is the same for 75
TOL = 1e-5       # batched fp32 kernels against separate ones (measured ~1e-7)


def sampler(**settings) -> SamplerConfig:
    return SamplerConfig(**{"steps": STEPS, **settings})


def _image(seed: int) -> torch.Tensor:
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return Pipeline(tiny_model, EngineConfig(backend="fast", device="cpu"))


@pytest.fixture(scope="module")
def images():
    return [_image(s) for s in (11, 12, 13)]


@pytest.fixture(scope="module")
def one_at_a_time(pipe, images):
    """Each photo's 3-view orbit on its own (guided, exact noise from the seed)."""
    return [pipe.orbit(im, generate=3, sampler=sampler(seed=5), preprocess=False) for im in images]


def _assert_same(a, b, tol=TOL):
    assert a.images.shape == b.images.shape
    assert np.abs(a.images - b.images).max() <= tol
    assert a.azimuths.tolist() == b.azimuths.tolist()
    assert [r.tolist() for r in a.references] == [r.tolist() for r in b.references]


@torch.no_grad()
def test_one_batched_step_equals_separate_views(pipe):
    """Three objects in one UNet call - K = 1 guided (s = 3), K = 3 unguided, K = 2 guided (s = 2) - each
    equals its own run; and a UNet limited to 2 rows per call (several calls per step) gives the same."""
    eng = pipe.engine
    g = torch.Generator().manual_seed(3)
    sched = make_ddim_schedule(4, 1.0)
    dens, x_T, noise = [], [], []
    for K, guidance in ((1, 3.0), (3, 1.0), (2, 2.0)):
        refs = [eng.encode_view(torch.rand((1, 3, 64, 64), generator=g) * 2 - 1) for _ in range(K)]
        w = torch.softmax(torch.randn(K, generator=g), 0)
        dens.append(eng.bind(refs, torch.randn((K, 4), generator=g), w, sched, guidance))
        x_T.append(torch.randn((1, 4, 8, 8), generator=g))
        noise.append(torch.randn((sched.num_steps, K, 4, 8, 8), generator=g))
    separate = [d.run(x, n) for d, x, n in zip(dens, x_T, noise)]
    batched = eng.run_batch(dens, x_T, noise)
    assert eng.step_cache.captured == [] and eng.step_cache.capacity["objects"] == 3
    for a, b in zip(batched, separate):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    assert (separate[0] - separate[1]).abs().max() > 1e-2      # the objects really differ
    eng.step_cache.max_call_rows = 2
    try:
        chunked = eng.run_batch(dens, x_T, noise)
    finally:
        eng.step_cache.max_call_rows = eng.executor("unet_step").spec.axis("rows").max
    for a, b in zip(chunked, separate):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    coefficients = dens[0].view.row_coefficients()
    assert coefficients.tolist() == pytest.approx([-2.0, 3.0]) and float(coefficients.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one x_T and one step noise per view"):
        eng.run_batch(dens, x_T[:2], noise)
    other = eng.bind([eng.encode_view(_image(1))], torch.zeros(1, 4), torch.ones(1), make_ddim_schedule(6, 1.0), 3.0)
    with pytest.raises(ValueError, match="share one sampler schedule"):
        eng.run_batch([dens[0], other], x_T[:2], [noise[0], torch.zeros(5, 1, 4, 8, 8)])


def test_continuous_batching_equals_one_orbit_at_a_time(pipe, images, one_at_a_time):
    """Three photos, two slots: photo 0 resumes with one view done, so it leaves a round early and photo 2
    joins while photo 1 is mid-orbit (objects at different views, with different K, share the steps)."""
    events = []
    out = pipe.orbit_many(images, generate=3, sampler=sampler(seed=5), batch=2, preprocess=False,
                          resume=[one_at_a_time[0].images[:1], (), ()],
                          on_view=lambda obj, v, image, plan: events.append((obj, v, plan.K)))
    # round 1: photo 0 view 1 (K=2) with photo 1 view 0 (K=1); round 2: 0/2 with 1/1; then photo 2 joins
    assert events == [(0, 1, 2), (1, 0, 1), (0, 2, 3), (1, 1, 2), (1, 2, 3), (2, 0, 1), (2, 1, 2), (2, 2, 3)]
    for got, want in zip(out, one_at_a_time):
        _assert_same(got, want)
        assert got.mode == "orbit" and got.n_views == 36 and got.seconds > 0
        for a, b in zip(got.noise.step_noise + got.noise.x_T, want.noise.step_noise + want.noise.x_T):
            np.testing.assert_array_equal(a, b)       # each object drew exactly the noise of its own run
    np.testing.assert_array_equal(out[0].images[0], one_at_a_time[0].images[0])   # the resumed view as given


def test_batch_of_one_is_the_orbit(pipe, images, one_at_a_time):
    out = pipe.orbit_many(images[:1], generate=1, sampler=sampler(seed=5), batch=1, preprocess=False)
    np.testing.assert_array_equal(out[0].images, one_at_a_time[0].images[:1])


def test_unguided_batch_with_device_noise_and_noise_banks(pipe, images):
    """guidance 1 (K rows per object), the "fast" noise mode (one device generator per object), and
    replayed banks (one per photo) each equal the one-at-a-time run."""
    fast = sampler(seed=2, guidance=1.0, noise_mode="fast")
    alone = [pipe.orbit(im, generate=2, sampler=fast, preprocess=False) for im in images[:2]]
    together = pipe.orbit_many(images[:2], generate=2, sampler=fast, batch=3, preprocess=False)
    for got, want in zip(together, alone):
        assert got.noise is None
        _assert_same(got, want)
    banks = [pipe.orbit(im, generate=1, sampler=sampler(seed=s, guidance=1.0), preprocess=False)
             for s, im in zip((7, 8), images)]
    replayed = pipe.orbit_many(images[:2], generate=1, sampler=sampler(seed=0, guidance=1.0), batch=2,
                               noise=[b.noise for b in banks], preprocess=False)
    for got, want in zip(replayed, banks):
        _assert_same(got, want)


def test_failures_stop_the_batch_or_are_returned(pipe, images, tmp_path):
    missing = tmp_path / "missing.png"
    bad_bank = NoiseBank(x_T=[np.zeros((1, 4, 8, 8), np.float32)], step_noise=[np.zeros((3, 1, 4, 8, 8), np.float32)])
    out = pipe.orbit_many([missing, images[0], images[1]], generate=1, sampler=sampler(seed=5), batch=2,
                          noise=[None, None, bad_bank], preprocess=False, failures="return")
    assert isinstance(out[0], ValueError) and "missing.png" in str(out[0])
    assert isinstance(out[2], NoiseBankError)
    assert out[1].images.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="missing.png"):
        pipe.orbit_many([missing, images[0]], generate=1, sampler=sampler(), preprocess=False)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        pipe.orbit_many(images, batch=0)
    with pytest.raises(ValueError, match="got 3 images but 1 noise banks"):
        pipe.orbit_many(images, noise=[None])
    with pytest.raises(ValueError, match="resume holds 2 views but the run generates 1"):
        pipe.orbit_many(images[:1], generate=1, sampler=sampler(), resume=[[np.zeros((3, 64, 64))] * 2],
                        preprocess=False)
    with pytest.raises(ValueError, match="at least one image"):
        pipe.orbit_many([])
    with pytest.raises(ValueError, match="failures must be"):
        pipe.orbit_many(images, failures="ignore")


def test_a_non_finite_object_leaves_the_batch_and_the_others_finish(tiny_model, images, monkeypatch):
    """With failures="return" a NaN view drops its object only; with "raise" it stops the run."""
    from vfrt.runtime.pipeline import NonFiniteOutputError
    pipe = Pipeline(tiny_model, EngineConfig(backend="fast", device="cpu"))
    decode = pipe.engine.decode
    calls = []

    def nan_for_the_second_object(z):
        calls.append(1)
        out = decode(z)
        return out * float("nan") if len(calls) % 2 == 0 else out
    monkeypatch.setattr(pipe.engine, "decode", nan_for_the_second_object)
    out = pipe.orbit_many(images[:2], generate=2, sampler=sampler(steps=4), batch=2, preprocess=False,
                          failures="return")
    assert isinstance(out[1], NonFiniteOutputError) and "view 0" in str(out[1])
    assert out[0].images.shape == (2, 3, 64, 64) and np.isfinite(out[0].images).all()
    calls.clear()
    with pytest.raises(NonFiniteOutputError):
        pipe.orbit_many(images[:2], generate=2, sampler=sampler(steps=4), batch=2, preprocess=False)


def test_reference_engine_runs_batches_one_view_after_another(tiny_model, images):
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu"))
    alone = ref.orbit(images[0], generate=1, sampler=sampler(steps=4), preprocess=False)
    out = ref.orbit_many(images[:2], generate=1, sampler=sampler(steps=4), batch=2, preprocess=False)
    np.testing.assert_array_equal(out[0].images, alone.images)


def test_batched_run_folders_equal_one_run_at_a_time(pipe, tmp_path, assert_same_run_folders):
    """run_many_to_folders: one folder per photo, as run_to_folder writes it alone; a photo that fails does
    not stop the others; an unfinished folder resumes."""
    from PIL import Image

    from vfrt.runtime.run import RunConfig, RunError, run_many_to_folders, run_to_folder
    photos = []
    for seed in (1, 2):
        path = tmp_path / f"photo{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        photos.append(path)
    cfg = RunConfig(views=36, generate=2, preprocess=False, sampler=sampler(seed=3))
    progress = []
    outcomes = run_many_to_folders(pipe, photos + [tmp_path / "missing.png"], cfg,
                                   [tmp_path / "many" / p for p in ("a", "b", "c")], batch=2,
                                   on_view=lambda i, done, total: progress.append((i, done, total)))
    assert outcomes[:2] == [tmp_path / "many" / "a", tmp_path / "many" / "b"]
    assert isinstance(outcomes[2], ValueError) and "missing.png" in str(outcomes[2])
    assert sorted(progress) == [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)]
    for photo, name in zip(photos, ("a", "b")):
        alone = run_to_folder(pipe, photo, cfg, tmp_path / "alone" / name)
        assert_same_run_folders(tmp_path / "many" / name, alone)
    # a finished folder in the way is that photo's error; an interrupted one resumes where it stopped
    again = run_many_to_folders(pipe, photos[:1], cfg, [tmp_path / "many" / "a"], batch=2)
    assert isinstance(again[0], RunError) and "already exists" in str(again[0])
    partial = tmp_path / "resumed.partial"
    shutil.copytree(tmp_path / "alone" / "b", partial)
    (partial / "generated").mkdir()
    first = json.loads((partial / "run.json").read_text())
    (partial / "run.json").write_text(json.dumps({"fingerprint": first["fingerprint"], "complete": False}))
    np.save(partial / "generated" / "v00.npy", np.full((3, 64, 64), 0.25, np.float32))
    progress.clear()
    resumed = run_many_to_folders(pipe, photos[1:], cfg, [tmp_path / "resumed"], batch=2,
                                  on_view=lambda i, done, total: progress.append((i, done, total)))
    assert resumed == [tmp_path / "resumed"] and progress == [(0, 2, 2)]   # only view 1 was generated
    with pytest.raises(RunError, match="mode 'orbit'"):
        run_many_to_folders(pipe, photos, RunConfig(mode="single", delta_azimuth=30.0), [tmp_path / "x"] * 2, batch=2)


@torch.no_grad()
def test_a_lone_row_runs_with_a_zero_weight_copy(pipe):
    """An unguided K = 1 view has one row: the UNet gets two (the copy weighs 0), the result is the view's."""
    eng = pipe.engine
    sched = make_ddim_schedule(4, 1.0)
    den = eng.bind([eng.encode_view(_image(4))], torch.zeros(1, 4), torch.ones(1), sched, 1.0)
    x_T = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    calls = []
    unet = eng.executor("unet_step")
    run = unet.run
    unet.run = lambda inputs, *a, **k: calls.append(inputs["x"].shape[0]) or run(inputs, *a, **k)
    try:
        z = den.run(x_T, torch.zeros((sched.num_steps, 1, 4, 8, 8)))
    finally:
        del unet.run
    assert calls == [2] * sched.num_steps
    x, table = x_T.clone(), den.view.coefficients      # the same step by hand on the single row
    for i in range(sched.num_steps):
        eps = run({"x": x, "h0": den.view.h0, "emb": den.view.emb_table[i:i + 1], "consts": den.view.consts})["eps"]
        x = table[0, i] * x + table[1, i] * eps.float()
    torch.testing.assert_close(z, x, atol=TOL, rtol=0)
