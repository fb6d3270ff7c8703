"""``python -m vfrt.export.aoti_compile PROGRAM PACKAGE DEVICE``: compile one traced network into a package.

The child process of a parallel AOTInductor build (:func:`vfrt.export.aoti.export_in_children`): it loads
the ``ExportedProgram`` the parent saved with ``torch.export.save`` and compiles it exactly as the
in-process build does (:func:`vfrt.export.aoti.compile_package`: cuDNN's SDPA disabled). Exit status 0
when the package is written; otherwise the traceback, then one last line ``TypeName: message`` that the
parent reports. It exits when its parent dies, taking the compiler processes of its process group along.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

USAGE = "usage: python -m vfrt.export.aoti_compile PROGRAM PACKAGE DEVICE"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    program_path, package_path, device_name = argv
    _exit_with_parent(os.getppid())
    import torch

    from vfrt.export.aoti import compile_package
    from vfrt.export.jobs import one_line
    try:
        device = torch.device(device_name)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        compile_package(torch.export.load(program_path), Path(package_path))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the one line the parent reports
        traceback.print_exc()
        print(one_line(exc), file=sys.stderr)
        return 1
    return 0


def _exit_with_parent(parent: int) -> None:
    """Stop this process (and its process group, when it leads one) once ``parent`` is gone: a build that
    was killed leaves no compiler running."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
