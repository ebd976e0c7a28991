"""The tools' argparse types (ds2d2_onnx.cli_args): a value outside its range stops the tool, naming the
flag."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ds2d2_onnx.cli_args import fraction, non_negative_int, positive_float, positive_int

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("parse, good, bad", [
    (fraction, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["nan", "inf", "-0.1", "1.5", "x"]),
    (positive_float, {"0.5": 0.5, "2": 2.0}, ["0", "-1", "nan", "inf", "x"]),
    (positive_int, {"1": 1, "640": 640}, ["0", "-3", "1.5", "nan", "x"]),
    (non_negative_int, {"0": 0, "200": 200}, ["-1", "2.5", "x"]),
])
def test_each_type_takes_its_range_and_refuses_the_rest(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("(", r"\(")):
            parse(text)


@pytest.mark.parametrize("script, flag, value", [
    ("tools/infer_large_image.py", "--nms-thresh", "nan"),
    ("tools/infer_large_image.py", "--draw-score", "2"),
    ("tools/infer_large_image.py", "--threads", "0"),
    ("tools/infer_large_image.py", "--patch-size", "0"),
    ("tools/infer_large_image.py", "--gap", "-1"),
    ("tools/infer_large_image.py", "--rates", "0"),
    ("tools/infer_large_image.py", "--batch-size", "0"),
    ("datasets/prepare_dota.py", "--min-inside", "nan"),
    ("datasets/prepare_dota.py", "--workers", "0"),
    ("datasets/prepare_dota.py", "--max-pixels", "0"),
])
def test_tools_refuse_a_bad_flag_by_name(script, flag, value, tmp_path):
    """Before: --nms-thresh nan merged nothing, --threads 0 failed inside onnxruntime without the flag."""
    args = [sys.executable, str(ROOT / script), "--input" if "infer" in script else "--src", str(tmp_path),
            "--output" if "infer" in script else "--dst", str(tmp_path / "out"), flag, value]
    if "infer" in script:
        args += ["--onnx", str(tmp_path / "model.onnx")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"argument {flag}" in done.stderr and repr(value) in done.stderr
    assert not (tmp_path / "out").exists()
