"""Start-up: loading built engines, or running the plain kernel choices, never imports Triton (the Triton
kernels are imported when an engine chooses one: fused GEGLU, Triton convolutions)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys, torch
if "triton" in sys.modules:
    print("torch-imports-triton"); raise SystemExit(0)
import vfrt.engines.engine_dir, vfrt.engines.engine_cache, vfrt.engines.specs
from vfrt.engines.unet_rewrite import UNetStep, prepare_unet
from vfrt.models.testing import tiny_config
from vfrt.models.zero123 import Zero123
unet = prepare_unet(Zero123.from_config(tiny_config()).unet, "cpu", torch.float32, channels_last=True)
step = UNetStep(unet)
print("plain", "triton" in sys.modules)
step.configure(attention="auto", fused_geglu=True, triton_conv=True)
print("chosen", "triton" in sys.modules)
"""


def test_triton_is_imported_only_when_a_triton_kernel_is_chosen():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    if lines == ["torch-imports-triton"]:
        return                                     # nothing to save where torch itself imports Triton
    assert "plain False" in proc.stdout, proc.stdout
    try:
        import triton  # noqa: F401
    except ImportError:
        return                                     # the chosen kernels then run in PyTorch (interpreter off)
    assert "chosen True" in proc.stdout, proc.stdout
