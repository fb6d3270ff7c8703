"""GenerationResult.save writes what `vfrt run` writes; the README's tiny-checkpoint Python snippet runs as written."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vfrt import EngineConfig, Pipeline, SamplerConfig

ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mode", ["orbit", "single"])
def test_save_writes_the_run_folder_of_vfrt_run(tiny_model, photo, tmp_path, mode):
    from vfrt.runtime.run import RunConfig, run_to_folder
    pipe = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu"))
    sampler = SamplerConfig(steps=4, seed=2)
    cfg = RunConfig(mode=mode, views=6, delta_azimuth=25.0 if mode == "single" else 0.0, sampler=sampler,
                    elevation=20.0)
    folder = run_to_folder(pipe, photo, cfg, tmp_path / "run")
    if mode == "orbit":
        result = pipe.orbit(photo, views=6, sampler=sampler)
    else:
        result = pipe.single(photo, delta_azimuth=25.0, sampler=sampler)
    saved = result.save(tmp_path / "saved", elevation=20.0)
    run_files, saved_files = _files(folder), _files(saved)
    only_in_run = {"run.json", "input.png", "mask.png"} | {k for k in run_files if k.startswith("inputs/")}
    assert set(run_files) - set(saved_files) == only_in_run - {"run.json"}
    for name, data in saved_files.items():
        if name not in ("run.json", "orbit.gif", "orbit.mp4"):     # encoders may embed timestamps
            assert data == run_files[name], name
    meta = json.loads((saved / "run.json").read_text())
    assert meta["complete"] and meta["sampler"]["seed"] == 2 and meta["mode"] == mode
    assert meta["generated_views"] == json.loads((folder / "run.json").read_text())["generated_views"]
    with pytest.raises(Exception, match="already exists"):
        result.save(tmp_path / "saved")
    assert not list(tmp_path.glob(".saved.*")), "no temporary folder is left behind"
    assert "noise.npz" not in saved_files                       # the bank only when asked for
    again = result.save(tmp_path / "saved", overwrite=True, save_noise=True)
    np.testing.assert_array_equal(np.load(again / "noise.npz")["x_T"], np.stack(result.noise.x_T))


def test_the_readme_tiny_checkpoint_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Python example for a tiny checkpoint, run with its own paths redirected into tmp_path."""
    from click.testing import CliRunner

    from vfrt.cli.main import cli
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# Without weights.*?)```", text, re.S)
    assert block, "README lost its tiny-checkpoint Python example"
    code = block.group(1)
    tiny = re.search(r"vfrt make-test-checkpoint ([^\s`]+)", code).group(1)
    res = CliRunner().invoke(cli, ["make-test-checkpoint", str(tmp_path / "tiny")])
    assert res.exit_code == 0, res.output
    code = code.replace(tiny, str(tmp_path / "tiny")).replace('"runs/', f'"{tmp_path}/runs/')
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs").is_dir() and any((tmp_path / "runs").rglob("views/000.png"))
