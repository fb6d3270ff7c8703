"""`vfrt bench`'s printed table, rendered from a result it recorded on the H100 (docs/)."""
import json
from pathlib import Path

from vfrt.runtime.benchmark import format_table

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_table_renders_a_recorded_result():
    res = json.loads((DOCS / "bench_h100_run6_default.json").read_text())
    text = format_table(res)
    lines = text.splitlines()
    assert "compile=True" in lines[0] and "fused_geglu=True" in lines[0]
    assert lines[1].split()[:3] == ["K", "reference", "ms"]
    k25 = next(line for line in lines if line.split()[0] == "25")
    assert k25.split() == ["25", "142.60", "20.04", "12.82", "11.1"]
    assert "fast_orbit_warm_s: 22.515" in text and "fidelity_psnr_db: [70.76, 70.72]" in text


def test_table_without_a_reference_shows_nan_speed_ups():
    res = json.loads((DOCS / "bench_h100_run6_first_orbit.json").read_text())
    k1 = next(line for line in format_table(res).splitlines() if line.split()[0] == "1")
    assert k1.split()[1] == "nan" and k1.split()[-1] == "nan"


def test_table_names_the_triton_conv_setting():
    """Run 7's `--triton-conv` result: the header says which convolution path was timed."""
    res = json.loads((DOCS / "bench_h100_run7_triton_conv.json").read_text())
    lines = format_table(res).splitlines()
    assert "triton_conv=True" in lines[0]
    assert next(line for line in lines if line.split()[0] == "1").split()[3] == "2.87"
    old = format_table(json.loads((DOCS / "bench_h100_run6_default.json").read_text())).splitlines()[0]
    assert "triton_conv=None" in old   # recorded before the option existed
