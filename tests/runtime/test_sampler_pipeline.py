"""The reference sampler end to end on a tiny checkpoint, and the fast engine against it (CPU, fp32)."""
import numpy as np
import pytest
import torch

from vfrt import EngineConfig, NoiseBank, Pipeline, SamplerConfig
from vfrt.engines.base import ddim_update
from vfrt.runtime.noise import NoiseBankError, SeededNoiseBank
from vfrt.runtime.poses import plan_orbit
from vfrt.runtime.schedule import make_ddim_schedule

STEPS = 8  # 7 UNet steps per view keeps the CPU suite fast; the maths is the same for 75


def sampler(**settings) -> SamplerConfig:
    return SamplerConfig(**{"steps": STEPS, **settings})


def cpu(backend="fast", **choices) -> EngineConfig:
    return EngineConfig(backend=backend, device="cpu", **choices)


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(11)
    return torch.rand((1, 3, 64, 64), generator=g) * 2 - 1


@pytest.fixture(scope="module")
def ref_pipe(tiny_model):
    return Pipeline(tiny_model, cpu("reference"))


@pytest.fixture(scope="module")
def ref_orbit(ref_pipe, image):
    return ref_pipe.orbit(image, views=36, generate=4, sampler=sampler(seed=5), preprocess=False)


def test_orbit_result_layout(ref_orbit, image):
    out = ref_orbit
    assert out.images.shape == (4, 3, 64, 64) and out.images.dtype == np.float32
    assert np.all(out.images >= -1) and np.all(out.images <= 1)
    np.testing.assert_allclose(np.degrees(out.azimuths), [10, -10, 20, -20], atol=1e-4)
    assert [len(r) for r in out.references] == [1, 2, 3, 4]
    assert out.noise.K.tolist() == [1, 2, 3, 4] and out.noise.step_noise[0].shape == (STEPS - 1, 1, 4, 8, 8)
    np.testing.assert_array_equal(out.inputs, image.numpy())
    orbit = out.orbit_images()
    assert orbit.shape == (5, 3, 64, 64)
    np.testing.assert_array_equal(orbit[1], out.images[0])   # +10 degrees
    np.testing.assert_array_equal(orbit[-1], out.images[1])  # 350 degrees = -10
    # the views are not all alike (a collapsed sampler would give identical images)
    assert np.abs(out.images[0] - out.images[1]).mean() > 1e-3


def test_seeded_runs_are_deterministic_and_seed_dependent(ref_pipe, image, ref_orbit):
    again = ref_pipe.orbit(image, views=36, generate=2, sampler=sampler(seed=5), preprocess=False)
    np.testing.assert_array_equal(again.images, ref_orbit.images[:2])
    other = ref_pipe.orbit(image, views=36, generate=1, sampler=sampler(seed=6), preprocess=False)
    assert np.abs(other.images[0] - ref_orbit.images[0]).max() > 1e-3


def test_noise_bank_file_replays_exactly(ref_pipe, image, ref_orbit, tmp_path):
    path = ref_orbit.noise.save(tmp_path / "bank.npz")
    replay = ref_pipe.orbit(image, views=36, generate=4, sampler=sampler(seed=999), noise=NoiseBank.load(path),
                            preprocess=False)
    np.testing.assert_array_equal(replay.images, ref_orbit.images)


def test_a_seeded_orbit_keeps_no_noise_arrays(ref_pipe, image):
    """result.noise of a seeded run is redrawn when read (the file replay above checks it is exact)."""
    out = ref_pipe.orbit(image, views=36, generate=2, sampler=sampler(seed=5), preprocess=False)
    assert isinstance(out.noise, SeededNoiseBank) and not out.noise.materialised and out.noise.num_views == 2


def test_bank_that_does_not_fit_is_rejected(ref_pipe, image, ref_orbit):
    with pytest.raises(NoiseBankError):
        ref_pipe.orbit(image, views=36, generate=5, sampler=sampler(), noise=ref_orbit.noise, preprocess=False)
    with pytest.raises(NoiseBankError):
        ref_pipe.orbit(image, views=36, generate=2, sampler=sampler(steps=STEPS + 5), noise=ref_orbit.noise,
                       preprocess=False)


def test_resume_reuses_finished_views(ref_pipe, image, ref_orbit):
    out = ref_pipe.orbit(image, views=36, generate=4, sampler=sampler(seed=5), preprocess=False,
                         resume=list(ref_orbit.images[:2]))
    np.testing.assert_array_equal(out.images, ref_orbit.images)


@torch.no_grad()
def test_one_interpolated_step_matches_an_independent_computation(tiny_model, ref_pipe, image):
    """Separate UNet calls per reference and branch, float64 DDIM maths, then the weighted sum."""
    eng = ref_pipe.engine
    plan = plan_orbit(36, generate=3)[2]                     # K = 3: input + views 0 and 1
    refs_img = [image] + [torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(s)) * 2 - 1
                          for s in (1, 2)]
    refs = [eng.encode_view(im) for im in refs_img]
    sched = make_ddim_schedule(STEPS, 1.0)
    den = eng.bind(refs, torch.from_numpy(plan.pose_conditions), torch.from_numpy(plan.weights), sched, 3.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn((1, 4, 8, 8), generator=g)
    noise = torch.randn((3, 4, 8, 8), generator=g)
    i = 2
    got = den.step(x, i, noise)
    t = torch.tensor([int(sched.timesteps[i])])
    acc = torch.zeros((1, 4, 8, 8), dtype=torch.float64)
    for k in range(3):
        c = tiny_model.project(refs[k].clip, torch.from_numpy(plan.pose_conditions[k:k + 1]))
        e_c = tiny_model.denoise(torch.cat([x, refs[k].latent], 1), t, c).double()
        e_u = tiny_model.denoise(torch.cat([x, torch.zeros_like(x)], 1), t, torch.zeros_like(c)).double()
        e = e_u + 3.0 * (e_c - e_u)
        a_t, a_p, sig = (float(getattr(sched, n)[i]) for n in ("a_t", "a_prev", "sigma"))
        x0 = (x.double() - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
        x_prev = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sig ** 2) * e + sig * noise[k:k + 1].double()
        acc += float(plan.weights[k]) * x_prev
    torch.testing.assert_close(got.double(), acc, atol=2e-5, rtol=1e-5)


def test_ddim_update_formula():
    g = torch.Generator().manual_seed(0)
    x, e, n = (torch.randn((2, 4, 3, 3), generator=g) for _ in range(3))
    a_t, a_p, s = torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.1)
    out = ddim_update(x, e, a_t, a_p, s, (1 - a_t).sqrt(), n)
    x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
    torch.testing.assert_close(out, a_p.sqrt() * x0 + (1 - a_p - s * s).sqrt() * e + s * n)


def test_single_mode(ref_pipe, image):
    out = ref_pipe.single(image, delta_polar=-20.0, delta_azimuth=25.0, delta_radius=0.0, sampler=sampler(seed=1),
                          preprocess=False)
    assert out.images.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(np.degrees(out.poses[-1][:2]), [-20, 25], atol=1e-4)
    with pytest.raises(ValueError):
        out.orbit_images()


def test_multi_view_mode(ref_pipe, image):
    second = torch.flip(image, dims=[3])
    out = ref_pipe.multi_view([image, second], poses=[[0, 0, 0], [0, 180, 0]], views=12, generate=2,
                              sampler=sampler(seed=2, auto_temp=1.0), preprocess=False)
    assert out.images.shape == (2, 3, 64, 64)
    assert out.references[0].tolist() == [0, 1] and out.references[1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="2 images but 1 poses"):
        ref_pipe.multi_view([image, second], poses=[[0, 0, 0]])


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_fast_engine_fp32_matches_reference(tiny_model, image, ref_pipe, ref_orbit, guidance):
    """The exact identities (K+1 rows, collapsed cross-attention, split first conv, combined update)."""
    fast = Pipeline(tiny_model, cpu())
    if guidance == 3.0:
        ref = ref_orbit
    else:
        ref = ref_pipe.orbit(image, views=36, generate=4, sampler=sampler(seed=8, guidance=1.0), preprocess=False)
    out = fast.orbit(image, views=36, generate=4, sampler=sampler(guidance=guidance), noise=ref.noise,
                     preprocess=False)
    assert np.abs(out.images - ref.images).max() <= 1e-4


def test_fast_engine_without_cudnn_attention_matches_reference(tiny_model, image, ref_orbit):
    """attention="flash" (what a short `vfrt run` uses) only restricts the SDPA backends: same result."""
    fast = Pipeline(tiny_model, cpu(attention="flash"))
    assert fast.engine.describe()["attention"] == "flash"
    out = fast.orbit(image, views=36, generate=4, sampler=sampler(), noise=ref_orbit.noise, preprocess=False)
    assert np.abs(out.images - ref_orbit.images).max() <= 1e-4
    with pytest.raises(ValueError, match="attention must be one of auto, flash"):
        cpu(attention="cudnn-please")


def test_bad_arguments(ref_pipe, image, tiny_model):
    with pytest.raises(ValueError, match="guidance"):
        sampler(guidance=float("nan"))
    with pytest.raises(ValueError, match="generate"):
        ref_pipe.orbit(image, generate=99, preprocess=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Pipeline(tiny_model, EngineConfig(device="cuda"))
    with pytest.raises(ValueError, match="backend must be one of"):
        EngineConfig(backend="tensorrt-please")
    with pytest.raises(ValueError, match="unknown device 'xyz'"):
        Pipeline(tiny_model, EngineConfig(device="xyz"))


@torch.no_grad()
def test_fast_engine_handles_K_beyond_its_preallocated_buffers(tiny_model):
    """K = 27 > 25 (the buffers' initial size): buffers grow, graphs re-capture - never a wrong answer."""
    from vfrt.engines import create_engine
    g = torch.Generator().manual_seed(21)
    K = 27
    imgs = [torch.rand((1, 3, 64, 64), generator=g) * 2 - 1 for _ in range(K)]
    T = torch.randn((K, 4), generator=g)
    w = torch.softmax(torch.randn(K, generator=g), 0)
    sched = make_ddim_schedule(4, 1.0)
    x_T = torch.randn((1, 4, 8, 8), generator=g)
    noise = torch.randn((sched.num_steps, K, 4, 8, 8), generator=g)
    fast, ref = create_engine(tiny_model, cpu()), create_engine(tiny_model, cpu("reference"))
    small = fast.bind([fast.encode_view(i) for i in imgs[:2]], T[:2], torch.tensor([0.5, 0.5]), sched, 3.0)
    small.run(x_T, noise[:, :2])
    assert fast.step_cache.capacity["rows"] == 26
    z_f = fast.bind([fast.encode_view(i) for i in imgs], T, w, sched, 3.0).run(x_T, noise)
    z_r = ref.bind([ref.encode_view(i) for i in imgs], T, w, sched, 3.0).run(x_T, noise)
    assert fast.step_cache.capacity["rows"] >= K + 1
    torch.testing.assert_close(z_f, z_r, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_fast_noise_mode_has_the_distribution_of_the_weighted_sum(tiny_model):
    """SPEC §6: sum_k w_k n_k ~ N(0, sum_k w_k^2); the fast mode draws it directly."""
    from vfrt.engines import create_engine
    eng = create_engine(tiny_model, cpu())
    w = torch.tensor([0.5, 0.3, 0.2])
    refs = [eng.encode_view(torch.zeros(1, 3, 64, 64)) for _ in range(3)]
    den = eng.bind(refs, torch.zeros(3, 4), w, make_ddim_schedule(250, 1.0), 3.0)   # S = 249 steps
    n = den.noise_bar(None, (4, 8, 8), torch.Generator().manual_seed(1))
    assert n.shape == (249, 1, 4, 8, 8)
    assert float(n.std()) == pytest.approx(float(torch.sqrt((w ** 2).sum())), rel=0.02)
    assert abs(float(n.mean())) < 0.01
    with pytest.raises(ValueError, match="step noise must be"):
        den.noise_bar(torch.zeros(249, 2, 4, 8, 8), (4, 8, 8))


def test_fast_noise_mode_end_to_end(tiny_model, image, ref_orbit):
    """noise_mode="fast": seeded (same seed, same images), no noise bank, and a bank cannot be replayed with it."""
    pipe = Pipeline(tiny_model, cpu())
    a = pipe.orbit(image, generate=2, sampler=sampler(seed=3, noise_mode="fast"), preprocess=False)
    b = pipe.orbit(image, generate=2, sampler=sampler(seed=3, noise_mode="fast"), preprocess=False)
    c = pipe.orbit(image, generate=2, sampler=sampler(seed=4, noise_mode="fast"), preprocess=False)
    assert a.noise is None and np.isfinite(a.images).all()
    np.testing.assert_array_equal(a.images, b.images)
    assert np.abs(a.images - c.images).max() > 1e-3
    with pytest.raises(NoiseBankError, match="fast"):
        pipe.orbit(image, generate=4, sampler=sampler(noise_mode="fast"), noise=ref_orbit.noise, preprocess=False)
    ref = Pipeline(tiny_model, cpu("reference")).orbit(image, generate=1, sampler=sampler(noise_mode="fast"),
                                                      preprocess=False)
    assert ref.noise is None and np.isfinite(ref.images).all()


def test_shared_step_noise_mode(tiny_model, ref_pipe, image):
    """ViewFusion's real-image sampler (my_ddim_pred_e): one draw per step shared by the K references."""
    out = ref_pipe.orbit(image, views=36, generate=3, sampler=sampler(seed=4, noise_mode="shared"), preprocess=False)
    assert out.noise.K.tolist() == [1, 1, 1]
    assert out.noise.step_noise[2].shape == (STEPS - 1, 1, 4, 8, 8)
    # with one shared draw the weighted noise term is sigma * n: the same as K identical draws
    same = NoiseBank(x_T=out.noise.x_T, step_noise=[np.repeat(s, k, axis=1) for s, k in
                                                    zip(out.noise.step_noise, [1, 2, 3])])
    indep = ref_pipe.orbit(image, views=36, generate=3, sampler=sampler(), noise=same, preprocess=False)
    assert np.abs(indep.images - out.images).max() <= 1e-5
    fast = Pipeline(tiny_model, cpu()).orbit(image, views=36, generate=3, sampler=sampler(noise_mode="shared"),
                                             noise=out.noise, preprocess=False)
    assert np.abs(fast.images - out.images).max() <= 1e-4


def test_pipeline_from_engine_shares_an_engine(ref_pipe, image, ref_orbit):
    again = Pipeline.from_engine(ref_pipe.engine, ref_pipe.model_config, max_cached_views=2)
    assert again.backend == "reference" and again.resolution == 64
    out = again.orbit(image, views=36, generate=4, sampler=sampler(), noise=ref_orbit.noise, preprocess=False)
    np.testing.assert_array_equal(out.images, ref_orbit.images)


def test_non_finite_views_stop_the_run_with_a_clear_error(tiny_model, image):
    import copy

    from vfrt.runtime.pipeline import NonFiniteOutputError
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.unet.out[2].bias.fill_(float("nan"))
    seen = []
    with pytest.raises(NonFiniteOutputError, match="view 0"):
        Pipeline(broken, cpu()).orbit(image, generate=2, sampler=sampler(steps=4), preprocess=False,
                                      on_view=lambda v, im, p: seen.append(v))
    assert seen == []  # nothing was handed out as a finished view


@pytest.mark.parametrize("backend,hint", [("reference", "backend='fast'"), ("fast", "dtype='float16'")])
def test_out_of_memory_says_where_and_what_to_lower(tiny_model, image, monkeypatch, backend, hint):
    """A CUDA out-of-memory error (simulated at view 2) names the view and K and what to lower; it is still a
    torch.OutOfMemoryError, and the finished views were handed out."""
    from vfrt.runtime.pipeline import GPUOutOfMemoryError
    pipe = Pipeline(tiny_model, cpu(backend))
    bind = pipe.engine.bind

    def bind_until_view_2(refs, *a, **kw):
        if len(refs) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bind(refs, *a, **kw)
    monkeypatch.setattr(pipe.engine, "bind", bind_until_view_2)
    seen = []
    with pytest.raises(GPUOutOfMemoryError, match=r"view 2 \(K = 3 references") as info:
        pipe.orbit(image, generate=4, sampler=sampler(steps=4), preprocess=False,
                   on_view=lambda v, im, p: seen.append(v))
    assert isinstance(info.value, torch.OutOfMemoryError)
    assert hint in str(info.value) and "Tried to allocate 2.00 GiB" in str(info.value)
    assert seen == [0, 1]


def test_engine_converting_an_owned_model_in_place_gives_the_same_result(tiny_checkpoint, image, ref_orbit):
    """Pipeline.from_checkpoint lets the fast engine convert the model it owns instead of copying it."""
    pipe = Pipeline.from_checkpoint(tiny_checkpoint.ckpt, config=tiny_checkpoint.yaml, engine=cpu())
    out = pipe.orbit(image, views=36, generate=4, sampler=sampler(), noise=ref_orbit.noise, preprocess=False)
    assert np.abs(out.images - ref_orbit.images).max() <= 1e-4
    auto = Pipeline.from_checkpoint(tiny_checkpoint.ckpt, config=tiny_checkpoint.yaml,
                                    engine=EngineConfig(device="cpu"))
    assert auto.backend == "fast" and auto.engine.describe()["dtype"] == "float32"


def test_a_bad_device_is_refused_before_the_weights_load(tiny_checkpoint, monkeypatch):
    import vfrt.models
    loads = []
    monkeypatch.setattr(vfrt.models, "load_zero123", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="unknown device"):
        Pipeline.from_checkpoint(tiny_checkpoint.ckpt, engine=EngineConfig(device="gpu0"))
    assert loads == []


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_step_progress_is_reported_for_every_step_of_every_view(tiny_model, image, backend):
    pipe = Pipeline(tiny_model, cpu(backend))
    seen = []
    pipe.on_step = lambda done, total: seen.append((done, total))
    pipe.orbit(image, generate=2, sampler=sampler(), preprocess=False)
    S = STEPS - 1
    assert seen == [(i, S) for i in range(1, S + 1)] * 2
