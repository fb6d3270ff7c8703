"""cpp/cmake/torch_paths.py: which CUDA include folders libvfrt compiles against (no GPU or CUDA needed).

On the H200 (torch 2.11+cu130) the wheel's ``nvidia/cu13/include`` held cuda_runtime_api.h but not
crt/host_config.h, which cuda_runtime.h includes: the toolkit's include folder has to follow it.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def torch_paths(monkeypatch):
    spec = importlib.util.spec_from_file_location("torch_paths", ROOT / "cpp" / "cmake" / "torch_paths.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(mod, "_system_toolkits", lambda: [])      # this machine's /usr/local/cuda neither
    monkeypatch.setattr(mod, "_nvidia_roots", lambda: [])
    return mod


def _tree(root: Path, *files: str) -> Path:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")
    return root


def test_a_wheel_include_without_crt_is_completed_by_the_toolkit(torch_paths, tmp_path, monkeypatch):
    wheel = _tree(tmp_path / "nvidia" / "cu13", "include/cuda_runtime_api.h", "lib/libcudart.so.13")
    toolkit = _tree(tmp_path / "cuda-13.0", "include/cuda_runtime_api.h", "include/crt/host_config.h",
                    "bin/nvcc", "lib64/libcudart.so")
    monkeypatch.setattr(torch_paths, "_nvidia_roots", lambda: [str(wheel)])
    monkeypatch.setattr(torch_paths.shutil, "which", lambda name: str(toolkit / "bin" / "nvcc"))
    includes, cudart = torch_paths.cuda_runtime()
    assert includes == [str(wheel / "include"), str(toolkit / "include")]   # the wheel's header first
    assert cudart == str(wheel / "lib" / "libcudart.so.13")                  # the library torch loads


def test_without_crt_anywhere_nothing_is_offered(torch_paths, tmp_path, monkeypatch):
    wheel = _tree(tmp_path / "nvidia" / "cu13", "include/cuda_runtime_api.h", "lib/libcudart.so.13")
    monkeypatch.setattr(torch_paths, "_nvidia_roots", lambda: [str(wheel)])
    assert torch_paths.cuda_runtime()[0] == []           # CMake then stops with "set CUDA_HOME ..."
    monkeypatch.setenv("CUDA_HOME", str(_tree(tmp_path / "home", "include/cuda_runtime_api.h",
                                              "include/crt/host_config.h")))
    assert torch_paths.cuda_runtime()[0][-1] == str(tmp_path / "home" / "include")
