"""Where a fresh process's first AOTInductor compile or package load spends its time (stacks every 10 s).

    python benchmarks/aoti_first_costs.py compile /tmp/probe.pt2     # two small CUDA MLPs, compiled in turn
    python benchmarks/aoti_first_costs.py load ENGINES/time_embedding.pt2 [DEVICE_INDEX]   # as the old load check

Run it with its own cold caches to see a first build's costs (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR,
CUDA_CACHE_PATH pointing at empty folders). Timestamps go to stdout, `faulthandler` stack samples of every
thread to stderr every 10 s: the frames that recur are where the time goes (docs/PERF.md, "Build time").
"""
from __future__ import annotations

import faulthandler
import sys
import time

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.2f}s] {msg}", flush=True)


def first_compile(package: str) -> None:
    import torch
    say("import torch")
    import torch._inductor
    say("import torch._inductor")
    torch.cuda.init()
    say("cuda init")
    x = torch.randn(2, 320, device="cuda", dtype=torch.half)
    for i, hidden in enumerate((1280, 640)):
        net = torch.nn.Sequential(torch.nn.Linear(320, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 320))
        program = torch.export.export(net.cuda().half().eval(), (x,), strict=True)
        say(f"export {i + 1}")
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=package if i == 0 else package + ".2.pt2")
        say(f"compile {i + 1}")


def documented_load(package: str, device_index: int) -> None:
    import torch
    say("import torch")
    import torch._inductor
    say("import torch._inductor")
    torch._inductor.aoti_load_package(package, device_index=device_index)
    say(f"aoti_load_package({package}, {device_index})")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("compile", "load"):
        raise SystemExit(__doc__)
    faulthandler.dump_traceback_later(10, repeat=True, file=sys.stderr)
    if argv[0] == "compile":
        first_compile(argv[1])
    else:
        documented_load(argv[1], int(argv[2]) if len(argv) > 2 else -1)


if __name__ == "__main__":
    main(sys.argv[1:])
