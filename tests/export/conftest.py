"""The tiny AOTInductor engines, built once per test session through `vfrt build-engines --device cpu`."""
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class BuiltEngines:
    directory: Path
    cache: Path           # the VFRT_CACHE_DIR they were built into
    seconds: float
    output: str


@pytest.fixture(scope="session")
def aoti_engines(tiny_checkpoint, tmp_path_factory):
    """Compiles six C++ packages: minutes on two busy cores, hence once per session (the time is in
    ``seconds``). Built into a cache of their own, so other tests' runs never pick them up."""
    import shutil

    from click.testing import CliRunner

    from vfrt.cli.main import cli
    from vfrt.export.aoti import inductor_compiler
    if shutil.which(inductor_compiler()) is None:
        pytest.skip(f"AOTInductor needs a C++ compiler ({inductor_compiler()} not found)")
    cache = tmp_path_factory.mktemp("aoti_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VFRT_CACHE_DIR", str(cache))
        t0 = time.perf_counter()
        res = CliRunner().invoke(cli, ["build-engines", "-c", str(tiny_checkpoint.ckpt), "--config",
                                       str(tiny_checkpoint.yaml), "--device", "cpu"])
        seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    directory = Path(re.search(r"built (\S+) in", res.output).group(1))
    return BuiltEngines(directory, cache, seconds, res.output)
