"""ONNX export (tools/export_student.py --format onnx, ds2d2.deploy) and the torch-free predictor ds2d2_onnx:
the deployment students of both families, trained for 2 iterations by train_net.py on synthetic data, give the
same detections through onnxruntime as through Detectron2, at several image sizes; bad files are refused."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple

import cv2
import numpy as np
import onnx
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torchvision.ops import batched_nms as batched_nms_torch
from torchvision.ops import nms as nms_torch

from conftest import REPO
from ds2d2.config import load_config
from ds2d2.deploy import detector_config, export_model, export_onnx, load_detector
from ds2d2.export import export_student
from ds2d2_onnx import DeployFileError, Detections, OnnxDetector
from ds2d2_onnx.metadata import METADATA_KEY
from ds2d2_onnx.postprocess import batched_nms, nms
from ds2d2_onnx.preprocess import to_input
from onnx_support import torch_detections

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_torch_thread")]
SYNTHETIC = REPO / "configs" / "synthetic"
# Per family: the deployment distiller config trained here, and the config of its student trained alone.
CONFIGS = {
    "RetinaNet": ("retinanet_R50_to_R18_deploy.yaml", "retinanet_R18_deploy_student.yaml"),
    "GeneralizedRCNN": ("faster_rcnn_R50_to_R18_deploy.yaml", "faster_rcnn_R18_deploy_student.yaml"),
}
TEACHER = {"RetinaNet": "retinanet_R50_teacher.yaml", "GeneralizedRCNN": "faster_rcnn_R50_teacher.yaml"}
# Every box scored, so that the random-ish students of 2 iterations detect something to compare.
ALL_SCORES = {"RetinaNet": ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"],
              "GeneralizedRCNN": ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]}


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_cfg(path: Path, opts=()) -> CfgNode:
    return load_config(str(path), opts, register=False)


class Trained(NamedTuple):
    cfg: CfgNode  # the distiller config as trained (teacher paths replaced), scores unthresholded
    config_file: str
    checkpoint: str
    onnx: str  # its student, exported by the command line (dynamic size)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with 8 synthetic DIOR images (datasets/synthetic_dior)."""
    from ds2d2.data.synthetic import write_synthetic_dior

    root = tmp_path_factory.mktemp("deploy")
    write_synthetic_dior(root / "datasets" / "synthetic_dior", num_images=8, seed=0)
    return root


def tiny_teacher(work: Path, family: str) -> Dict[str, str]:
    """A random R-18 teacher (the synthetic teacher config at depth 18) and its amplifier checkpoint."""
    cfg = read_cfg(SYNTHETIC / TEACHER[family], ["MODEL.RESNETS.DEPTH", "18"])
    paths = {k: str(work / f"{family}_{k}") for k in ("teacher.yaml", "teacher.pth", "amplifier.pth")}
    Path(paths["teacher.yaml"]).write_text(cfg.dump())
    torch.save({"model": build_model(cfg).state_dict()}, paths["teacher.pth"])
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Amplifier", "MODEL.DS2D2.DETECTOR", family,
                         "MODEL.DS2D2.TEACHER_WEIGHTS", paths["teacher.pth"]])
    torch.save({"model": build_model(cfg).state_dict()}, paths["amplifier.pth"])
    return paths


@pytest.fixture(scope="module")
def trained(work):
    """``trained(family)``: the family's deployment DS2D2 config trained 2 iterations by train_net.py (a
    random tiny teacher), and its student exported to ONNX by tools/export_student.py."""
    cache: Dict[str, Trained] = {}

    def get(family: str) -> Trained:
        if family not in cache:
            paths = tiny_teacher(work, family)
            opts = ["MODEL.DS2D2.TEACHER_CONFIG", paths["teacher.yaml"], "MODEL.DS2D2.TEACHER_WEIGHTS",
                    paths["teacher.pth"], "MODEL.DS2D2.AMPLIFIER_WEIGHTS", paths["amplifier.pth"]]
            out = work / f"{family}_out"
            command = [sys.executable, str(REPO / "train_net.py"), "--config-file",
                       str(SYNTHETIC / CONFIGS[family][0]), *opts, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER",
                       "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()"]
            env = dict(os.environ, DETECTRON2_DATASETS=str(work / "datasets"), OMP_NUM_THREADS="1")
            done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            config_file = out / "config.yaml"  # what train_net.py trained, as it recorded it
            onnx_file = work / f"{family}.onnx"
            argv = ["--format", "onnx", "--config-file", str(config_file), "--checkpoint",
                    str(out / "model_final.pth"), "--output", str(onnx_file), *ALL_SCORES[family]]
            assert load_tool("export_student").main(argv) == 0
            cfg = read_cfg(config_file, ALL_SCORES[family])
            cache[family] = Trained(cfg, str(config_file), str(out / "model_final.pth"), str(onnx_file))
        return cache[family]

    return get


def sample_images(work: Path) -> Dict[str, np.ndarray]:
    """Synthetic scenes cut to several sizes (so several resize factors and paddings), plus a flat one."""
    scene = cv2.imread(str(sorted((work / "datasets" / "synthetic_dior").glob("JPEGImages-*/*.jpg"))[0]))
    tall = np.concatenate([scene, scene[::-1]], axis=0)
    return {"128x128": scene, "96x128": scene[:96], "200x90": tall[:200, :90], "110x120": scene[9:119, 4:124]}


def assert_same_detections(expected: Detections, got: Detections, image_side: int) -> None:
    """Same count; each expected detection matched one-to-one by a detection of the same class whose score is
    within 1e-4 and whose box coordinates are within 1e-3 of the image size."""
    assert len(got) == len(expected)
    free = np.ones(len(got), dtype=bool)
    for box, score, cls in zip(*expected):
        error = np.abs(got.boxes - box).max(axis=1)
        fits = free & (got.classes == cls) & (np.abs(got.scores - score) <= 1e-4)
        fits &= error <= 1e-3 * image_side
        assert fits.any(), f"no match for class {cls} score {score} box {box}"
        free[np.flatnonzero(fits)[np.argmin(error[fits])]] = False


@pytest.mark.parametrize("family", ["RetinaNet", "GeneralizedRCNN"])
def test_onnx_predictor_equals_detectron2(trained, work, family):
    run = trained(family)
    model = load_detector(run.cfg, run.checkpoint)
    detector = OnnxDetector(run.onnx, threads=1)
    assert detector.info.family == family and detector.info.input_size is None
    assert detector.info.class_names[0] == "airplane"  # the synthetic DIOR classes, from the dataset metadata
    for name, image in sample_images(work).items():
        expected = torch_detections(model, detector_config(run.cfg), image)
        assert len(expected) > 0, f"{name}: the reference detects nothing; the comparison would be empty"
        assert_same_detections(expected, detector(image), max(image.shape[:2]))

    # an image with no detections: the threshold above every score Detectron2 gives it
    image = sample_images(work)["96x128"]
    threshold = float(torch_detections(model, detector_config(run.cfg), image).scores.max()) + 1e-4
    strict = OnnxDetector(run.onnx, threads=1, score_thresh=threshold)
    if family == "RetinaNet":
        model.test_score_thresh = threshold
    else:
        model.roi_heads.box_predictor.test_score_thresh = threshold
    assert len(torch_detections(model, detector_config(run.cfg), image)) == 0
    empty = strict(image)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_plain_student_checkpoint_and_fixed_input_size(trained, work, tmp_path):
    """The student written by --format pth, exported with the config of the student trained alone (the
    deployment configs build the same network), at a fixed 128 x 128 input: images padded to exactly that size
    give Detectron2's detections; smaller ones run too (padded further, see ds2d2.deploy.onnx_export)."""
    run = trained("RetinaNet")
    export_student(run.cfg, run.checkpoint, str(tmp_path / "student.pth"))
    plain_cfg = read_cfg(SYNTHETIC / CONFIGS["RetinaNet"][1], ALL_SCORES["RetinaNet"])
    model = load_detector(plain_cfg, str(tmp_path / "student.pth"))
    info = export_model(model, plain_cfg, str(tmp_path / "fixed.onnx"), input_size=(128, 128))
    assert info.input_size == (128, 128)
    detector = OnnxDetector(str(tmp_path / "fixed.onnx"), threads=1)
    assert detector.session.get_inputs()[0].shape == [1, 3, 128, 128]
    images = sample_images(work)
    for name in ("128x128", "110x120"):  # resized to 128 x 128 and 117 x 128: Detectron2 pads both to 128
        assert_same_detections(torch_detections(model, plain_cfg, images[name]), detector(images[name]), 128)
    assert len(detector(images["200x90"])) > 0


def test_only_detectors_and_distillers_are_exported(trained):
    cfg = trained("RetinaNet").cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "DS2D2Amplifier"  # stage 2 trains no student
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE is 'DS2D2Amplifier'"):
        load_detector(cfg, trained("RetinaNet").checkpoint)


def test_export_refuses_weights_that_do_not_fit(trained, tmp_path, capsys):
    run = trained("RetinaNet")
    output = tmp_path / "student.onnx"
    argv = ["--format", "onnx", "--config-file", run.config_file, "--checkpoint", run.checkpoint,
            "--output", str(output)]
    tool = load_tool("export_student")
    assert tool.main([*argv, "MODEL.FPN.OUT_CHANNELS", "64"]) == 1
    assert "model_final.pth" in capsys.readouterr().err and not output.exists()
    assert tool.main([*argv, "--input-size", "100", "128"]) == 1
    assert "size divisibility (32)" in capsys.readouterr().err and not output.exists()
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        export_onnx(run.cfg, str(tmp_path / "absent.pth"), str(output))


def test_bad_model_files_are_refused_by_name(trained, tmp_path):
    run = trained("RetinaNet")
    with pytest.raises(DeployFileError, match="absent.onnx.*does not exist"):
        OnnxDetector(str(tmp_path / "absent.onnx"))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(run.onnx).read_bytes()[:5000])
    with pytest.raises(DeployFileError, match="cannot load '.*truncated.onnx'"):
        OnnxDetector(str(truncated))

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "other",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(tmp_path / "other.onnx"))
    with pytest.raises(DeployFileError, match="other.onnx' is not a ds2d2 ONNX export"):
        OnnxDetector(str(tmp_path / "other.onnx"))

    with pytest.raises(DeployFileError, match="RetinaNet.onnx' predicts 20 classes, 15 were expected"):
        OnnxDetector(run.onnx, num_classes=15)
    model = onnx.load(run.onnx)
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    doc = json.loads(entry.value)
    doc["class_names"] = doc["class_names"][:15]  # metadata that does not describe the graph
    entry.value = json.dumps(doc)
    onnx.save(model, str(tmp_path / "relabelled.onnx"))
    with pytest.raises(DeployFileError, match="relabelled.onnx'.*not a RetinaNet export with 15 classes"):
        OnnxDetector(str(tmp_path / "relabelled.onnx"))


@pytest.mark.parametrize("count, iou", [(50, 0.5), (700, 0.3), (1500, 0.7)])
def test_numpy_nms_equals_torchvision(count, iou):
    """Greedy NMS over more boxes than one IoU block (ds2d2_onnx.postprocess.NMS_BLOCK), overlapping a lot."""
    rng = np.random.default_rng(count)
    corner = rng.uniform(0, 200, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.uniform(0, 60, (count, 2)).astype(np.float32)], axis=1)
    scores, classes = rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, 5, count)
    expected = nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
    assert np.array_equal(nms(boxes, scores, iou), expected.numpy())
    expected = batched_nms_torch(*map(torch.from_numpy, (boxes, scores, classes)), iou)
    assert np.array_equal(batched_nms(boxes, scores, classes, iou), expected.numpy())


def test_fixed_size_input_refuses_larger_images():
    with pytest.raises(ValueError, match="130 x 100, larger than the fixed input 128 x 128"):
        to_input(np.zeros((130, 100, 3), np.uint8), [0, 0, 0], 32, (128, 128))
    padded = to_input(np.full((70, 100, 3), 9, np.uint8), [1, 2, 3], 32, None)
    assert padded.shape == (1, 3, 96, 128) and padded[0, 2, 80, 120] == 3 and padded[0, 0, 69, 99] == 9


def test_predict_onnx_runs_without_torch_or_detectron2(trained, work, tmp_path):
    run = trained("GeneralizedRCNN")
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), sample_images(work)["200x90"])
    # a deployment machine with onnxruntime only: no onnx package either (the weights' check is skipped)
    blocked = ("torch", "torchvision", "detectron2", "ds2d2", "onnx")
    block = f"import sys; sys.modules.update(dict.fromkeys({blocked}))"
    tool = str(REPO / "tools" / "predict_onnx.py")
    run_tool = f"sys.argv[0] = {tool!r}; import runpy; runpy.run_path({tool!r}, run_name='__main__')"
    argv = ["--onnx", run.onnx, "--input", str(image), "--output", str(tmp_path / "out"), "--draw-score", "0",
            "--threads", "1"]
    command = [sys.executable, "-c", f"{block}; {run_tool}", *argv]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "scene.json").read_text())
    expected = OnnxDetector(run.onnx, threads=1)(cv2.imread(str(image)))
    assert [d["score"] for d in report["detections"]] == pytest.approx(expected.scores.tolist())
    assert report["detections"][0]["category"] == report["classes"][int(expected.classes[0])]
    drawn = cv2.imread(str(tmp_path / "out" / "scene_boxes.jpg"))
    assert drawn.shape == (200, 90, 3) and np.abs(drawn.astype(int) - cv2.imread(str(image))).max() > 100

    done = subprocess.run([*command[:3], "--onnx", str(tmp_path / "absent.onnx"), *argv[2:]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and "absent.onnx' does not exist" in done.stderr


def test_infer_large_image_onnx_equals_pytorch(trained, work, tmp_path):
    run = trained("RetinaNet")
    export_student(run.cfg, run.checkpoint, str(tmp_path / "student.pth"))
    scene = np.concatenate([sample_images(work)["128x128"]] * 2, axis=1)[:, :230]
    cv2.imwrite(str(tmp_path / "scene.png"), scene)
    common = ["--input", str(tmp_path / "scene.png"), "--patch-size", "96", "--gap", "32"]
    common += ["--draw-score", "0"]
    infer = load_tool("infer_large_image")
    onnx_argv = ["--onnx", run.onnx, "--threads", "1", *common, "--output", str(tmp_path / "onnx")]
    assert infer.main(onnx_argv) == 0
    torch_argv = ["--config-file", run.config_file, "--weights", str(tmp_path / "student.pth"), *common]
    assert infer.main([*torch_argv, "--output", str(tmp_path / "torch"), *ALL_SCORES["RetinaNet"]]) == 0
    reports = [json.loads((tmp_path / kind / "scene.json").read_text()) for kind in ("torch", "onnx")]
    assert reports[0]["classes"] == reports[1]["classes"]
    dets = [Detections(np.array([d["bbox"] for d in r["detections"]], np.float32).reshape(-1, 4),
                       np.array([d["score"] for d in r["detections"]], np.float32),
                       np.array([d["category_id"] for d in r["detections"]])) for r in reports]
    assert len(dets[0]) > 0
    assert_same_detections(dets[0], dets[1], max(scene.shape[:2]))
    # the distiller checkpoint itself: its student.* tensors, the same detections as the exported student
    direct = ["--config-file", run.config_file, "--weights", run.checkpoint, *common]
    assert infer.main([*direct, "--output", str(tmp_path / "direct"), *ALL_SCORES["RetinaNet"]]) == 0
    assert json.loads((tmp_path / "direct" / "scene.json").read_text()) == reports[0]
    with pytest.raises(SystemExit):
        infer.main(["--onnx", run.onnx, "--config-file", run.config_file, *common, "--output", "x"])
    assert infer.main(["--onnx", run.onnx, "--dataset", "dota_v1_val_1024", *common, "--output", "x"]) == 1


def test_detectron2_export_imports():
    """tools/install_detectron2.py makes detectron2.export importable without Caffe2 (its own installs)."""
    from detectron2 import _C

    if not vars(_C).get("IS_DS2D2_STUB"):
        pytest.skip("detectron2 was not installed by tools/install_detectron2.py")
    from detectron2.export import TracingAdapter  # noqa: F401
    from detectron2.utils.analysis import FlopCountAnalysis  # noqa: F401
