"""`vfrt run` from the shell's point of view: outputs, resume, and clear errors (never tracebacks)."""
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pathlib import Path

from vfrt.cli.main import cli
from vfrt.runtime.run import RunConfig, RunError, run_to_folder


def _args(tc, photo, out, *extra):
    return ["run", str(photo), "-c", str(tc.ckpt), "--config", str(tc.yaml), "--steps", "4", "--device", "cpu",
            "-o", str(out), *extra]


def test_help_works():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "run" in res.output and "recon" in res.output


def test_missing_checkpoint_says_what_to_get(photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFRT_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    res = CliRunner().invoke(cli, ["run", str(photo)])
    assert res.exit_code != 0
    assert "zero123-xl.ckpt" in res.output and "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_orbit_run_writes_a_complete_folder(tiny_checkpoint, photo, tmp_path):
    out = tmp_path / "orbit"
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "8", "--save-noise"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "views").iterdir()) == [f"{i:03d}.png" for i in range(8)]
    for name in ("transforms.json", "cameras.json", "grid.png", "noise.npz", "run.json", "orbit.gif", "orbit.mp4",
                 "input.png", "mask.png", "inputs/0_object.png"):
        assert (out / name).is_file(), name
    assert (out / "inputs" / "0_object.png").read_bytes() == photo.read_bytes()
    # input.png is exactly the model input; mask.png the photo's alpha mask at its own size
    from vfrt.runtime.preprocess import load_image
    assert torch.equal(load_image(out / "input.png", preprocess=False), load_image(photo, size=64))
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (80, 80) and np.array_equal(mask > 0, np.asarray(Image.open(photo))[..., 3] > 127)
    # grid: 8 labelled views, 6 to a row; the gif and mp4 hold the 8 orbit views
    grid = Image.open(out / "grid.png")
    assert grid.width == 6 * 64 and grid.height > 2 * 64
    with Image.open(out / "orbit.gif") as gif:
        assert gif.n_frames == 8
    import imageio_ffmpeg
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(out / "orbit.mp4"))) == 1 + 8
    tf = json.loads((out / "transforms.json").read_text())
    assert len(tf["frames"]) == 8 and tf["frames"][1]["file_path"] == "views/001.png"
    meta = json.loads((out / "run.json").read_text())
    assert meta["complete"] and len(meta["generated_views"]) == 7
    assert meta["segmentation"] == "alpha" and meta["inputs"][0]["file"] == "inputs/0_object.png"
    assert not (tmp_path / "orbit.partial").exists()
    # replaying the saved noise bank reproduces the views exactly
    res2 = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "again", "--views", "8", "--seed", "9",
                                         "--noise", str(out / "noise.npz")))
    assert res2.exit_code == 0, res2.output
    for i in range(8):
        a = np.asarray(Image.open(out / "views" / f"{i:03d}.png"))
        b = np.asarray(Image.open(tmp_path / "again" / "views" / f"{i:03d}.png"))
        assert np.array_equal(a, b)
    # without --save-noise no bank is written, and the same (default) seed draws the same noise again
    res4 = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "seeded", "--views", "8"))
    assert res4.exit_code == 0, res4.output
    assert not (tmp_path / "seeded" / "noise.npz").exists()
    for i in range(8):
        assert np.array_equal(np.asarray(Image.open(out / "views" / f"{i:03d}.png")),
                              np.asarray(Image.open(tmp_path / "seeded" / "views" / f"{i:03d}.png")))
    # an existing folder is not overwritten silently
    res3 = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "8"))
    assert res3.exit_code != 0 and "already exists" in res3.output


def test_single_mode_outputs(tiny_checkpoint, photo, tmp_path):
    out = tmp_path / "single"
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--mode", "single", "--polar", "-10",
                                        "--azimuth", "25"))
    assert res.exit_code == 0, res.output
    assert (out / "target.png").is_file() and (out / "views" / "step_03.png").is_file()
    cams = json.loads((out / "cameras.json").read_text())["views"]
    grid = Image.open(out / "grid.png")          # input + each step, labelled: one row of 8 at most
    assert grid.width == min(8, 1 + len(cams)) * 64 and grid.height > 64
    assert (out / "input.png").is_file() and not (out / "orbit.gif").exists()


def test_multi_input_run_copies_and_segments_every_input(tiny_checkpoint, photo, tmp_path):
    """An --extra-input photo without alpha, on a coloured background: segmented (GrabCut here),
    copied into inputs/, its model input and mask saved, and shown at the end of the grid."""
    side = tmp_path / "side.jpg"
    rgb = np.full((72, 96, 3), (60, 90, 160), np.uint8)
    rgb[20:56, 30:70] = (230, 200, 40)
    Image.fromarray(rgb).save(side, quality=95)
    out = tmp_path / "multi"
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "4", "--segment", "grabcut",
                                        "--extra-input", f"{side}@0,180"))
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "run.json").read_text())
    assert [i["segmentation"] for i in meta["inputs"]] == ["alpha", "grabcut"]
    assert meta["inputs"][1]["pose_deg"] == [0.0, 180.0, 0.0]
    assert meta["fingerprint"]["config"]["segment"] == "grabcut"
    assert (out / "inputs" / "1_side.jpg").read_bytes() == side.read_bytes()
    mask = np.asarray(Image.open(out / "inputs" / "1_side.mask.png")) > 0
    ys, xs = np.nonzero(mask)
    box = np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1])
    assert np.abs(box - [20, 56, 30, 70]).max() <= 1          # the object, give or take JPEG's edge ringing
    model_input = np.asarray(Image.open(out / "inputs" / "1_side.input.png"))
    assert (model_input[0, 0] == 255).all()              # background replaced by white
    grid = Image.open(out / "grid.png")
    assert grid.width == 5 * 64                           # 4 orbit views + the extra input


def test_unwritable_outputs_keep_the_views_and_a_rerun_finishes(tiny_checkpoint, photo, tmp_path, monkeypatch):
    import vfrt.runtime.run as run_module
    from vfrt.runtime.media import MediaError, write_mp4

    def broken(path, frames):
        raise MediaError("could not write orbit.mp4: ffmpeg exploded")
    monkeypatch.setattr(run_module, "write_mp4", broken)
    out = tmp_path / "media"
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "4"))
    assert res.exit_code != 0 and "ffmpeg exploded" in res.output and "Traceback" not in res.output
    assert not out.exists() and len(list((tmp_path / "media.partial" / "generated").glob("v*.npy"))) == 3
    monkeypatch.setattr(run_module, "write_mp4", write_mp4)
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "4"))
    assert res.exit_code == 0, res.output
    assert (out / "orbit.mp4").is_file() and not (tmp_path / "media.partial").exists()


def test_interrupted_run_resumes_to_the_same_result(tiny_model, photo, tmp_path):
    from vfrt import EngineConfig, Pipeline, SamplerConfig
    pipe = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu"))
    cfg = RunConfig(views=6, sampler=SamplerConfig(steps=4))
    full = run_to_folder(pipe, photo, cfg, tmp_path / "full")

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_to_folder(pipe, photo, cfg, out, on_view=stop_after_two)
    assert not out.exists() and (tmp_path / "resumed.partial" / "generated" / "v01.npy").is_file()
    seen = []
    run_to_folder(pipe, photo, cfg, out, on_view=lambda d, t: seen.append(d))
    assert seen == [3, 4, 5]  # views 1-2 were not generated again
    for i in range(6):
        assert np.array_equal(np.asarray(Image.open(full / "views" / f"{i:03d}.png")),
                              np.asarray(Image.open(out / "views" / f"{i:03d}.png")))
    with pytest.raises(RunError, match="already exists"):
        run_to_folder(pipe, photo, cfg, out)


def test_out_of_memory_keeps_the_finished_views_and_says_what_to_lower(tiny_checkpoint, photo, tmp_path, monkeypatch):
    import torch

    from vfrt.engines.reference import ReferenceEngine
    bind = ReferenceEngine.bind

    def bind_until_view_2(self, refs, *a, **kw):
        if len(refs) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bind(self, refs, *a, **kw)
    monkeypatch.setattr(ReferenceEngine, "bind", bind_until_view_2)
    out = tmp_path / "oom"
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "6", "--backend", "reference"))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert re.search(r"ran out of memory at view \d \(K = 3 references\): try --backend fast, fewer --views",
                     res.output)
    assert not out.exists() and (tmp_path / "oom.partial" / "generated" / "v01.npy").is_file()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    import vfrt.cli.common as common

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(common, "load_pipeline", refuse)


@pytest.mark.parametrize("extra, message", [
    (["--mode", "single"], "needs a target pose"),
    (["--views", "1"], "Invalid value for '--views': 1 is not in the range x>=2"),
    (["--extra-input", "nope.png@0,90"], "image not found"),
    (["--extra-input", "x"], "PATH@POLAR"),
    (["--steps", "1"], "Invalid value for '--steps'"),
    (["--steps", "3"], "not usable with the original DDIM"),
    (["--segment", "magic"], "Invalid value for '--segment'"),
    (["--mode", "single", "--polar", "500"], "takes the camera past a pole"),
    (["--mode", "single", "--azimuth", "720"], "azimuth delta must be within -360..360"),
    (["--mode", "single", "--azimuth", "30", "--radius", "2"], "radius delta must be within"),
    (["--elevation", "200"], "Invalid value for '--elevation'"),
    (["--generate", "40"], "generate must be in [1, 35]"),
    (["--device", "xyz"], "unknown device 'xyz': use auto, cpu, cuda or cuda:N"),
    (["--guidance", "-1"], "Invalid value for '--guidance'"),
])
def test_bad_arguments_exit_2_before_the_model_loads(tiny_checkpoint, photo, tmp_path, no_model_load, extra, message):
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "bad", *extra))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output and "device='cpu'" not in res.output
    assert not (tmp_path / "bad").exists()


def test_bad_files_are_refused_before_the_model_loads(tiny_checkpoint, photo, tmp_path, no_model_load):
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("model:\n  target: [unclosed\n")
    res = CliRunner().invoke(cli, ["run", str(photo), "-c", str(tiny_checkpoint.ckpt), "--config", str(broken_yaml),
                                   "--device", "cpu", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not valid YAML at line" in res.output and "Traceback" not in res.output
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(photo.read_bytes()[:200])
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(blank)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    for bad, message in ((truncated, "cannot read"), (blank, "foreground"), (text, "cannot read")):
        res = CliRunner().invoke(cli, _args(tiny_checkpoint, bad, tmp_path / "o"))
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "o", "--noise", str(photo)))
    assert res.exit_code == 2 and "is not a noise bank" in res.output and "allow_pickle" not in res.output
    (tmp_path / "exists").mkdir()
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "exists"))
    assert res.exit_code == 2 and "already exists" in res.output
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, Path("/proc/vfrt-cannot-write")))
    assert res.exit_code == 2 and "cannot write the output folder" in res.output and "Traceback" not in res.output


def test_a_text_file_as_checkpoint_is_not_called_unsafe(photo, tmp_path):
    ck = tmp_path / "notes.ckpt"
    ck.write_text("hello!!!")
    res = CliRunner().invoke(cli, ["run", str(photo), "-c", str(ck), "--device", "cpu", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "is not a PyTorch checkpoint" in res.output
    assert "trust" not in res.output and "Traceback" not in res.output


def test_the_checkpoint_message_says_where_the_path_came_from(photo, tmp_path, monkeypatch):
    monkeypatch.setenv("VFRT_CHECKPOINT", str(tmp_path / "missing.ckpt"))
    res = CliRunner().invoke(cli, ["run", str(photo), "--device", "cpu", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "missing.ckpt (from $VFRT_CHECKPOINT)" in res.output


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "24"], "not a multiple of 16"),
    (["--image-size", "-8"], "Invalid value for '--image-size'"),
    (["--image-size", "0"], "Invalid value for '--image-size'"),
])
def test_make_test_checkpoint_refuses_sizes_the_model_cannot_use(tmp_path, extra, message):
    res = CliRunner().invoke(cli, ["make-test-checkpoint", str(tmp_path / "t"), *extra])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "t").exists()


def test_make_test_checkpoint_into_an_unwritable_place():
    res = CliRunner().invoke(cli, ["make-test-checkpoint", "/proc/vfrt-tiny"])
    assert res.exit_code == 1 and "cannot write into /proc/vfrt-tiny" in res.output and "Traceback" not in res.output


def test_resuming_with_other_settings_keeps_the_finished_views(tiny_checkpoint, photo, tmp_path, monkeypatch):
    """Ctrl-C after two views, then the same command with another seed: refused, views kept; --no-resume discards."""
    from vfrt.runtime import run as run_module
    real = run_module.run_to_folder

    def interrupted(*a, on_view=None, **k):
        def stop(done, total):
            on_view(done, total)
            if done == 2:
                raise KeyboardInterrupt
        return real(*a, on_view=stop, **k)
    out = tmp_path / "o"
    monkeypatch.setattr(run_module, "run_to_folder", interrupted)
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "6"))
    assert res.exit_code == 1 and "interrupted" in res.output
    monkeypatch.setattr(run_module, "run_to_folder", real)
    views = sorted((tmp_path / "o.partial" / "generated").glob("v*.npy"))
    assert len(views) == 2
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "6", "--seed", "7"))
    assert res.exit_code == 2 and "2 views done" in res.output and "config.sampler.seed" in res.output
    assert sorted((tmp_path / "o.partial" / "generated").glob("v*.npy")) == views
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, out, "--views", "6", "--seed", "7", "--no-resume"))
    assert res.exit_code == 0 and (out / "run.json").is_file()


def test_redirected_output_shows_progress_lines(tiny_checkpoint, photo, tmp_path):
    """Not a terminal: plain lines with the view count and an ETA instead of a silent hour."""
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "o", "--views", "4"))
    assert res.exit_code == 0, res.output
    assert "loading" in res.output and "view 3/3" in res.output and "ETA" in res.output
    quiet = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "q", "--views", "4", "-q"))
    assert quiet.exit_code == 0 and "view 3/3" not in quiet.output and "done:" in quiet.output


def test_corrupt_noise_bank_and_checkpoint(tiny_checkpoint, photo, tmp_path):
    bad = tmp_path / "bank.npz"
    bad.write_bytes(b"junk")
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "o", "--noise", str(bad)))
    assert res.exit_code != 0 and "noise bank" in res.output
    ck = tmp_path / "broken.ckpt"
    ck.write_bytes(b"definitely not a checkpoint")
    res = CliRunner().invoke(cli, ["run", str(photo), "-c", str(ck), "--device", "cpu", "-o", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "Traceback" not in res.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU messages")
def test_gpu_only_paths_explain_themselves_without_a_gpu(tiny_checkpoint, photo, tmp_path):
    res = CliRunner().invoke(cli, ["bench"])
    assert res.exit_code != 0 and "needs a CUDA GPU" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["run", str(photo), "-c", str(tiny_checkpoint.ckpt), "--config",
                                   str(tiny_checkpoint.yaml), "--device", "cuda", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no CUDA GPU" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["run", str(photo), "-c", str(tiny_checkpoint.ckpt), "--config",
                                   str(tiny_checkpoint.yaml), "--device", "tpu", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_recon_without_its_extra_asks_for_it(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trimesh" else real(name, *a))
    res = CliRunner().invoke(cli, ["eval-mesh", str(tmp_path / "a.ply"), str(tmp_path / "b.ply")])
    assert res.exit_code != 0 and "vfrt[recon]" in res.output and "Traceback" not in res.output


def test_several_images_share_one_model_and_a_bad_one_does_not_stop_the_rest(tiny_checkpoint, photo, tmp_path):
    other = tmp_path / "other.png"
    Image.fromarray(np.asarray(Image.open(photo))[::-1].copy()).save(other)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(blank)   # no foreground: fails
    res = CliRunner().invoke(cli, ["run", str(photo), str(blank), str(other), "-c", str(tiny_checkpoint.ckpt),
                                   "--config", str(tiny_checkpoint.yaml), "--steps", "4", "--views", "4",
                                   "--device", "cpu", "-o", str(tmp_path / "batch")])
    assert res.exit_code != 0 and "1 of 3 images failed" in res.output and "no foreground" in res.output
    assert (tmp_path / "batch" / "object" / "run.json").is_file()
    assert (tmp_path / "batch" / "other" / "run.json").is_file()
    assert not (tmp_path / "batch" / "blank").exists()


@pytest.mark.parametrize("n_images,extra,views,choice,compiles,cudnn", [
    (1, [], 35, None, False, False),            # one orbit: compiling would cost more than it saves
    (3, [], 105, None, True, False),            # 3 x 35 views: compiling pays off, cuDNN attention not yet
    (6, [], 210, None, True, True),             # 6 x 35 views: both pay off
    (3, ["--generate", "4"], 12, None, False, False),
    (1, ["--compile"], 35, True, True, False),  # the user's choice wins either way
    (6, ["--no-compile"], 210, False, False, True),
])
def test_the_run_states_its_workload_and_the_shared_policy_decides(tiny_checkpoint, photo, tmp_path, monkeypatch,
                                                                    n_images, extra, views, choice, compiles, cudnn):
    """`vfrt run` tells the engine config how many views it will generate; what that means on a GPU is decided by
    the same EngineConfig.resolve the Python API uses (checked here with the policy functions on a CUDA device)."""
    import shutil

    import torch

    import vfrt.cli.common as common
    from vfrt.engines.config import compile_pays_off, cudnn_attention_pays_off
    seen = {}

    def fake_load(ckpt, config, engine, trust, ema, source=""):
        seen["engine"] = engine
        raise SystemExit(0)
    monkeypatch.setattr(common, "load_pipeline", fake_load)
    photos = []
    for i in range(n_images):
        p = tmp_path / f"p{i}.png"
        shutil.copy(photo, p)
        photos.append(str(p))
    CliRunner().invoke(cli, ["run", *photos, "-c", str(tiny_checkpoint.ckpt), "--config", str(tiny_checkpoint.yaml),
                             "--backend", "fast", "--device", "cpu", "-o", str(tmp_path / "o"), *extra])
    engine = seen["engine"]
    assert engine.expected_views == views and engine.compile is choice
    cuda = torch.device("cuda")
    assert (compile_pays_off(cuda, views) if choice is None else choice) is compiles
    assert cudnn_attention_pays_off(views) is cudnn


def test_batch_gives_the_views_of_one_at_a_time(tiny_checkpoint, photo, tmp_path):
    """`vfrt run a b c --batch 2`: the same folders as without --batch (PNG rounding aside)."""
    others = []
    for i in range(2):
        p = tmp_path / f"other{i}.png"
        Image.fromarray(np.asarray(Image.open(photo))[:, ::-1 if i else 1].copy()).save(p)
        others.append(str(p))
    photos = [str(photo), *others]
    common = ["-c", str(tiny_checkpoint.ckpt), "--config", str(tiny_checkpoint.yaml), "--steps", "4", "--views", "4",
              "--device", "cpu"]
    one = CliRunner().invoke(cli, ["run", *photos, *common, "-o", str(tmp_path / "one")])
    many = CliRunner().invoke(cli, ["run", *photos, *common, "-o", str(tmp_path / "many"), "--batch", "2"])
    assert one.exit_code == 0 and many.exit_code == 0, many.output
    for stem in ("object", "other0", "other1"):
        for view in range(4):
            a = np.asarray(Image.open(tmp_path / "one" / stem / "views" / f"{view:03d}.png"), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "many" / stem / "views" / f"{view:03d}.png"), dtype=np.int16)
            assert np.abs(a - b).max() <= 1, (stem, view)


@pytest.mark.parametrize("extra, message", [
    (["--batch", "2", "--mode", "single", "--azimuth", "20"], "--batch and --gpus make one orbit per photo"),
    (["--gpus", "64"], "64 GPUs asked for"),
    (["--batch", "0"], "Invalid value for '--batch'"),
])
def test_batch_and_gpus_refuse_what_they_cannot_do(tiny_checkpoint, photo, tmp_path, no_model_load, extra, message):
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "o", *extra))
    assert res.exit_code == 2 and message in res.output, res.output


def test_plain_progress_lines_show_the_step_within_a_view():
    from vfrt.cli.run import _ViewProgress
    progress = _ViewProgress("photo.png: orbit", quiet=False, every=0.0)
    lines = []
    import click
    real = click.echo
    try:
        click.echo = lambda message, err=False: lines.append(message)
        progress.step(3, 76)
        progress.update(1, 35)
    finally:
        click.echo = real
    assert "view 0/?, step 3/76 of the next" in lines[0] and "view 1/35" in lines[1] and "ETA" in lines[1]
    assert "ETA after the first view" in lines[0] and "nan" not in lines[0]        # no estimate before a view is done
    known = _ViewProgress("photo.png: orbit", quiet=False, every=0.0, total=47)   # the run knows its views
    try:
        click.echo = lambda message, err=False: lines.append(message)
        known.step(1, 76)
    finally:
        click.echo = real
    assert "view 0/47, step 1/76 of the next" in lines[2]


def test_missing_animation_writers_are_refused_before_the_model_loads(tiny_checkpoint, photo, tmp_path,
                                                                       no_model_load, monkeypatch):
    """A source checkout without imageio-ffmpeg once generated a whole orbit and then failed on orbit.mp4."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, photo, tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert "imageio-ffmpeg is not installed" in res.output and "pip install imageio-ffmpeg" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()
