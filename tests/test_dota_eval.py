"""Full-image DOTA evaluation: Task-2 AP against the devkit, merging, and split -> merge losslessness."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from conftest import load_script
from test_dota_scenes import CLASSES, GAP, PATCH, bounds, write_dota_folder

from ds2d2.data.dota import DOTA_V1_CLASSES, register_dota
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2.evaluation.dota import (
    DOTAFullImageEvaluator,
    GroundTruth,
    merge_and_evaluate_coco_results,
    task2_average_precision,
    write_task2_files,
)
from ds2d2.evaluation.dota_merge import ImageDetections, merge_detections

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    module = load_script(REPO / "tools" / f"{name}.py", name)
    return module


def devkit_ap(task2_dir: Path, gt_dir: Path, images, classes, use_07_metric: bool, monkeypatch):
    """AP per class from dotadevkit's own Task-2 evaluation (reads our Task2 files and HBB label files)."""
    from dotadevkit.evaluate import task2

    # the devkit still uses np.bool; its version "1.0" path crashes on 10-line files, "1.5" reads the same
    # boxes
    monkeypatch.setattr(np, "bool", bool, raising=False)
    imageset = gt_dir / "imageset.txt"
    imageset.write_text("\n".join(images) + "\n")
    return {
        c: task2.voc_eval(
            str(task2_dir / "Task2_{:s}.txt"),
            str(gt_dir / "{:s}.txt"),
            str(imageset),
            c,
            0.5,
            use_07_metric,
            "1.5",
        )[2]
        for c in classes
    }


def write_hbb_labels(folder: Path, boxes_per_image) -> None:
    """Devkit Task-2 ground truth: each box as the polygon x0 y0 x1 y0 x1 y1 x0 y1."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, rows in boxes_per_image.items():
        lines = [f"{x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1} {c} 0" for (x0, y0, x1, y1), c in rows]
        (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_task2_ap_matches_devkit(tmp_path, monkeypatch, use_07_metric):
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    # 7, 11 and 13 objects: recalls never fall on the 11-point grid, where the devkit's np.arange is inexact
    labels = np.repeat([0, 1, 2], [7, 11, 13])
    rng.shuffle(labels)
    images = {"I0": labels[:10], "I1": labels[10:20], "I2": labels[20:]}  # the devkit needs >= 9 lines a file
    gts, dets, rows = {}, {}, {}
    for stem, cls in images.items():
        xy = rng.integers(0, 300, (len(cls), 2))
        gt_boxes = np.concatenate([xy, xy + rng.integers(8, 60, (len(cls), 2))], axis=1).astype(float)
        gts[stem] = GroundTruth(gt_boxes, cls.astype(np.int64), np.zeros(len(cls), bool))
        rows[stem] = [(tuple(int(v) for v in b), classes[c]) for b, c in zip(gt_boxes, cls)]
        hits = rng.random(len(cls)) < 0.8
        jitter = rng.normal(0, 4, (len(cls), 4))
        noise = np.concatenate([xy[:4], xy[:4] + 20], axis=1) + rng.normal(0, 30, (4, 4))
        boxes = np.concatenate([gt_boxes[hits] + jitter[hits], gt_boxes[:3] + 2, noise])
        labels_det = np.concatenate([cls[hits], cls[:3], rng.integers(0, 3, 4)])
        boxes = np.round(np.sort(boxes.reshape(-1, 2, 2), axis=1).reshape(-1, 4), 2)
        dets[stem] = ImageDetections(boxes, np.round(rng.random(len(boxes)), 6), labels_det.astype(np.int64))
    write_task2_files(dets, classes, tmp_path / "task2")
    write_hbb_labels(tmp_path / "gt", rows)
    ours = task2_average_precision(dets, gts, classes, use_07_metric=use_07_metric)
    theirs = devkit_ap(tmp_path / "task2", tmp_path / "gt", list(images), classes, use_07_metric, monkeypatch)
    assert 0.2 < min(ours.values()) and max(ours.values()) < 1.0
    for c in classes:
        assert ours[c] == pytest.approx(theirs[c], abs=1e-12)


def test_task2_ap_by_hand_with_difficult():
    gt = {
        "x": GroundTruth(
            np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]]), np.array([0, 0]), np.array([False, True])
        )
    }

    def ap(boxes, scores, use_07_metric=True):
        det = {
            "x": ImageDetections(np.array(boxes, float), np.array(scores), np.zeros(len(scores), np.int64))
        }
        return task2_average_precision(det, gt, ["a", "b"], use_07_metric=use_07_metric)

    # matching the difficult object is neither a hit nor a false positive
    assert ap([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8])["a"] == 1.0
    # ... so with one false positive before the hit, precision is 1/2 (1/1 if it were a hit, 1/3 if an FP)
    assert ap([[50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.85, 0.8])["a"] == pytest.approx(
        0.5
    )
    # a false positive ranked first: precision 1/2 at recall 1
    assert ap([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8])["a"] == pytest.approx(0.5)
    assert ap([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8], False)["a"] == pytest.approx(0.5)
    # a duplicate of a found object is a false positive; "+1 pixel" IoU of [0,10] vs [0,4] is 5/11 < 0.5: a
    # miss
    assert ap([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 10]], [0.9, 0.8, 0.7])["a"] == 1.0
    assert ap([[0, 0, 4, 10]], [0.9])["a"] == 0.0
    assert np.isnan(ap([[0, 0, 4, 10]], [0.9])["b"])  # no object of class b


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def test_merge_is_classwise_nms_with_whole_boxes_winning_ties():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], axis=1)
    scores = rng.random(300)
    merged = merge_detections([ImageDetections(boxes, scores, np.zeros(300, np.int64))], 400, 400, 0.3)
    expected, left = [], list(np.argsort(-scores))  # brute-force greedy NMS
    while left:
        best = left.pop(0)
        expected.append(best)
        left = [j for j in left if iou(boxes[best], boxes[j]) <= 0.3]
    np.testing.assert_array_equal(merged.boxes, boxes[expected])

    whole, part = [10, 10, 50, 30], [10, 10, 40, 30]  # same score: the whole object is kept
    parts = [
        ImageDetections(np.array([part]), np.ones(1), np.zeros(1, np.int64)),
        ImageDetections(np.array([whole, whole]), np.ones(2), np.array([0, 1])),
    ]
    merged = merge_detections(parts, 100, 100)
    assert merged.boxes.tolist() == [whole, whole] and sorted(merged.classes.tolist()) == [0, 1]
    # clipped to the image; a box lying in a patch's padding only is dropped
    padded = ImageDetections(
        np.array([[90, 5, 120, 20], [105, 5, 120, 20]]), np.array([0.9, 0.8]), np.zeros(2, int)
    )
    assert merge_detections([padded], 100, 100).boxes.tolist() == [[90, 5, 100, 20]]


@pytest.fixture(scope="module")
def patch_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("dota_eval")
    scenes = write_dota_folder(root / "val")
    split_dota(
        root / "val",
        root / "val_p",
        settings=SplitSettings(PATCH, GAP, (0.5, 1.0, 1.5)),
        num_workers=2,
        progress=False,
    )
    return root, scenes


def gt_as_coco_results(dicts, category_offset: int = 0):
    """Every patch annotation as a detection with score 1, as Detectron2's COCOEvaluator writes them."""
    results = []
    for d in dicts:
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            results.append(
                {
                    "image_id": d["image_id"],
                    "category_id": a["category_id"] + category_offset,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": 1.0,
                }
            )
    return results


def test_split_then_merge_is_lossless(patch_set, catalog, tmp_path, monkeypatch):
    root, scenes = patch_set
    register_dota("tiny_val", root / "val_p")
    dicts = DatasetCatalog.get("tiny_val")
    results = tmp_path / "coco_instances_results.json"
    results.write_text(json.dumps(gt_as_coco_results(dicts)))

    tool = load_tool("dota_merge_eval")
    out = tmp_path / "full"
    assert tool.main(["--dataset", "tiny_val", "--detections", str(results), "--output", str(out)]) == 0
    report = json.loads((out / "dota_eval.json").read_text())
    assert report["mAP"] == 1.0
    assert {c: report["AP"][c] for c in CLASSES} == {c: 1.0 for c in CLASSES}
    assert all(report["AP"][c] is None for c in DOTA_V1_CLASSES if c not in CLASSES)

    # the submission files parse in the devkit's format and score 1 there too (its GT: integer HBB files)
    rows = {s: [(tuple(int(v) for v in bounds(p)), c) for p, c, _ in objs] for s, objs in scenes.items()}
    write_hbb_labels(tmp_path / "gt", rows)
    theirs = devkit_ap(out, tmp_path / "gt", list(scenes), CLASSES, True, monkeypatch)
    assert theirs == pytest.approx({c: 1.0 for c in CLASSES}, abs=1e-12)

    # same through a folder name and the original labelTxt files
    out2 = tmp_path / "full2"
    tool.main(
        [
            "--dataset",
            str(root / "val_p"),
            "--detections",
            str(results),
            "--labels",
            str(root / "val" / "labelTxt"),
            "--output",
            str(out2),
        ]
    )
    assert json.loads((out2 / "dota_eval.json").read_text()) == report

    # the check can fail: without the boxes of one object, its class loses AP
    first = dicts[0]["annotations"][0]
    victim = (dicts[0]["source_image"], first["category_id"])
    kept = [
        r
        for r in json.loads(results.read_text())
        if not (dicts[r["image_id"]]["source_image"] == victim[0] and r["category_id"] == victim[1])
    ]
    results.write_text(json.dumps(kept))
    worse = merge_and_evaluate_coco_results("tiny_val", results, tmp_path / "worse")
    assert worse["AP"][DOTA_V1_CLASSES[victim[1]]] < 1.0


def test_dataset_ids_are_mapped_back(patch_set, catalog, tmp_path):
    root, _ = patch_set
    register_dota("tiny_val_ids", root / "val_p")
    MetadataCatalog.get("tiny_val_ids").thing_dataset_id_to_contiguous_id = {i + 1: i for i in range(15)}
    results = tmp_path / "r.json"
    results.write_text(json.dumps(gt_as_coco_results(DatasetCatalog.get("tiny_val_ids"), category_offset=1)))
    assert merge_and_evaluate_coco_results("tiny_val_ids", results, tmp_path / "o")["mAP"] == 1.0
    results.write_text(json.dumps([{"image_id": 10**6, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(ValueError, match="image_id 1000000"):
        merge_and_evaluate_coco_results("tiny_val_ids", results, tmp_path / "o")
    argv = ["--dataset", "tiny_val_ids", "--detections", str(results), "--output", str(tmp_path / "o")]
    assert load_tool("dota_merge_eval").main(argv) == 1  # reported, no traceback


def test_evaluator_on_model_outputs(patch_set, catalog, tmp_path):
    root, _ = patch_set
    register_dota("tiny_val_ev", root / "val_p")
    dicts = DatasetCatalog.get("tiny_val_ev")
    evaluator = DOTAFullImageEvaluator("tiny_val_ev", str(tmp_path))
    evaluator.reset()
    for d in dicts:
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in d["annotations"]]).reshape(-1, 4))
        inst.scores = torch.ones(len(d["annotations"]))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)
        evaluator.process([{k: v for k, v in d.items() if k != "annotations"}], [{"instances": inst}])
    result = evaluator.evaluate()["dota_task2"]
    assert result["mAP"] == pytest.approx(100.0)
    assert all(result[f"AP-{c}"] == pytest.approx(100.0) for c in CLASSES)
    assert not list(tmp_path.glob("Task2_*.txt"))  # labelled split: no submission unless asked


def test_test_split_writes_submission_files(tmp_path, catalog):
    write_dota_folder(tmp_path / "test", sizes=((300, 200),), labels=False)
    split_dota(
        tmp_path / "test",
        tmp_path / "test_p",
        settings=SplitSettings(PATCH, GAP),
        num_workers=1,
        progress=False,
    )
    register_dota("tiny_test", tmp_path / "test_p")
    d = DatasetCatalog.get("tiny_test")[1]
    inst = Instances((PATCH, PATCH))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]))
    inst.scores = torch.tensor([0.75])
    inst.pred_classes = torch.tensor([1])
    evaluator = DOTAFullImageEvaluator("tiny_test", str(tmp_path / "out"))
    evaluator.reset()
    evaluator.process([d], [{"instances": inst}])
    assert evaluator.evaluate() == {}
    files = sorted(p.name for p in (tmp_path / "out").glob("Task2_*.txt"))
    assert files == sorted(f"Task2_{c}.txt" for c in DOTA_V1_CLASSES)
    x, y = d["patch_origin"]
    line = (tmp_path / "out" / "Task2_ship.txt").read_text().split()
    assert line == ["P0000", "0.750000", f"{10 + x:.2f}", f"{20 + y:.2f}", f"{30 + x:.2f}", f"{40 + y:.2f}"]
