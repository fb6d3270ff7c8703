"""The C++ runtime (CMakeLists.txt, cpp/, include/vfrt/): built with CMake once per session, run on the
tiny checkpoint's AOTInductor engines (`aoti_engines`, tests/export/conftest.py - hence this file lives
here) and compared with Python:

* schedule, update coefficients and view plans: number by number (the C++ tests' `dump` mode);
* orbits and single views through the C API, in this very process (ctypes): replaying a noise
  directory Python exported, against the fp32 reference backend (VIEW_TOLERANCE); seeded, against
  Python's runtime on the same engines (same draws, same packages: SAME_ENGINE_TOLERANCE);
* every bad input returns a status code and a message and this process goes on;
* the example programs (vfrt-orbit: PNGs + transforms.json as `vfrt run`; the C example) and the
  README's `find_package(vfrt)` lines in a project of their own.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
#: C++ views vs the fp32 reference backend, same noise (as the Python engines' test: test_aoti_engines.py)
VIEW_TOLERANCE = 1e-4
#: C++ vs Python on the same packages and draws: only thread scheduling of the same kernels may differ
SAME_ENGINE_TOLERANCE = 1e-5
STATUS = {"ok": 0, "invalid_argument": 1, "corrupt_engine": 2, "engine_mismatch": 3, "engine_load": 4, "image": 5,
          "noise": 6, "cancelled": 7, "runtime": 8, "io": 9}


_path = ROOT / "benchmarks" / "bench_cpp.py"
_spec = importlib.util.spec_from_file_location("bench_cpp", _path)
bench_cpp = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_cpp", bench_cpp)   # its dataclasses look their module up
_spec.loader.exec_module(bench_cpp)


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory, aoti_engines):
    """Configure (Release), build (-j2) and install libvfrt, the examples and the C++ tests: about a minute
    on 2 cores. Built with the compiler that built the engines' packages (one toolchain); skipped, saying
    why, when CMake, the compiler or a system package is missing (.ci/run installs them)."""
    manifest = json.loads((aoti_engines.directory / "manifest.json").read_text())
    try:
        return bench_cpp.build_cpp(tmp_path_factory.mktemp("cpp_build"), jobs=2, cxx=bench_cpp.compiler_of(manifest),
                                   install=tmp_path_factory.mktemp("cpp_install"))
    except bench_cpp.CppBuildUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cpp_install(cpp_build) -> Path:
    import re
    cache = (cpp_build.directory / "CMakeCache.txt").read_text()
    return Path(re.search(r"^CMAKE_INSTALL_PREFIX:PATH=(.*)$", cache, re.M).group(1))


# ------------------------------------------------------------------------------------------ the C API via ctypes
PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)


class Options(ctypes.Structure):
    _fields_ = [("views", ctypes.c_int), ("generate", ctypes.c_int), ("steps", ctypes.c_int),
                ("eta", ctypes.c_double), ("guidance", ctypes.c_double), ("inference_temp", ctypes.c_double),
                ("auto_temp", ctypes.c_double), ("seed", ctypes.c_int64), ("noise_mode", ctypes.c_int),
                ("elevation", ctypes.c_double), ("noise", ctypes.c_char_p), ("record_noise", ctypes.c_char_p),
                ("progress", PROGRESS), ("progress_user_data", ctypes.c_void_p), ("low_ring", ctypes.c_int),
                ("low_ring_polar", ctypes.c_double)]


class ImageIn(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("width", ctypes.c_int), ("height", ctypes.c_int),
                ("format", ctypes.c_int), ("pixels", ctypes.c_void_p)]


class ViewOut(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("rgb", ctypes.POINTER(ctypes.c_float)),
                ("polar", ctypes.c_double), ("azimuth", ctypes.c_double), ("radius", ctypes.c_double),
                ("camera_to_world", ctypes.c_double * 16), ("num_references", ctypes.c_int),
                ("references", ctypes.POINTER(ctypes.c_int)), ("weights", ctypes.POINTER(ctypes.c_float))]


class CppError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"[{status}] {message}")


@dataclass
class CppView:
    image: np.ndarray            # (3, H, W) float32, as Python's GenerationResult.images[v]
    pose: tuple[float, float, float]
    references: list[int]
    weights: np.ndarray
    camera_to_world: np.ndarray  # (4, 4)


class VfrtC:
    """The C API of libvfrt.so, loaded into this process."""

    def __init__(self, build: CppBuild):
        self.lib = ctypes.CDLL(str(build.directory / "libvfrt.so"))
        lib = self.lib
        lib.vfrt_last_error.restype = ctypes.c_char_p
        lib.vfrt_version.restype = ctypes.c_char_p
        lib.vfrt_status_name.restype = ctypes.c_char_p
        lib.vfrt_engine_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.vfrt_engine_close.argtypes = [ctypes.c_void_p]
        lib.vfrt_engine_image_size.argtypes = [ctypes.c_void_p]
        lib.vfrt_options_init.argtypes = [ctypes.POINTER(Options)]
        lib.vfrt_orbit.argtypes = [ctypes.c_void_p, ctypes.POINTER(ImageIn), ctypes.POINTER(Options),
                                   ctypes.POINTER(ctypes.c_void_p)]
        lib.vfrt_single.argtypes = [ctypes.c_void_p, ctypes.POINTER(ImageIn), ctypes.c_double, ctypes.c_double,
                                    ctypes.c_double, ctypes.POINTER(Options), ctypes.POINTER(ctypes.c_void_p)]
        lib.vfrt_result_view_count.argtypes = [ctypes.c_void_p]
        lib.vfrt_result_view.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ViewOut)]
        lib.vfrt_result_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        for name in ("vfrt_result_orbit_order", "vfrt_result_low_ring_order"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_size_t]
        lib.vfrt_result_free.argtypes = [ctypes.c_void_p]

    def check(self, status: int) -> None:
        if status != 0:
            raise CppError(status, self.lib.vfrt_last_error().decode())

    def options(self, **settings) -> Options:
        o = Options()
        self.lib.vfrt_options_init(ctypes.byref(o))
        for name, value in settings.items():
            setattr(o, name, value.encode() if isinstance(value, str) else value)
        return o

    def open(self, directory, device: str | None = "auto") -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.vfrt_engine_open(str(directory).encode(), device and device.encode(),
                                             ctypes.byref(handle)))
        return handle.value

    def generate(self, engine, image_path, options: Options, single: tuple | None = None,
                 orders: dict | None = None) -> list[CppView]:
        """The views of one call; ``orders``, if given, receives the C API's "orbit" and "low_ring" orders."""
        image = ImageIn(path=str(image_path).encode())
        result = ctypes.c_void_p()
        if single is None:
            status = self.lib.vfrt_orbit(engine, ctypes.byref(image), ctypes.byref(options), ctypes.byref(result))
        else:
            status = self.lib.vfrt_single(engine, ctypes.byref(image), *single, ctypes.byref(options),
                                          ctypes.byref(result))
        self.check(status)
        try:
            views = []
            for i in range(self.lib.vfrt_result_view_count(result)):
                v = ViewOut()
                self.check(self.lib.vfrt_result_view(result, i, ctypes.byref(v)))
                hwc = np.ctypeslib.as_array(v.rgb, shape=(v.height, v.width, 3)).copy()
                views.append(CppView(hwc.transpose(2, 0, 1), (v.polar, v.azimuth, v.radius),
                                     [v.references[k] for k in range(v.num_references)],
                                     np.array([v.weights[k] for k in range(v.num_references)], np.float32),
                                     np.array(list(v.camera_to_world)).reshape(4, 4)))
            if orders is not None:
                for key, fn in (("orbit", self.lib.vfrt_result_orbit_order),
                                ("low_ring", self.lib.vfrt_result_low_ring_order)):
                    out = (ctypes.c_int * len(views))()
                    self.check(fn(result, out, len(views)))
                    orders[key] = list(out)
            return views
        finally:
            self.lib.vfrt_result_free(result)


@pytest.fixture(scope="module")
def vfrt_c(cpp_build) -> VfrtC:
    return VfrtC(cpp_build)


@pytest.fixture(scope="module")
def engine(vfrt_c, aoti_engines):
    handle = vfrt_c.open(aoti_engines.directory)
    yield handle
    vfrt_c.lib.vfrt_engine_close(handle)


@pytest.fixture(scope="module")
def input_png(tmp_path_factory, aoti_engines) -> Path:
    """A model-resolution RGBA photo (C++ does no cropping: both sides read it with preprocess=False)."""
    from vfrt.engines.engine_dir import read_manifest
    size = read_manifest(aoti_engines.directory).zero123_config().unet.image_size * 8
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((size, size)) < 0.8, 255, rng.integers(0, 256, (size, size)))
    path = tmp_path_factory.mktemp("cpp_input") / "input.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _python_engines(aoti_engines):
    from vfrt.runtime.pipeline import Pipeline
    return Pipeline.from_engines(aoti_engines.directory)


# ------------------------------------------------------------------------------------------ tests
def test_the_cpp_tests_pass(cpp_build):
    out = subprocess.run([str(cpp_build.program("vfrt_unit_tests"))], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith(" 0 failed"), out.stdout + out.stderr


def test_schedule_coefficients_and_plans_equal_python(cpp_build):
    """The static half of the loop, number by number: float32 schedule and coefficients bit-equal; plans
    equal (weights and pose conditions come from the same ATen kernels, so equal as well)."""
    from vfrt.engines.step import step_coefficients
    from vfrt.runtime.poses import plan_low_ring, plan_orbit, plan_single
    from vfrt.runtime.schedule import make_ddim_schedule
    deg = np.pi / 180
    cases = {"schedules": [[75, 1.0], [50, 0.0], [10, 0.3], [2, 1.0], [200, 1.0]],
             "orbits": [[36, 0.5, 0.5], [8, 0.5, 1.0], [4, 0.3, 0.7], [60, 0.5, 0.5]],
             "singles": [[-20 * deg, 65 * deg, 0.0, 0.5, 0.5], [10 * deg, -170 * deg, 0.1, 0.4, 0.9],
                         [0.0, 0.0, 0.3, 0.5, 0.5], [5 * deg, 400 * deg, 0.0, 0.5, 0.5]],
             "low_rings": [[36, 12, 45 * deg, 0.5, 0.5], [8, 3, 30 * deg, 0.4, 0.9], [36, 1, -20 * deg, 0.5, 0.5],
                           [12, 7, 170 * deg, 0.5, 0.5]]}
    out = subprocess.run([str(cpp_build.program("vfrt_unit_tests")), "dump", json.dumps(cases)], capture_output=True,
                         text=True, check=True)
    got = json.loads(out.stdout)
    for (steps, eta), cpp in zip(cases["schedules"], got["schedules"]):
        py = make_ddim_schedule(steps, eta)
        assert cpp["timesteps"] == py.timesteps.tolist()
        for name in ("a_t", "a_prev", "sigma", "sqrt_one_minus_a_t"):
            np.testing.assert_array_equal(np.float32(cpp[name]), getattr(py, name), err_msg=f"{steps} {name}")
        coef = step_coefficients(py, "cpu").numpy()
        np.testing.assert_array_equal(np.float32([cpp["c_x"], cpp["c_eps"]]), coef[:2], err_msg=f"{steps} steps")
    plans = [plan_orbit(n, None, ti, ta) for n, ti, ta in cases["orbits"]] + \
        [plan_single(*args) for args in cases["singles"]] + [plan_low_ring(*args) for args in cases["low_rings"]]
    assert len(plans) == len(got["orbits"] + got["singles"] + got["low_rings"])
    for py_plans, cpp_plans in zip(plans, got["orbits"] + got["singles"] + got["low_rings"]):
        assert len(py_plans) == len(cpp_plans)
        for p, c in zip(py_plans, cpp_plans):
            assert c["references"] == p.references.tolist()
            np.testing.assert_array_equal(np.float32(c["weights"]), p.weights)
            np.testing.assert_array_equal(np.float32(c["pose_conditions"]).reshape(-1, 4), p.pose_conditions)
            assert tuple(c["pose"]) == pytest.approx(p.pose, abs=1e-12)


def test_cpp_orbit_equals_the_python_reference_backend_under_the_same_noise(vfrt_c, engine, tiny_model, input_png,
                                                                          tmp_path):
    """Python's fp32 reference draws the noise and exports it; C++ replays it on the engines."""
    from vfrt.engines.config import EngineConfig
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.sampler import SamplerConfig
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).orbit(
        input_png, views=8, sampler=SamplerConfig(steps=4, seed=11), preprocess=False)
    ref.noise.save_raw(tmp_path / "noise")
    views = vfrt_c.generate(engine, input_png, vfrt_c.options(views=8, steps=4, seed=999, noise=str(tmp_path / "noise")))
    assert len(views) == len(ref.images) == 7
    diff = max(np.abs(v.image - im).max() for v, im in zip(views, ref.images))
    assert diff <= VIEW_TOLERANCE, diff
    for v, w, refs, pose in zip(views, ref.weights, ref.references, ref.poses):
        assert v.references == refs.tolist() and np.array_equal(v.weights, w) and v.pose == pytest.approx(tuple(pose))
    # the cameras are SPEC §8's (vfrt.runtime.cameras) at each view's azimuth and the default elevation
    from vfrt.runtime.cameras import camera_to_world_opengl, world_to_camera
    want = camera_to_world_opengl(world_to_camera(ref.azimuths[3], np.radians(30.0)))
    np.testing.assert_allclose(views[3].camera_to_world, want, atol=1e-12)


def test_cpp_single_view_equals_the_python_reference_backend(vfrt_c, engine, tiny_model, input_png, tmp_path):
    from vfrt.engines.config import EngineConfig
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.sampler import SamplerConfig
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).single(
        input_png, delta_polar=-15.0, delta_azimuth=25.0, sampler=SamplerConfig(steps=4, seed=2), preprocess=False)
    ref.noise.save_raw(tmp_path / "noise")
    views = vfrt_c.generate(engine, input_png, vfrt_c.options(steps=4, noise=str(tmp_path / "noise")),
                            single=(-15.0, 25.0, 0.0))
    assert len(views) == len(ref.images) == 3
    assert max(np.abs(v.image - im).max() for v, im in zip(views, ref.images)) <= VIEW_TOLERANCE


@pytest.mark.parametrize("settings", [dict(seed=3), dict(seed=4, noise_mode=1, guidance=1.0, eta=0.5),
                                      dict(seed=5, noise_mode=2, inference_temp=0.3, auto_temp=1.0)],
                         ids=["exact", "shared-unguided", "fast"])
def test_seeded_cpp_orbit_equals_python_on_the_same_engines(vfrt_c, engine, aoti_engines, input_png, tmp_path,
                                                            settings):
    """Equal seeds give equal draws (the same CPU generator calls); the draws C++ records replay in Python."""
    from vfrt.runtime.noise import NoiseBank
    from vfrt.runtime.sampler import SamplerConfig
    mode = ("exact", "shared", "fast")[settings.get("noise_mode", 0)]
    sampler = SamplerConfig(steps=4, noise_mode=mode, **{k: v for k, v in settings.items() if k != "noise_mode"})
    py = _python_engines(aoti_engines).orbit(input_png, views=6, sampler=sampler, preprocess=False)
    record = {} if mode == "fast" else {"record_noise": str(tmp_path / "recorded")}
    views = vfrt_c.generate(engine, input_png, vfrt_c.options(views=6, steps=4, **settings, **record))
    assert max(np.abs(v.image - im).max() for v, im in zip(views, py.images)) <= SAME_ENGINE_TOLERANCE
    if record:
        recorded = NoiseBank.load(tmp_path / "recorded")
        for a, b in zip(recorded.x_T + recorded.step_noise, py.noise.x_T + py.noise.step_noise):
            np.testing.assert_array_equal(a, b)


def test_bad_inputs_return_a_status_and_a_message_and_this_process_goes_on(vfrt_c, engine, aoti_engines, input_png,
                                                                         tmp_path, tiny_checkpoint):
    def status_of(call) -> tuple[int, str]:
        with pytest.raises(CppError) as info:
            call()
        return info.value.status, info.value.message

    def copy(name: str, change=None) -> Path:
        folder = tmp_path / name
        shutil.copytree(aoti_engines.directory, folder)
        if change is not None:
            data = json.loads((folder / "manifest.json").read_text())
            change(data)
            (folder / "manifest.json").write_text(json.dumps(data))
        return folder

    rebuild = f"rebuild with: vfrt build-engines -c {tiny_checkpoint.ckpt}"
    # engine directories
    status, msg = status_of(lambda: vfrt_c.open(tmp_path / "missing"))
    assert status == STATUS["corrupt_engine"] and "is not an engine directory" in msg
    corrupt = copy("corrupt")
    (corrupt / "manifest.json").write_text("[")
    status, msg = status_of(lambda: vfrt_c.open(corrupt))
    assert status == STATUS["corrupt_engine"] and "manifest.json is corrupt" in msg and f"--out {corrupt}" in msg
    no_field = copy("no_field", lambda d: d.pop("networks"))
    assert status_of(lambda: vfrt_c.open(no_field))[1].count("missing field 'networks'") == 1
    stale = copy("stale", lambda d: d["platform"].update(torch="2.0.0", vfrt="0.0.1"))
    status, msg = status_of(lambda: vfrt_c.open(stale))
    assert status == STATUS["engine_mismatch"] and "built with torch 2.0.0" in msg and "built by vfrt 0.0.1" in msg
    assert rebuild in msg
    other_backend = copy("tensorrt", lambda d: d.update(backend="tensorrt", backend_version="10.0"))
    status, msg = status_of(lambda: vfrt_c.open(other_backend))
    assert status == STATUS["engine_mismatch"] and "backend 'tensorrt' is not available" in msg and "loads aoti" in msg
    gpu = copy("gpu", lambda d: d["platform"].update(device="cuda", gpu_name="NVIDIA H200", compute_capability="9.0"))
    status, msg = status_of(lambda: vfrt_c.open(gpu))
    assert status == STATUS["engine_mismatch"] and ("CPU-only libtorch" in msg or "no CUDA device" in msg)
    assert status_of(lambda: vfrt_c.open(aoti_engines.directory, "cuda"))[0] == STATUS["engine_mismatch"]
    assert status_of(lambda: vfrt_c.open(aoti_engines.directory, "tpu:0"))[0] == STATUS["invalid_argument"]
    truncated = copy("truncated")
    with open(truncated / "unet_step.pt2", "r+b") as f:
        f.truncate(1000)
    status, msg = status_of(lambda: vfrt_c.open(truncated))
    assert status == STATUS["corrupt_engine"] and "unet_step.pt2 has 1000 bytes" in msg and rebuild in msg
    altered = copy("altered")
    data = bytearray((altered / "vae_decoder.pt2").read_bytes())
    data[-100] ^= 0xFF
    (altered / "vae_decoder.pt2").write_bytes(bytes(data))
    status, msg = status_of(lambda: vfrt_c.open(altered))
    assert status == STATUS["corrupt_engine"] and "vae_decoder.pt2 does not have the sha256" in msg
    other_cxx = copy("toolchain", lambda d: d["toolchain"].update(cxx="/opt/gcc/bin/g++",
                                                                  libstdcxx="/opt/gcc/lib64/libstdc++.so.6.0.33"))
    status, msg = status_of(lambda: vfrt_c.open(other_cxx))
    assert status == STATUS["engine_load"] and "-DCMAKE_CXX_COMPILER=/opt/gcc/bin/g++" in msg
    status, msg = status_of(lambda: vfrt_c.check(vfrt_c.lib.vfrt_engine_open(None, None, None)))
    assert status == STATUS["invalid_argument"] and "must not be NULL" in msg

    # images
    status, msg = status_of(lambda: vfrt_c.generate(engine, tmp_path / "none.png", vfrt_c.options(views=3, steps=2)))
    assert status == STATUS["image"] and "none.png" in msg and "no such file" in msg
    (tmp_path / "text.png").write_text("not an image")
    assert status_of(lambda: vfrt_c.generate(engine, tmp_path / "text.png", vfrt_c.options()))[0] == STATUS["image"]
    Image.new("RGB", (40, 48)).save(tmp_path / "small.png")
    status, msg = status_of(lambda: vfrt_c.generate(engine, tmp_path / "small.png", vfrt_c.options(views=3, steps=2)))
    assert status == STATUS["image"] and "got 40x48" in msg

    # options (refused before any work)
    for settings, words in ((dict(steps=1), "steps must be"), (dict(steps=3), "use e.g. steps="),
                            (dict(eta=-1.0), "eta must be"), (dict(guidance=float("nan")), "guidance must be"),
                            (dict(views=1), "views must be"), (dict(views=8, generate=9), "generate must be"),
                            (dict(noise_mode=7), "noise_mode must be"), (dict(elevation=95.0), "elevation"),
                            (dict(views=60), "rebuild them for more references")):
        status, msg = status_of(lambda: vfrt_c.generate(engine, input_png, vfrt_c.options(**settings)))
        assert status == STATUS["invalid_argument"] and words in msg, (settings, msg)
    status, msg = status_of(lambda: vfrt_c.generate(engine, input_png, vfrt_c.options(steps=2), single=(130.0, 0.0, 0.0)))
    assert status == STATUS["invalid_argument"] and "past a pole" in msg

    # noise directories that do not fit the run
    from vfrt.runtime.noise import NoiseBank
    small = NoiseBank(x_T=[np.zeros((1, 4, 8, 8), np.float32)], step_noise=[np.zeros((2, 1, 4, 8, 8), np.float32)])
    small.save_raw(tmp_path / "small_noise")
    status, msg = status_of(lambda: vfrt_c.generate(engine, input_png, vfrt_c.options(
        views=4, steps=2, noise=str(tmp_path / "small_noise"))))
    assert status == STATUS["noise"] and "holds 1 views; the run generates 3" in msg
    status, msg = status_of(lambda: vfrt_c.generate(engine, input_png, vfrt_c.options(
        views=2, steps=4, noise=str(tmp_path / "small_noise"))))
    assert status == STATUS["noise"] and "noise bank view 0" in msg

    # cancelling from the progress callback stops before the next view
    seen = []
    stop = PROGRESS(lambda user, done, total: seen.append((done, total)) or 1)
    status, msg = status_of(lambda: vfrt_c.generate(engine, input_png, vfrt_c.options(views=4, steps=2, progress=stop)))
    assert status == STATUS["cancelled"] and "cancelled after 1 of 3 views" in msg and seen == [(1, 3)]

    # and the same engine still works
    assert len(vfrt_c.generate(engine, input_png, vfrt_c.options(views=3, steps=2))) == 2
    assert vfrt_c.lib.vfrt_last_error() == b""


def test_vfrt_orbit_writes_the_views_and_cameras_vfrt_run_writes(cpp_build, aoti_engines, input_png, tmp_path):
    from vfrt.runtime.cameras import transforms_dict
    from vfrt.runtime.preprocess import to_uint8
    from vfrt.runtime.sampler import SamplerConfig
    out = tmp_path / "orbit"
    cmd = [str(cpp_build.program("vfrt-orbit")), str(input_png), "--engines", str(aoti_engines.directory), "--out",
           str(out), "--views", "6", "--steps", "4", "--seed", "8", "--elevation", "20"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    py = _python_engines(aoti_engines).orbit(input_png, views=6, sampler=SamplerConfig(steps=4, seed=8),
                                             preprocess=False)
    for i, frame in enumerate(py.orbit_images()):
        assert np.array_equal(np.asarray(Image.open(out / "views" / f"{i:03d}.png")), to_uint8(frame)), i
    written = json.loads((out / "transforms.json").read_text())
    want = transforms_dict(6, 20.0, image_size=py.inputs.shape[-1])
    assert written.keys() == want.keys() and written["frames"][5]["file_path"] == "views/005.png"
    np.testing.assert_allclose([f["transform_matrix"] for f in written["frames"]],
                               [f["transform_matrix"] for f in want["frames"]], atol=1e-12)
    assert {k: v for k, v in written.items() if k != "frames"} == {k: v for k, v in want.items() if k != "frames"}

    # bad arguments: a usage error (2) or one line naming the failure (1), never a crash
    res = subprocess.run(cmd[:2] + ["--engines", str(aoti_engines.directory), "--out", str(out)], capture_output=True,
                         text=True)
    assert res.returncode == 1 and "already exists" in res.stderr and "[io]" in res.stderr
    res = subprocess.run(cmd + ["--steps", "x"], capture_output=True, text=True)
    assert res.returncode == 2 and "--steps needs a number" in res.stderr
    res = subprocess.run(cmd[:2] + ["--engines", str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True,
                         text=True)
    assert res.returncode == 1 and "has no readable manifest.json" in res.stderr
    res = subprocess.run([str(cpp_build.program("vfrt-orbit-c")), str(aoti_engines.directory), str(input_png),
                          str(tmp_path / "c"), "3", "2"], capture_output=True, text=True)
    assert res.returncode == 0 and "2 views of" in res.stdout, res.stdout + res.stderr
    assert sorted(p.name for p in (tmp_path / "c" / "views").iterdir()) == ["000.png", "001.png", "002.png"]


def test_vfrt_orbit_with_a_low_ring_writes_what_vfrt_run_writes(cpp_build, aoti_engines, input_png, tmp_path, vfrt_c,
                                                                 engine):
    """--low-ring: the same views as Python's Pipeline.orbit(low_ring=...) under the same seed, named
    views/low_XXX.png by azimuth, and transforms.json with both rings (cameras.py's rings)."""
    import math

    from vfrt.runtime.cameras import write_transforms_json_rings
    from vfrt.runtime.preprocess import to_uint8
    from vfrt.runtime.sampler import SamplerConfig
    out = tmp_path / "orbit"
    cmd = [str(cpp_build.program("vfrt-orbit")), str(input_png), "--engines", str(aoti_engines.directory), "--out",
           str(out), "--views", "6", "--steps", "4", "--seed", "3", "--elevation", "20", "--low-ring", "3",
           "--low-ring-polar", "40"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    py = _python_engines(aoti_engines).orbit(input_png, views=6, low_ring=3, low_ring_polar=40.0,
                                             sampler=SamplerConfig(steps=4, seed=3), preprocess=False)
    for i, frame in enumerate(py.orbit_images()):
        assert np.array_equal(np.asarray(Image.open(out / "views" / f"{i:03d}.png")), to_uint8(frame)), i
    low = py.low_ring_images()
    assert len(low) == 3 and sorted(p.name for p in (out / "views").glob("low_*.png")) == [
        "low_000.png", "low_001.png", "low_002.png"]
    for j, frame in enumerate(low):
        assert np.array_equal(np.asarray(Image.open(out / "views" / f"low_{j:03d}.png")), to_uint8(frame)), j
    ring_elevation = 20.0 - math.degrees(py.low_ring_poses()[0][0])
    want = json.loads(write_transforms_json_rings(
        tmp_path / "want.json", [(6, 20.0, None), (3, ring_elevation, [f"views/low_{j:03d}.png" for j in range(3)])],
        image_size=py.inputs.shape[-1]).read_text())
    written = json.loads((out / "transforms.json").read_text())
    assert [f["file_path"] for f in written["frames"]] == [f["file_path"] for f in want["frames"]]
    assert [f["elevation_deg"] for f in written["frames"]] == [f["elevation_deg"] for f in want["frames"]]
    assert [f["azimuth_deg"] for f in written["frames"]] == pytest.approx([f["azimuth_deg"] for f in want["frames"]])
    np.testing.assert_allclose([f["transform_matrix"] for f in written["frames"]],
                               [f["transform_matrix"] for f in want["frames"]], atol=1e-12)
    res = subprocess.run(cmd[:-4] + ["--generate", "2", "--low-ring", "3", "--overwrite"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "complete orbit" in res.stderr, res.stdout + res.stderr

    # the C API: the same views, the ring's plans, and the two orders (-1 past each ring)
    orders: dict = {}
    views = vfrt_c.generate(engine, input_png, vfrt_c.options(views=6, steps=4, seed=3, elevation=20.0, low_ring=3,
                                                              low_ring_polar=40.0), orders=orders)
    assert len(views) == 8 and [v.pose[0] for v in views[5:]] == pytest.approx([math.radians(40.0)] * 3)
    assert [v.references for v in views[5:]] == [p.tolist() for p in py.references[5:]]
    assert orders["orbit"][5:] == [-1, -1, -1] and sorted(orders["orbit"][:5]) == [0, 1, 2, 3, 4]
    assert orders["low_ring"] == [5, 6, 7, -1, -1, -1, -1, -1]        # azimuths 0, +120, -120 (= 240)


README_PROGRAM = """
#include <vfrt/vfrt.hpp>
#include <iostream>
int main(int argc, char** argv) {
  vfrt::Engine engine(argv[1]);                       // a `vfrt build-engines` directory
  vfrt::Options options;                              // the original's defaults; change what you need
  options.views = 4;
  options.steps = 4;
  vfrt::Result orbit = engine.orbit(vfrt::load_png(argv[2]), options);
  orbit.save(argv[3]);                                // views/NNN.png + transforms.json
  std::cout << orbit.views.size() << " views\\n";
}
"""


def test_the_readme_lines_build_against_the_installed_package(cpp_install, aoti_engines, input_png, tmp_path):
    """find_package(vfrt) + target_link_libraries: a user's project needs no torch headers (C++17)."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\nset(CMAKE_CXX_STANDARD 17)\n"
        "find_package(vfrt REQUIRED)\nadd_executable(app main.cpp)\ntarget_link_libraries(app PRIVATE vfrt::vfrt)\n")
    (project / "main.cpp").write_text(README_PROGRAM)
    for cmd in (["cmake", "-S", str(project), "-B", str(project / "build"), f"-DCMAKE_PREFIX_PATH={cpp_install}"],
                ["cmake", "--build", str(project / "build")]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = subprocess.run([str(project / "build" / "app"), str(aoti_engines.directory), str(input_png),
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "3 views", res.stdout + res.stderr
    assert (tmp_path / "out" / "transforms.json").is_file()


def test_bench_cpp_runs_on_the_cpu(cpp_build, aoti_engines, tmp_path, capsys):
    """benchmarks/bench_cpp.py end to end on the tiny engines (the lead runs it full size on one GPU): the
    build step reuses the session's build folder, the Python worker and vfrt-bench run as fresh processes."""
    out = tmp_path / "cpp.json"
    code = bench_cpp.main(["--engines", str(aoti_engines.directory), "--work", str(tmp_path / "work"), "--build-dir",
                           str(cpp_build.directory), "--jobs", "2", "--views", "4", "--steps", "4", "--out", str(out)])
    res = json.loads(out.read_text())
    assert code == 0 and res["agreement"]["first_view_max_abs"] <= SAME_ENGINE_TOLERANCE
    assert res["toolchain"]["first_attempt"] == "loads" and res["cpp"]["graphs"] is False
    assert [r["generated"] for r in res["cpp"]["runs"]] == [3, 3] and len(res["python"]["orbits"]) == 2
    warm = res["cpp"]["runs"][-1]
    assert warm["unet_steps"] == 3 * 3 and warm["denoise_device"] == 0.0 and 0 < warm["denoise_launch"] <= warm["total"]
    assert "C++ vs Python, first view, same draws" in capsys.readouterr().out
