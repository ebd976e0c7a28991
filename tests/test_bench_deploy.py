"""benchmarks/bench_deploy.py: a smoke run on a tiny setting (tables, CSV, plot; no timing asserted) and the
fp32 peak estimate's derivation from /proc/cpuinfo-style text."""
import csv
import os
import platform
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_deploy  # noqa: E402

CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\ncpu MHz\t\t: 2500.000\n"
CPUINFO += "flags\t\t: {flags}\n\n"


@pytest.mark.parametrize("vendor, family, flags, lanes", [
    ("GenuineIntel", 6, "fma avx2 avx512f", 16),
    ("AuthenticAMD", 25, "fma avx2 avx512f", 8),
    ("AuthenticAMD", 23, "fma avx2", 8),
    ("GenuineIntel", 6, "sse4_2", 4),
])
def test_cpu_peak_from_cores_clock_and_vector_width(tmp_path, vendor, family, flags, lanes):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor=vendor, family=family, flags=flags) + "processor\t: 1\n")
    peak, how = bench_deploy.cpu_peak(2, None, str(cpuinfo), max_freq=str(tmp_path / "absent"))
    assert peak == pytest.approx(2 * 2.5 * 2 * lanes * 2)
    assert "2 core(s) x 2.500 GHz" in how and f"{lanes} fp32 lanes" in how
    (tmp_path / "max_freq").write_text("3700000\n")  # kHz, as cpufreq writes it
    boosted = bench_deploy.cpu_peak(2, None, str(cpuinfo), str(tmp_path / "max_freq"))[0]
    assert boosted == pytest.approx(peak * 3.7 / 2.5)
    measured, how = bench_deploy.cpu_peak(2, 3.0, str(cpuinfo), str(tmp_path / "max_freq"))
    assert measured == pytest.approx(peak * 3.0 / 2.5) and "measured" in how


def test_measured_clock_is_a_clock():
    clock = bench_deploy.measured_clock_ghz(iterations=2_000_000, runs=3)
    if platform.machine() != "x86_64":
        assert clock is None
    else:
        assert 0.5 < clock < 7.0


@pytest.mark.slow
def test_bench_deploy_tiny(tmp_path, capsys):
    bench_deploy.main(["--inputs", "synthetic=64", "--families", "retinanet", "--models", "deploy",
                       "--threads", "1", "--rounds", "1", "--warmup", "0", "--work", str(tmp_path / "work"),
                       "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| retinanet | synthetic 64x64 | deploy R-18 | onnxruntime | cpu | 1 |" in out
    assert "% of the estimated peak" in out
    for ext in ("csv", "md", "png"):
        assert os.path.getsize(tmp_path / f"deploy.{ext}") > 0
    with open(tmp_path / "deploy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["runtime"] for r in rows] == ["pytorch fp32", "onnxruntime"]
    assert all(float(r["ms"]) > 0 and float(r["gflops"]) > 0 for r in rows)
