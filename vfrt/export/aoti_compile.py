"""``python -m vfrt.export.aoti_compile PROGRAM PACKAGE DEVICE``: compile one traced network into a package.

The child process of a parallel AOTInductor build (:func:`vfrt.export.aoti.export_in_children`): it loads
the ``ExportedProgram`` the parent saved with ``torch.export.save`` and compiles it exactly as the
in-process build does (:func:`vfrt.export.aoti.compile_package`: cuDNN's SDPA disabled). Exit status 0
when the package is written; otherwise the traceback, then one last line ``TypeName: message`` that the
parent reports. When its standard input reaches its end - the parent's pipe closes as the parent dies
(:func:`vfrt.export.jobs.run_children`) - it stops at once, with the compiler processes of its process
group: a build that was killed leaves no compiler running.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path

USAGE = "usage: python -m vfrt.export.aoti_compile PROGRAM PACKAGE DEVICE"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    program_path, package_path, device_name = argv
    _exit_at_end_of_input()
    import torch

    from vfrt.export.aoti import compile_package
    from vfrt.export.jobs import one_line
    try:
        device = torch.device(device_name)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        compile_package(torch.export.load(program_path), Path(package_path), device)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the one line the parent reports
        traceback.print_exc()
        print(one_line(exc), file=sys.stderr)
        return 1
    return 0


def _exit_at_end_of_input() -> None:
    """Stop this process (and its process group, when it leads one) once standard input ends."""
    def watch():
        try:
            while os.read(0, 4096):       # no buffered reader: its lock would stall the exit
                pass
        except OSError:                   # no standard input to watch
            return
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)
    threading.Thread(target=watch, name="exit-at-end-of-input", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
