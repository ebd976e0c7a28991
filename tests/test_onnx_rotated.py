"""Rotated detectors through ONNX: the tiny R-18 Rotated RetinaNet and Rotated Faster R-CNN of the synthetic
rotated configs exported by tools/export_student.py give Detectron2's detections through the torch-free
predictor (ds2d2_onnx); its NumPy rotated IoU, NMS, ROIAlignRotated, clipping and rescaling against
ds2d2.rotated.ops and Detectron2's RotatedBoxes; predict_onnx.py (torch made unimportable) and
infer_large_image.py --onnx (against its PyTorch path) on a synthetic DOTA scene."""
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, NamedTuple

import cv2
import numpy as np
import onnx
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import RotatedBoxes

from conftest import REPO, load_script
from ds2d2.config import load_config
from ds2d2.data.synthetic import write_synthetic_dota
from ds2d2.deploy import detector_config, export_model, export_onnx, load_detector
from ds2d2.deploy.onnx_export import deploy_info
from ds2d2.rotated import ops
from ds2d2_onnx import DeployFileError, DeployInfo, Detections, OnnxDetector
from ds2d2_onnx.metadata import METADATA_KEY
from ds2d2_onnx.postprocess import clip_rotated, rescale
from ds2d2_onnx.roi_align_rotated import roi_align_rotated
from ds2d2_onnx.rotated_ops import batched_nms_rotated, nms_rotated, pairwise_iou_rotated
from onnx_support import torch_detections
from rotated_setup import DETECTORS, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_torch_thread")]
EXPORT = load_script(REPO / "tools" / "export_student.py", "export_student")
INFER = load_script(REPO / "tools" / "infer_large_image.py", "infer_large_image")
RETINANET, RCNN = DETECTORS
# RetinaNet exported at a fixed 128 x 128 input (a quarter of a dynamic export's time), Faster R-CNN dynamic
# (its graph has a dynamic RoI count besides the image's height and width).
INPUT_SIZE = {RETINANET: ["--input-size", "128", "128"], RCNN: []}
OPTS = ["MODEL.RETINANET.TOPK_CANDIDATES_TEST", "200"]  # every box scored (TINY), fewer candidates per level


def assert_same_detections(expected: Detections, got: Detections, image_side: int) -> None:
    """Same count and the same scores in the same order (within 1e-4); each expected detection matched
    one-to-one by one of the same class and score whose box is within 1e-3 of the image size (angle: within
    0.01 degree)."""
    assert got.boxes.shape[1] == 5 and len(got) == len(expected)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4, rtol=0)
    free = np.ones(len(got), dtype=bool)
    for box, score, cls in zip(*expected):
        error = np.abs(got.boxes[:, :4] - box[:4]).max(axis=1)
        angle = np.abs((got.boxes[:, 4] - box[4] + 180) % 360 - 180)  # degrees, modulo a turn
        fits = free & (got.classes == cls) & (np.abs(got.scores - score) <= 1e-4)
        fits &= (error <= 1e-3 * image_side) & (angle <= 1e-2)
        assert fits.any(), f"no match for class {cls} score {score} box {box}"
        free[np.flatnonzero(fits)[np.argmin(error[fits])]] = False


def redrawn_model(cfg: CfgNode) -> torch.nn.Module:
    """``build_model(cfg)`` with its box-regression and classification output layers redrawn (weights std
    0.005, biases std 0.5, seeded): boxes move, stretch and turn away from their anchors and scores spread,
    so that the comparison sees genuinely rotated detections, not the anchors of an untrained model."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 2)[-2] in ("cls_score", "bbox_pred", "objectness_logits", "anchor_deltas"):
                parameter.normal_(0, 0.005 if parameter.dim() > 1 else 0.5)
    return model


class Exported(NamedTuple):
    cfg: CfgNode  # the plain rotated detector's config
    config_file: str
    checkpoint: str
    onnx: str


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a synthetic DOTA-format dataset of 2 scenes (make_synthetic.py --format dota)."""
    root = tmp_path_factory.mktemp("onnx_rotated")
    write_synthetic_dota(root / "dota", num_images=2, seed=0, image_size=256, object_scale=0.5)
    return root


@pytest.fixture(scope="module")
def exported(work) -> Callable[[str], Exported]:
    """``exported(config)``: the tiny detector of ``config`` (redrawn_model) saved as a checkpoint with its
    config, and exported to ONNX by tools/export_student.py."""
    cache: Dict[str, Exported] = {}

    def get(config: str) -> Exported:
        if config not in cache:
            name = Path(config).stem
            cfg = tiny_config(config, OPTS)
            config_file, checkpoint, onnx = (str(work / f"{name}{ext}") for ext in (".yaml", ".pth", ".onnx"))
            Path(config_file).write_text(cfg.dump())
            torch.save({"model": redrawn_model(cfg).state_dict()}, checkpoint)
            argv = ["--format", "onnx", "--config-file", config_file, "--checkpoint", checkpoint, "--output",
                    onnx, *INPUT_SIZE[config]]
            assert EXPORT.main(argv) == 0
            cache[config] = Exported(load_config(config_file, register=False), config_file, checkpoint, onnx)
        return cache[config]

    return get


def scene(work: Path) -> np.ndarray:
    """The largest synthetic DOTA scene (BGR)."""
    paths = sorted((work / "dota").glob("*/images/*.png"))
    images = [cv2.imread(str(p)) for p in paths]
    return max(images, key=lambda image: image.size)


# Crops of the scene: square ones for the fixed 128 x 128 RetinaNet export (resized to exactly 128 x 128, as
# Detectron2 pads them), and several resize factors and paddings for the dynamic Faster R-CNN export.
CROPS = {RETINANET: [(128, 128), (100, 100), (200, 200)],
         RCNN: [(128, 128), (96, 128), (200, 90), (110, 120)]}


@pytest.mark.parametrize("config", DETECTORS)
def test_onnx_predictor_equals_detectron2_on_rotated_detectors(exported, work, config):
    run = exported(config)
    model = load_detector(run.cfg, run.checkpoint)
    detector = OnnxDetector(run.onnx, threads=1)
    assert detector.info.rotated and detector.info.family == ("RotatedRetinaNet" if config == RETINANET
                                                              else "RotatedGeneralizedRCNN")
    image = scene(work)
    for height, width in CROPS[config]:
        crop = np.ascontiguousarray(image[7:7 + height, 5:5 + width])
        expected = torch_detections(model, run.cfg, crop)
        assert len(expected) > 0, f"{height}x{width}: the reference detects nothing"
        assert np.ptp(expected.boxes[:, 4]) > 10, "the reference's boxes are not turned: a weak comparison"
        assert_same_detections(expected, detector(crop), max(height, width))

    # no detections: a threshold above every score Detectron2 gives the first crop
    crop = np.ascontiguousarray(image[7:135, 5:133])
    threshold = float(torch_detections(model, run.cfg, crop).scores.max()) + 1e-4
    empty = OnnxDetector(run.onnx, threads=1, score_thresh=threshold)(crop)
    assert len(empty) == 0 and empty.boxes.shape == (0, 5)


def test_a_distillers_rotated_student_is_what_exports(exported, tmp_path):
    """A stage-3 checkpoint of a rotated student: export_onnx loads its student.* tensors into the plain
    Rotated Faster R-CNN (MODEL.DS2D2.DETECTOR with RROIHeads) and describes it as the rotated family."""
    run = exported(RCNN)
    distiller = run.cfg.clone()
    distiller.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Distiller", "MODEL.DS2D2.DETECTOR",
                               "GeneralizedRCNN"])
    plain = torch.load(run.checkpoint, weights_only=True)["model"]
    state = {f"student.{k}": v for k, v in plain.items()}
    state["adapters.0.weight"] = torch.ones(3)  # the distiller's own tensors are left out
    torch.save({"model": state}, tmp_path / "distiller.pth")
    student = load_detector(distiller, str(tmp_path / "distiller.pth"))
    assert all(torch.equal(v, plain[k]) for k, v in student.state_dict().items())
    info = deploy_info(student, detector_config(distiller), None, {})
    assert info.family == "RotatedGeneralizedRCNN" and info.pooler["features"] == ["p2", "p3", "p4", "p5"]
    assert info.proposals == {"nms_thresh": 0.7, "post_nms_topk": 50, "min_box_size": 0.0}


def test_metadata_of_the_rotated_rcnn_is_required_there_and_absent_elsewhere():
    """A horizontal export's metadata has no rotated R-CNN fields (so older predictors still read it); a
    Rotated Faster R-CNN's without them is refused."""
    info = DeployInfo("RetinaNet", ["ship"], "BGR", [1.0, 2.0, 3.0], 128, 128, 32, None, 0.05, 0.5, 100)
    assert not {"proposals", "pooler"} & set(json.loads(info.to_json()))
    assert DeployInfo.from_metadata({METADATA_KEY: info.to_json()}, "m.onnx") == info
    info.family = "RotatedGeneralizedRCNN"
    with pytest.raises(DeployFileError, match="'m.onnx': a RotatedGeneralizedRCNN export needs 'proposals'"):
        DeployInfo.from_metadata({METADATA_KEY: info.to_json()}, "m.onnx")


def test_a_rotated_graph_labelled_horizontal_is_refused(exported, tmp_path):
    """Metadata that does not describe the graph: a RotatedRetinaNet export relabelled RetinaNet (its boxes
    have 5 numbers, not 4)."""
    model = onnx.load(exported(RETINANET).onnx)
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    entry.value = entry.value.replace('"family": "RotatedRetinaNet"', '"family": "RetinaNet"')
    onnx.save(model, str(tmp_path / "relabelled.onnx"))
    with pytest.raises(DeployFileError, match="relabelled.onnx'.*is not a RetinaNet export with 3 classes"):
        OnnxDetector(str(tmp_path / "relabelled.onnx"))


def test_rotated_rcnn_exports_refused(tmp_path):
    """Another pooler (before the checkpoint is read), and a fixed input size (its graph runs twice)."""
    cfg = tiny_config(RCNN, ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2"])
    message = r"model.yaml: .*POOLER_TYPE 'ROIAlignV2'.*needs 'RRPN' and 'ROIAlignRotated'"
    with pytest.raises(ValueError, match=message):
        export_onnx(cfg, str(tmp_path / "absent.pth"), str(tmp_path / "model.onnx"), config_file="model.yaml")
    cfg = tiny_config(RCNN)
    with pytest.raises(ValueError, match=r"\(128, 128\): a Rotated Faster R-CNN .* dynamic size only"):
        export_model(build_model(cfg).eval(), cfg, str(tmp_path / "model.onnx"), input_size=(128, 128))
    assert not (tmp_path / "model.onnx").exists()


def test_predict_onnx_writes_rotated_boxes_without_torch(exported, work, tmp_path):
    run = exported(RETINANET)
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene(work)[:150, :170])
    blocked = ("torch", "torchvision", "detectron2", "ds2d2", "onnx")
    block = f"import sys; sys.modules.update(dict.fromkeys({blocked}))"
    tool = str(REPO / "tools" / "predict_onnx.py")
    run_tool = f"sys.argv[0] = {tool!r}; import runpy; runpy.run_path({tool!r}, run_name='__main__')"
    command = [sys.executable, "-c", f"{block}; {run_tool}", "--onnx", run.onnx, "--input", str(image),
               "--output", str(tmp_path / "out"), "--draw-score", "0", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(XYWHA_ABS)" in done.stdout
    report = json.loads((tmp_path / "out" / "scene.json").read_text())
    expected = OnnxDetector(run.onnx, threads=1)(cv2.imread(str(image)))
    assert report["bbox_format"] == "XYWHA_ABS" and len(report["detections"]) == len(expected) > 0
    np.testing.assert_allclose([d["bbox"] for d in report["detections"]], expected.boxes, rtol=1e-6)
    drawn = cv2.imread(str(tmp_path / "out" / "scene_boxes.jpg"))
    assert drawn.shape == (150, 170, 3) and np.abs(drawn.astype(int) - cv2.imread(str(image))).max() > 100


def test_infer_large_image_onnx_equals_pytorch_on_a_rotated_detector(exported, work, tmp_path):
    run = exported(RCNN)
    image = scene(work)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    common = ["--input", str(tmp_path / "scene.png"), "--patch-size", "96", "--gap", "32"]
    common += ["--draw-score", "0"]
    onnx_argv = ["--onnx", run.onnx, "--threads", "1", *common, "--output", str(tmp_path / "onnx")]
    assert INFER.main(onnx_argv) == 0
    torch_argv = ["--config-file", run.config_file, "--weights", run.checkpoint, *common]
    assert INFER.main([*torch_argv, "--output", str(tmp_path / "torch")]) == 0
    reports = [json.loads((tmp_path / kind / "scene.json").read_text()) for kind in ("torch", "onnx")]
    assert reports[0]["classes"] == reports[1]["classes"]
    assert reports[0]["bbox_format"] == reports[1]["bbox_format"] == "XYWHA_ABS"
    dets = [Detections(np.array([d["bbox"] for d in r["detections"]], np.float32).reshape(-1, 5),
                       np.array([d["score"] for d in r["detections"]], np.float32),
                       np.array([d["category_id"] for d in r["detections"]])) for r in reports]
    assert len(dets[0]) > 0
    assert_same_detections(dets[0], dets[1], max(image.shape[:2]))


# ---- the NumPy rotated ops against ds2d2.rotated.ops (what the PyTorch detectors run) ----

def random_boxes(rng: np.random.Generator, num: int, span: float = 60.0) -> np.ndarray:
    """[num, 5] float64 boxes crowded in a span x span square, sides 1-30, angles in [-720, 720)."""
    return np.concatenate([rng.uniform(0, span, (num, 2)), rng.uniform(1, 30, (num, 2)),
                           rng.uniform(-720, 720, (num, 1))], axis=1)


def reference_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    return ops.pairwise_iou_rotated(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_numpy_rotated_iou_equals_ds2d2_rotated(dtype, tolerance):
    rng = np.random.default_rng(0)
    boxes1, boxes2 = random_boxes(rng, 300).astype(dtype), random_boxes(rng, 200).astype(dtype)
    iou = pairwise_iou_rotated(boxes1, boxes2)
    assert iou.dtype == dtype and iou.shape == (300, 200) and (iou > 0.3).sum() > 100
    np.testing.assert_allclose(iou, reference_iou(boxes1, boxes2), atol=tolerance, rtol=0)


def turned_offset(distance: float, angle: float) -> np.ndarray:
    """(dx, dy) of ``distance`` along the v axis (the height direction) of a box turned by ``angle``."""
    theta = math.radians(angle)
    return np.array([distance * math.sin(theta), distance * math.cos(theta)])


EDGE_CASES = {  # (box 1, box 2, IoU by hand)
    "identical": ([30, 40, 12, 5, 33], [30, 40, 12, 5, 33], 1.0),
    "identical, other spelling": ([30, 40, 12, 5, 33], [30, 40, 5, 12, 123], 1.0),
    "half turn": ([30, 40, 12, 5, 33], [30, 40, 12, 5, -147], 1.0),
    "touching along an edge": ([30, 40, 12, 4, 30], [*(np.array([30, 40]) + turned_offset(4, 30)), 12, 4, 30],
                               0.0),
    "touching at a corner": ([0, 0, 2, 2, 0], [2, 2, 2, 2, 0], 0.0),
    "contained, same angle": ([50, 50, 10, 10, 17], [50, 50, 20, 20, 17], 100 / 400),
    "contained, turned": ([50, 50, 5, 5, 45], [50, 50, 20, 20, 0], 25 / 400),
    "half overlap": ([0, 0, 2, 2, 0], [1, 0, 2, 2, 0], 2 / 6),
    "tiny, half overlap": ([3, 4, 1e-3, 1e-3, 0], [3 + 5e-4, 4, 1e-3, 1e-3, 0], 1 / 3),
    "zero area": ([3, 4, 0, 5, 10], [3, 4, 0, 5, 10], 0.0),
    "apart": ([0, 0, 4, 4, 10], [20, 0, 4, 4, 10], 0.0),
    "apart, bounding rectangles meeting": ([0, 0, 10, 1, 45], [4, 4, 10, 1, 45], 0.0),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_numpy_rotated_iou_edge_cases(case):
    first, second, expected = EDGE_CASES[case]
    boxes1, boxes2 = np.array([first], np.float64), np.array([second], np.float64)
    assert pairwise_iou_rotated(boxes1, boxes2)[0, 0] == pytest.approx(expected, abs=1e-9)
    assert pairwise_iou_rotated(boxes1, boxes2)[0, 0] == pytest.approx(reference_iou(boxes1, boxes2)[0, 0],
                                                                       abs=1e-12)
    if case != "tiny, half overlap":  # float32 keeps too few digits of a 1e-3 box's corners at x = 3
        single = pairwise_iou_rotated(boxes1.astype(np.float32), boxes2.astype(np.float32))[0, 0]
        assert single == pytest.approx(expected, abs=1e-5)


def test_numpy_rotated_iou_of_empty_inputs():
    assert pairwise_iou_rotated(np.zeros((0, 5)), random_boxes(np.random.default_rng(0), 3)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"boxes1 must be \[N, 5\]"):
        pairwise_iou_rotated(np.zeros((2, 4)), np.zeros((2, 5)))


@pytest.mark.parametrize("count, threshold", [(300, 0.1), (1000, 0.5), (2000, 0.7)])
def test_numpy_rotated_nms_equals_ds2d2_rotated(count, threshold):
    rng = np.random.default_rng(count)
    boxes = random_boxes(rng, count, span=40 + count / 10).astype(np.float32)
    scores, classes = rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, 4, count)
    expected = ops.batched_nms_rotated(*map(torch.from_numpy, (boxes, scores, classes)), threshold).numpy()
    kept = batched_nms_rotated(boxes, scores, classes, threshold)
    assert np.array_equal(kept, expected) and 0 < len(kept) < count
    expected = ops.nms_rotated(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    assert np.array_equal(nms_rotated(boxes, scores, threshold), expected)


def test_numpy_rotated_nms_ties_tiny_boxes_and_empty_input():
    boxes = np.array([[10, 10, 8, 4, 30], [10, 10, 8, 4, 30], [10, 10, 4, 8, 120],  # one box, three spellings
                      [30, 30, 1e-3, 1e-3, 0], [30, 30, 1e-3, 1e-3, 0],  # tiny, identical
                      [10 + 8 * math.cos(math.radians(30)), 10 - 8 * math.sin(math.radians(30)), 8, 4, 30]],
                     np.float32)  # touching box 0 end to end: not suppressed
    scores = np.array([0.5, 0.5, 0.9, 0.2, 0.2, 0.5], np.float32)
    kept = nms_rotated(boxes, scores, 0.5)
    assert kept.tolist() == [2, 5, 3]  # equal scores: the lower index first
    expected = ops.nms_rotated(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    assert kept.tolist() == expected.tolist()
    nothing = batched_nms_rotated(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0), 0.5)
    assert nothing.shape == (0,) and nothing.dtype == np.int64


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_numpy_roi_align_rotated_equals_ds2d2_rotated(sampling_ratio):
    rng = np.random.default_rng(sampling_ratio)
    features = rng.normal(size=(8, 20, 30)).astype(np.float32)
    rois = np.concatenate([rng.uniform(-20, 140, (100, 2)), rng.uniform(0, 60, (100, 2)),
                           rng.uniform(-180, 180, (100, 1))], axis=1).astype(np.float32)
    rois[0, 2] = 0  # an empty box: zeros
    pooled = roi_align_rotated(features, rois, (7, 5), 0.25, sampling_ratio)
    batch_rois = torch.from_numpy(np.concatenate([np.zeros((100, 1), np.float32), rois], axis=1))
    expected = ops.roi_align_rotated(torch.from_numpy(features[None]), batch_rois, (7, 5), 0.25,
                                     sampling_ratio)
    assert pooled.shape == (100, 8, 7, 5) and np.abs(pooled).max() > 0.5
    np.testing.assert_allclose(pooled, expected.numpy(), atol=2e-5, rtol=0)


def test_clipping_and_rescaling_equal_detectron2s_rotated_boxes():
    """clip_rotated is RotatedBoxes.clip (nearly horizontal boxes clipped, others whole), rescale is
    detector_postprocess (RotatedBoxes.scale with unequal factors, clip, empty boxes dropped)."""
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 200, span=140).astype(np.float32)
    boxes[:100, 4] = rng.choice([0.0, 0.6, -1.0, 180.4, -179.5, 359.2, 2.0], 100)  # near horizontal, or not
    expected = RotatedBoxes(torch.from_numpy(boxes.copy()))
    expected.clip((100, 120))
    np.testing.assert_allclose(clip_rotated(boxes, 100, 120), expected.tensor.numpy(), atol=1e-4, rtol=0)
    assert not np.allclose(clip_rotated(boxes, 100, 120)[:, :4], boxes[:, :4])

    dets = Detections(boxes, np.linspace(1, 0, 200, dtype=np.float32), np.zeros(200, np.int64))
    scaled = rescale(dets, (100, 120), (150, 140))
    expected = RotatedBoxes(torch.from_numpy(boxes.copy()))
    expected.scale(140 / 120, 150 / 100)
    expected.clip((150, 140))
    keep = expected.nonempty()
    assert len(scaled) == int(keep.sum()) and scaled.boxes.shape[1] == 5
    np.testing.assert_allclose(scaled.boxes, expected.tensor[keep].numpy(), atol=1e-4, rtol=0)
