"""What CMakeLists.txt needs to know about the installed PyTorch wheel, one ``key=value`` line each.

Run by CMake with the Python of the environment (``Python3_EXECUTABLE``). Besides torch's own CMake
package, it gives what linking the wheel's libraries directly needs: a CUDA build of torch's CMake
package insists on a full CUDA toolkit (nvcc, cuBLAS, NVRTC, ...), while libvfrt only needs the
CUDA runtime's header and library, which the wheel's ``nvidia-*`` dependencies (or CUDA_HOME) provide.
"""
from __future__ import annotations

import glob
import os
import shutil
import site
import sys


def _system_toolkits() -> list[str]:
    """Where Linux CUDA installers put toolkits, newest version first."""
    return ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]


def _cuda_home_dirs() -> list[str]:
    """CUDA toolkits: $CUDA_HOME, $CUDA_PATH, the one holding ``nvcc`` on PATH, /usr/local/cuda(-*)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None,
                  *_system_toolkits()]
    out = []
    for root in candidates:
        if (root and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h"))
                and os.path.realpath(root) not in map(os.path.realpath, out)):
            out.append(root)
    return out


def _nvidia_roots() -> list[str]:
    """``site-packages/nvidia/<package>`` folders of the CUDA libraries torch's wheel depends on."""
    roots = []
    for base in [*site.getsitepackages(), site.getusersitepackages()]:
        roots += sorted(glob.glob(os.path.join(base, "nvidia", "*")))
    return [r for r in roots if os.path.isdir(r)]


def cuda_runtime() -> tuple[list[str], str]:
    """(include folders: the one holding cuda_runtime_api.h first, then every other CUDA include folder
    found; the libcudart shared library). The wheel's nvidia-* packages come before CUDA_HOME, so the
    libcudart linked is the one torch itself loads (the same soname is loaded once)."""
    includes, library = [], ""
    for root in [*_nvidia_roots(), *_cuda_home_dirs()]:
        include = os.path.join(root, "include")
        if os.path.isdir(include) and include not in includes:
            first = os.path.isfile(os.path.join(include, "cuda_runtime_api.h")) and not any(
                os.path.isfile(os.path.join(i, "cuda_runtime_api.h")) for i in includes)
            if first:
                includes.insert(0, include)
            else:
                includes.append(include)
        if not library:
            found = sorted(glob.glob(os.path.join(root, "lib*", "libcudart.so*")))
            library = found[0] if found else ""
    # cuda_runtime.h (which torch's CUDA headers include) needs crt/host_config.h: a wheel's nvidia
    # include folder can lack it (torch 2.11+cu130's did on the H200), a toolkit's has it
    if not all(any(os.path.isfile(os.path.join(i, h)) for i in includes)
               for h in ("cuda_runtime_api.h", os.path.join("crt", "host_config.h"))):
        includes = []
    return includes, library


def main() -> int:
    import torch
    import torch.utils
    torch_dir = os.path.dirname(torch.__file__)
    lines = {"prefix": torch.utils.cmake_prefix_path, "dir": torch_dir, "version": torch.__version__,
             "cuda": torch.version.cuda or "", "cxx11_abi": str(int(torch.compiled_with_cxx11_abi()))}
    if torch.version.cuda:
        includes, lines["cudart"] = cuda_runtime()
        lines["cuda_include"] = ";".join(includes)     # a CMake list
    for key, value in lines.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
