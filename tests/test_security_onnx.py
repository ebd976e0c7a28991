"""Bad input to the ONNX predictor (issue 24): a model file with corrupt weights, and tools/predict_onnx.py's
inputs and flags (clashing output names, NaN thresholds, zero threads, oversized or truncated images).
Each case was accepted silently before (0 detections and exit 0, or overwritten outputs)."""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO, load_script, tiny_cfg
from ds2d2.deploy import export_model
from ds2d2_onnx import DeployFileError, OnnxDetector, integrity

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAN_PATTERNS = (0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000)  # quiet NaN, negative NaN, signalling, +inf


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny random RetinaNet (conftest.TINY: every box scored) exported at a fixed 64 x 64 input."""
    torch.manual_seed(0)
    cfg = tiny_cfg("RetinaNet", ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64])
    path = tmp_path_factory.mktemp("security_onnx") / "tiny.onnx"
    export_model(build_model(cfg).eval(), cfg, str(path), input_size=(64, 64))
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("security_images") / "scene.png"
    cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (5, 5), 2))
    return path


def corrupt_weights(model_path: Path, output: Path) -> str:
    """Copy the model with 4 KB of its largest weight tensor's bytes overwritten in the file by random bytes
    with NaN and infinity patterns among them (the protobuf structure stays intact, so onnxruntime loads
    it); returns that tensor's name."""
    tensor = max(onnx.load(str(model_path)).graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(model_path.read_bytes())
    start = data.find(tensor.raw_data)
    assert start > 0 and len(tensor.raw_data) > 8192
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 2**32, 1024, dtype=np.uint32)
    noise[rng.choice(1024, 64, replace=False)] = rng.choice(NAN_PATTERNS, 64)
    data[start + 1024:start + 1024 + 4096] = noise.astype("<u4").tobytes()
    output.write_bytes(bytes(data))
    return tensor.name


def test_corrupt_weights_refused_at_load_naming_file_and_tensor(tiny_onnx, tmp_path):
    name = corrupt_weights(tiny_onnx, tmp_path / "corrupt.onnx")
    expected = rf"corrupt\.onnx' is corrupt: its weight tensor '{name}' holds"
    with pytest.raises(DeployFileError, match=expected):
        OnnxDetector(str(tmp_path / "corrupt.onnx"), threads=1)
    OnnxDetector(str(tiny_onnx), threads=1)  # the file it was made from loads


def test_infinite_constant_refused(tiny_onnx, tmp_path):
    """Weights folded into Constant nodes are checked too."""
    model = onnx.load(str(tiny_onnx))
    value = onnx.numpy_helper.from_array(np.array([1.0, np.inf], np.float32), "folded")
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["unused_folded"], value=value))
    onnx.save(model, str(tmp_path / "constant.onnx"))
    with pytest.raises(DeployFileError, match=r"constant\.onnx' is corrupt: its weight tensor 'folded'"):
        OnnxDetector(str(tmp_path / "constant.onnx"), threads=1)


def test_corrupt_weights_refused_on_first_image_without_onnx(tiny_onnx, picture, tmp_path, monkeypatch):
    """A deployment with onnxruntime only cannot read the weights: the NaN outputs of the first image are
    refused instead of giving 0 detections."""
    corrupt_weights(tiny_onnx, tmp_path / "corrupt.onnx")
    monkeypatch.setattr(integrity, "onnx", None)
    detector = OnnxDetector(str(tmp_path / "corrupt.onnx"), threads=1)
    image = cv2.imread(str(picture))
    with pytest.raises(DeployFileError, match=r"corrupt\.onnx' gives NaN or infinite values in its output"):
        detector(image)
    assert len(OnnxDetector(str(tiny_onnx), threads=1)(image)) > 0  # the healthy model detects (all scored)


@pytest.mark.parametrize("kwargs, message", [
    ({"score_thresh": float("nan")}, "score_thresh must be a number in"),
    ({"score_thresh": 1.5}, "score_thresh must be a number in"),
    ({"threads": 0}, "threads must be at least 1"),
])
def test_detector_refuses_bad_arguments(tiny_onnx, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnnxDetector(str(tiny_onnx), **kwargs)


@pytest.fixture(scope="module")
def predict_onnx():
    return load_script(REPO / "tools" / "predict_onnx.py", "predict_onnx")


@pytest.mark.parametrize("flag, value", [
    ("--score-thresh", "nan"), ("--score-thresh", "inf"), ("--score-thresh", "-0.1"),
    ("--score-thresh", "1.5"), ("--draw-score", "nan"), ("--threads", "0"), ("--threads", "-2"),
    ("--max-pixels", "0"), ("--max-pixels", "1e6"),
])
def test_predict_onnx_refuses_bad_numbers_naming_the_flag(predict_onnx, tmp_path, capsys, flag, value):
    argv = ["--onnx", str(tmp_path / "model.onnx"), "--input", "x.jpg", "--output", str(tmp_path)]
    argv += [flag, value]
    with pytest.raises(SystemExit) as stopped:
        predict_onnx.main(argv)
    assert stopped.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err


def test_predict_onnx_refuses_inputs_with_the_same_name(predict_onnx, tiny_onnx, picture, tmp_path, capsys):
    inputs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "x.png")
        inputs[-1].write_bytes(picture.read_bytes())
    out = tmp_path / "out"
    argv = ["--onnx", str(tiny_onnx), "--input", *map(str, inputs), "--output", str(out)]
    assert predict_onnx.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{inputs[0]} and {inputs[1]}" in err and "different --output folders" in err
    assert not out.exists()


def test_predict_onnx_exits_1_on_corrupt_model(predict_onnx, tiny_onnx, picture, tmp_path, capsys):
    corrupt_weights(tiny_onnx, tmp_path / "corrupt.onnx")
    argv = ["--onnx", str(tmp_path / "corrupt.onnx"), "--input", str(picture)]
    argv += ["--output", str(tmp_path / "out")]
    assert predict_onnx.main(argv) == 1
    assert "corrupt.onnx' is corrupt" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_predict_onnx_refuses_an_image_over_max_pixels(predict_onnx, tiny_onnx, picture, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--onnx", str(tiny_onnx), "--input", str(picture), "--output", str(out), "--max-pixels", "4799"]
    assert predict_onnx.main(argv) == 1
    err = capsys.readouterr().err
    assert "scene.png' is 80 x 60 = 4800 pixels, more than the limit of 4799" in err and "--max-pixels" in err
    assert not out.exists()
    assert predict_onnx.main([*argv[:-1], "4800", "--threads", "1"]) == 0
    assert json.loads((out / "scene.json").read_text())["width"] == 80


def test_predict_onnx_refuses_a_truncated_jpeg(predict_onnx, tiny_onnx, picture, tmp_path, capsys):
    whole = cv2.imencode(".jpg", cv2.imread(str(picture)))[1].tobytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    argv = ["--onnx", str(tiny_onnx), "--input", str(cut), "--output", str(tmp_path / "out")]
    assert predict_onnx.main(argv) == 1
    assert "cut.jpg' is a truncated JPEG" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cut.json").exists()
