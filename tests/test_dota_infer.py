"""Tiled inference on one large image: exact mapping of tile detections, and the CLI with a tiny RetinaNet."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from conftest import load_script
from ds2d2.config import add_ds2d2_config
from ds2d2.evaluation.dota_merge import merge_detections

REPO = Path(__file__).resolve().parents[1]
infer = load_script(REPO / "tools" / "infer_large_image.py", "infer_large_image")


def tiny_retinanet_cfg(num_classes: int = 3, size: int = 128):
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST = size
    cfg.INPUT.MAX_SIZE_TEST = size
    cfg.DATASETS.TEST = ()
    return cfg


class BlobDetector:
    """A stand-in model: every white region of a tile that does not touch the tile's border is a detection
    (score 1, class 0), in tile pixels."""

    def __call__(self, inputs):
        outputs = []
        for inp in inputs:
            gray = inp["image"][0].numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats((gray > 127).astype(np.uint8))
            size = gray.shape[1]
            boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]]
            boxes = [b for b in boxes if min(b) > 0 and max(b) < size]
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.ones(len(boxes))
            inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
            outputs.append({"instances": inst})
        return outputs


def test_tiles_map_back_exactly():
    rng = np.random.default_rng(0)
    image = np.zeros((333, 517, 3), np.uint8)
    boxes = []
    for gy in range(333 // 60):
        for gx in range(517 // 60):  # one 10-40 px rectangle per 60-px cell: many cross tile borders
            w, h = rng.integers(10, 40, 2)
            x, y = gx * 60 + rng.integers(1, 60 - w), gy * 60 + rng.integers(1, 60 - h)
            image[y : y + h, x : x + w] = 255
            boxes.append([x, y, x + w, y + h])
    cfg = tiny_retinanet_cfg(size=128)
    tiles = infer.predict_tiles(
        BlobDetector(), image, cfg, patch_size=128, gap=48, rates=(1.0,), batch_size=3
    )
    assert len(tiles) == 6 * 4
    merged = merge_detections(tiles, 517, 333)
    assert sorted(merged.boxes.tolist()) == sorted(np.array(boxes, float).tolist())


def test_cli_with_a_tiny_random_retinanet(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_retinanet_cfg()
    (tmp_path / "model.yaml").write_text(cfg.dump())
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "model.pth")
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    argv = ["--config-file", str(tmp_path / "model.yaml"), "--input", str(tmp_path / "scene.png")]
    argv += ["--output", str(tmp_path / "out"), "--patch-size", "128", "--gap", "32", "--rates", "1.0", "0.5"]
    argv += ["--draw-score", "0.0"]
    assert infer.main(argv + ["--weights", str(tmp_path / "model.pth")]) == 0

    report = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert (report["width"], report["height"]) == (300, 200) and len(report["classes"]) == 3
    dets = report["detections"]
    assert dets, "score threshold 0 must leave detections"
    boxes = np.array([d["bbox"] for d in dets])
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 300 and boxes[:, 3].max() <= 200
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)
    assert all(d["category"] == f"class_{d['category_id']}" for d in dets)
    assert cv2.imread(str(tmp_path / "out" / "scene_boxes.jpg")).shape == image.shape

    # weights of another model are refused, not loaded half-way
    torch.save({"model": build_model(tiny_retinanet_cfg(num_classes=5)).state_dict()}, tmp_path / "other.pth")
    assert infer.main(argv + ["--weights", str(tmp_path / "other.pth")]) == 1
    with pytest.raises(SystemExit):
        infer.main(argv[:2])  # --input and --output are required


def test_weights_errors_name_the_flag_or_key_that_gave_the_path(tmp_path, capsys):
    """A checkpoint from --weights is named --weights in errors; one from the config's MODEL.WEIGHTS (no
    --weights) is named MODEL.WEIGHTS, the key the user has to fix."""
    (tmp_path / "model.yaml").write_text(tiny_retinanet_cfg().dump())
    torch.save({"model": build_model(tiny_retinanet_cfg(num_classes=5)).state_dict()}, tmp_path / "other.pth")
    cv2.imwrite(str(tmp_path / "scene.png"), np.zeros((64, 64, 3), np.uint8))
    argv = ["--config-file", str(tmp_path / "model.yaml"), "--input", str(tmp_path / "scene.png"),
            "--output", str(tmp_path / "out")]
    prefix = "infer_large_image: error: "
    cases = [
        (["--weights", str(tmp_path / "other.pth")], "--weights: weights in "),
        (["MODEL.WEIGHTS", str(tmp_path / "other.pth")], "MODEL.WEIGHTS: weights in "),
        (["--weights", str(tmp_path / "none.pth")], "--weights: checkpoint "),
        (["MODEL.WEIGHTS", str(tmp_path / "none.pth")], "MODEL.WEIGHTS: checkpoint "),
        ([], "MODEL.WEIGHTS is empty"),
    ]
    for extra, named in cases:
        assert infer.main(argv + extra) == 1
        err = capsys.readouterr().err
        assert err.startswith(prefix + named), (extra, err)
        assert ("--weights" in err) == (extra[:1] == ["--weights"]), err
    assert not (tmp_path / "out").exists()
