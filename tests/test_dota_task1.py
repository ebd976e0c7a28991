"""DOTA Task 1: exact polygon IoU, AP equal to the DOTA devkit's Task-1 evaluation on the same files, rotated
merging, submission files, the evaluator and tools/dota_merge_eval.py --task 1."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances, RotatedBoxes
from shapely.geometry import Polygon
from test_dota_scenes import CLASSES, GAP, PATCH, write_dota_folder

from ds2d2.data.dota import DOTA_V1_CLASSES, register_dota
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2.evaluation.dota import DOTAFullImageEvaluator, merge_and_evaluate_coco_results
from ds2d2.evaluation.dota_ap import Detections, Objects
from ds2d2.evaluation.dota_merge import (
    DEFAULT_ROTATED_NMS_THRESH,
    boxes_to_image,
    merge_rotated_detections,
    rotated_patch_to_image,
)
from ds2d2.evaluation.dota_task1 import (
    polygon_ground_truth_from_labels,
    rotated_to_polygons,
    task1_average_precision,
    write_task1_files,
)
from ds2d2.evaluation.polygon_iou import pairwise_polygon_iou
from ds2d2.rotated.boxes import polygons_to_rotated_boxes

REPO = Path(__file__).resolve().parents[1]


def random_quads(rng: np.random.Generator, n: int, convex: bool, centre_range=(0.0, 100.0)) -> np.ndarray:
    """n simple quadrilaterals (n, 4, 2): corners at sorted random angles around a centre (convex), or with
    one corner pulled inside (not convex); both windings."""
    out = []
    while len(out) < n:
        centre = rng.uniform(*centre_range, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 4))
        radii = rng.uniform(5, 40, 4)
        quad = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        if rng.random() < 0.5:
            quad = quad[::-1]
        poly = Polygon(quad)
        is_convex = poly.convex_hull.area - poly.area <= 1e-9 * poly.area
        if not poly.is_valid or poly.area < 1 or is_convex != convex:
            continue
        out.append(quad)
    return np.array(out)


def shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


@pytest.mark.parametrize("convex", [(True, True), (False, True), (True, False), (False, False)])
def test_polygon_iou_is_exact(convex):
    rng = np.random.default_rng(int(convex[0]) * 2 + int(convex[1]))
    p, q = random_quads(rng, 40, convex[0]), random_quads(rng, 40, convex[1])
    ours = pairwise_polygon_iou(p, q)
    reference = np.array([[shapely_iou(a, b) for b in q] for a in p])
    assert (reference > 0.05).sum() > 50  # many overlapping pairs, not just zeros
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_polygon_iou_edge_cases():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10.0]])
    far = square + 1e6  # large image coordinates keep their precision
    cases = [
        (square, square, 1.0),  # identical
        (square, square[::-1], 1.0),  # other winding
        (square, square + [20, 0], 0.0),  # disjoint
        (square, square + [10, 0], 0.0),  # touching along an edge
        (square, square * 0.5, 0.25),  # contained
        (square, square + [5, 0], 50 / 150),  # parallel edges
        (far, far + [5, 5], 25 / 175),
        (square, np.array([[5, -5], [15, 5], [5, 15], [-5, 5.0]]), 0.5),  # inscribed in a 45-degree square
        (square, np.array([[5, 0], [10, 5], [5, 10], [0, 5.0]]), 0.5),  # a 45-degree square inscribed
    ]
    for a, b, expected in cases:
        assert pairwise_polygon_iou(a[None], b[None])[0, 0] == pytest.approx(expected, abs=1e-12)
        assert pairwise_polygon_iou(b[None], a[None])[0, 0] == pytest.approx(expected, abs=1e-12)
    dart = np.array([[0, 0], [10, 5], [0, 10], [3, 5.0]])  # reflex corner at (3, 5)
    assert pairwise_polygon_iou(dart[None], square[None])[0, 0] == pytest.approx(35 / 100, abs=1e-12)
    assert pairwise_polygon_iou(dart[None], dart[None])[0, 0] == pytest.approx(1.0, abs=1e-12)
    line = np.array([[0, 0], [10, 0], [20, 0], [5, 0.0]])  # zero area: IoU 0
    assert pairwise_polygon_iou(line[None], square[None])[0, 0] == 0.0


def test_polygon_iou_equals_the_devkits():
    from dotadevkit.polyiou import polyiou

    rng = np.random.default_rng(5)
    p = np.concatenate([random_quads(rng, 20, True), random_quads(rng, 20, False)])
    q = np.concatenate([random_quads(rng, 20, True), random_quads(rng, 20, False)])
    theirs = np.array(
        [
            [polyiou.iou_poly(polyiou.VectorDouble(a.ravel()), polyiou.VectorDouble(b.ravel())) for b in q]
            for a in p
        ]
    )
    np.testing.assert_allclose(pairwise_polygon_iou(p, q), np.where(theirs > 0, theirs, 0.0), atol=1e-12)


def devkit_task1_ap(task1_dir: Path, gt_dir: Path, images, classes, use_07_metric: bool, monkeypatch):
    """AP per class from dotadevkit's own Task-1 evaluation, reading our Task1 files and DOTA label files."""
    from dotadevkit.evaluate import task1

    monkeypatch.setattr(np, "bool", bool, raising=False)  # the devkit still uses np.bool
    imageset = gt_dir / "imageset.txt"
    imageset.write_text("\n".join(images) + "\n")
    return {
        c: task1.voc_eval(
            str(task1_dir / "Task1_{:s}.txt"), str(gt_dir / "{:s}.txt"), str(imageset), c, 0.5, use_07_metric,
            "1.0",
        )[2]
        for c in classes
    }


def random_task1_set(rng: np.random.Generator):
    """Labels (DOTA text per image, with difficult flags and both polygon shapes) and detections (rotated
    boxes near the objects and raw quadrilaterals, duplicates, misses, false positives)."""
    classes = ["a", "b", "c"]
    # 7, 11 and 13 non-difficult objects: recalls never fall on the 11-point grid, where the devkit's
    # np.arange is inexact; 2 difficult objects of each class besides
    labels = np.repeat([0, 1, 2, 0, 1, 2], [7, 11, 13, 2, 2, 2])
    difficult = np.repeat([0, 0, 0, 1, 1, 1], [7, 11, 13, 2, 2, 2])
    order = rng.permutation(len(labels))
    labels, difficult = labels[order], difficult[order]
    texts, dets = {}, {}
    bounds = [0, 12, 25, len(labels)]
    for k, stem in enumerate(["P0001", "P0002", "P0003"]):
        cls, diff = labels[bounds[k] : bounds[k + 1]], difficult[bounds[k] : bounds[k + 1]]
        # objects: rotated rectangles with jittered corners (as labelled), some not convex
        true_boxes = np.concatenate(
            [rng.uniform(20, 280, (len(cls), 2)), rng.uniform(10, 50, (len(cls), 2)),
             rng.uniform(-180, 180, (len(cls), 1))],
            axis=1,
        )
        quads = rotated_to_polygons(true_boxes) + rng.normal(0, 1, (len(cls), 4, 2))
        concave = rng.random(len(cls)) < 0.2
        quads[concave] = random_quads(rng, int(concave.sum()), False, (20, 280))
        quads = np.round(quads, 1)
        lines = ["imagesource:GoogleEarth", "gsd:0.5"]
        lines += [
            " ".join(f"{v:.1f}" for v in q.ravel()) + f" {classes[c]} {d}"
            for q, c, d in zip(quads, cls, diff)
        ]
        texts[stem] = "\n".join(lines) + "\n"
        hits = rng.random(len(cls)) < 0.8
        rboxes = true_boxes + np.concatenate(
            [rng.normal(0, 2, (len(cls), 2)), true_boxes[:, 2:4] * rng.uniform(-0.15, 0.1, (len(cls), 2)),
             rng.normal(0, 6, (len(cls), 1))],
            axis=1,
        )
        jittered = quads + rng.normal(0, 2, quads.shape)
        noise = random_quads(rng, 4, True, (0, 300))
        polygons = np.concatenate(
            [rotated_to_polygons(rboxes[hits]), jittered[~hits][:2], jittered[:3] + 1.5, noise]
        )
        det_classes = np.concatenate([cls[hits], cls[~hits][:2], cls[:3], rng.integers(0, 3, 4)])
        scores = np.round(rng.random(len(polygons)), 6)
        dets[stem] = Detections(np.round(polygons, 2), scores, det_classes.astype(np.int64))
    all_scores = np.concatenate([d.scores for d in dets.values()])
    assert len(np.unique(all_scores)) == len(all_scores)  # the devkit's sort is not stable: no ties
    return classes, texts, dets


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_task1_ap_equals_the_devkits(tmp_path, monkeypatch, use_07_metric, seed):
    classes, texts, dets = random_task1_set(np.random.default_rng(seed))
    gt_dir = tmp_path / "labelTxt"
    gt_dir.mkdir()
    for stem, text in texts.items():
        (gt_dir / f"{stem}.txt").write_text(text)
    write_task1_files(dets, classes, tmp_path / "task1")
    ground_truth = polygon_ground_truth_from_labels(gt_dir, list(texts), classes)
    assert sum(int(gt.difficult.sum()) for gt in ground_truth.values()) == 6
    ours = task1_average_precision(dets, ground_truth, classes, use_07_metric=use_07_metric)
    theirs = devkit_task1_ap(tmp_path / "task1", gt_dir, list(texts), classes, use_07_metric, monkeypatch)
    assert 0.1 < min(ours.values()) and max(ours.values()) < 1.0  # neither trivial nor perfect
    for c in classes:
        assert ours[c] == pytest.approx(theirs[c], abs=1e-12)


def test_task1_ap_by_hand_with_difficult():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10.0]])
    gt = {"x": Objects(np.stack([square, square + 50]), np.array([0, 0]), np.array([False, True]))}

    def ap(polygons, scores, use_07_metric=True):
        dets = {"x": Detections(np.array(polygons, float), np.array(scores), np.zeros(len(scores), np.int64))}
        return task1_average_precision(dets, gt, ["a", "b"], use_07_metric=use_07_metric)

    # matching the difficult object is neither a hit nor a false positive
    assert ap([square + 50, square], [0.9, 0.8])["a"] == 1.0
    # a false positive ranked first: precision 1/2 at recall 1
    assert ap([square + 20, square], [0.9, 0.8])["a"] == pytest.approx(0.5)
    # a duplicate of a found object is a false positive after the hit: AP stays 1
    assert ap([square, square, square + [0, 1]], [0.9, 0.8, 0.7])["a"] == 1.0
    # IoU exactly 0.5 is a miss (the devkit's strict >), just above is a hit
    half = np.array([[0, 0], [10, 0], [10, 20 / 3], [0, 20 / 3]])  # IoU with the square: (200/3) / 100
    assert ap([half], [0.9])["a"] == 1.0
    two_thirds_miss = square * [1, 0.5] + [0, 2.5]  # IoU 0.5 exactly
    assert ap([two_thirds_miss], [0.9])["a"] == 0.0
    assert np.isnan(ap([square], [0.9])["b"])  # no object of class b
    with pytest.raises(KeyError, match="without ground truth"):
        task1_average_precision({"y": Detections(square[None], np.ones(1), np.zeros(1, np.int64))}, gt, ["a"])


def shapely_rotated_iou(a: np.ndarray, b: np.ndarray) -> float:
    return shapely_iou(rotated_to_polygons(a)[0], rotated_to_polygons(b)[0])


def test_rotated_merge_is_classwise_greedy_nms_at_the_devkits_threshold():
    rng = np.random.default_rng(0)
    n = 150
    boxes = np.concatenate(
        [rng.uniform(0, 150, (n, 2)), rng.uniform(5, 40, (n, 2)), rng.uniform(-180, 180, (n, 1))], axis=1
    )
    scores, classes = rng.random(n), rng.integers(0, 2, n)
    merged = merge_rotated_detections([Detections(boxes, scores, classes)], 400, 400)
    expected = []
    for c in (0, 1):  # brute-force greedy NMS per class with Shapely's IoU, at 0.1
        left = [i for i in np.argsort(-scores) if classes[i] == c]
        while left:
            best = left.pop(0)
            expected.append(best)
            left = [j for j in left if shapely_rotated_iou(boxes[best], boxes[j]) <= 0.1]
    expected = sorted(expected, key=lambda i: -scores[i])
    assert DEFAULT_ROTATED_NMS_THRESH == 0.1
    assert 10 < len(expected) < n - 10
    np.testing.assert_array_equal(merged.boxes, boxes[expected])
    np.testing.assert_array_equal(merged.classes, classes[expected])


def test_boxes_to_image_maps_each_box_kind_by_its_width():
    # xyxy: every coordinate halves, then shifts by the origin; XYWHA: centre and size halve, the angle stays
    np.testing.assert_allclose(boxes_to_image(np.array([[10.0, 20.0, 30.0, 40.0]]), (100.0, 50.0), 2.0),
                               [[105.0, 60.0, 115.0, 70.0]])
    np.testing.assert_allclose(boxes_to_image(np.array([[40.0, 20.0, 30.0, 10.0, 33.0]]), (100.0, 50.0), 2.0),
                               [[120.0, 60.0, 15.0, 5.0, 33.0]])
    assert boxes_to_image(np.zeros((0, 5)), (1.0, 2.0), 1.0).shape == (0, 5)
    with pytest.raises(ValueError, match=r"shape \(2, 6\)"):
        boxes_to_image(np.zeros((2, 6)), (0.0, 0.0), 1.0)


def test_rotated_merge_maps_patches_keeps_whole_boxes_and_drops_padding():
    # a patch at origin (100, 50) cut at rate 2: centre and size halve, the angle stays
    np.testing.assert_allclose(
        rotated_patch_to_image(np.array([[40.0, 20.0, 30.0, 10.0, 33.0]]), (100.0, 50.0), 2.0),
        [[120.0, 60.0, 15.0, 5.0, 33.0]],
    )
    whole, part = [50, 50, 40, 10, 30], [48, 49, 30, 10, 30]  # same score: the whole object wins the tie
    outside = [130, 20, 20, 10, 0]  # in the padding right of a 100-px image
    across = [95, 20, 20, 10, 45]  # crosses the border: kept, not clipped
    merged = merge_rotated_detections(
        [Detections(np.array([part, outside]), np.array([0.9, 0.95]), np.zeros(2, np.int64)),
         Detections(np.array([whole, across]), np.array([0.9, 0.5]), np.zeros(2, np.int64))],
        100, 100,
    )
    assert merged.boxes.tolist() == [whole, across]


@pytest.fixture(scope="module")
def oriented_patch_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("dota_task1")
    scenes = write_dota_folder(root / "val")
    split_dota(
        root / "val", root / "val_p", settings=SplitSettings(PATCH, GAP, (0.5, 1.0, 1.5)), num_workers=1,
        progress=False,
    )
    return root, scenes


def objects_as_rotated_results(dicts, scenes, skip=None):
    """Every object whose centre lies in a patch, as the rotated detection (its polygon's minimum-area
    rectangle, in patch pixels) a perfect model would give, score 1, as RotatedCOCOEvaluator writes them;
    ``skip``: (image, category) left out."""
    results = []
    for d in dicts:
        (ox, oy), scale = d["patch_origin"], d["patch_scale"]
        objects = scenes[d["source_image"]]
        rboxes = polygons_to_rotated_boxes(torch.tensor([p for p, _, _ in objects], dtype=torch.float64))
        for (poly, category, _), rbox in zip(objects, rboxes.tolist()):
            cx, cy = (rbox[0] - ox) * scale, (rbox[1] - oy) * scale
            if not (0 <= cx < PATCH and 0 <= cy < PATCH) or (d["source_image"], category) == skip:
                continue
            box = [cx, cy, rbox[2] * scale, rbox[3] * scale, rbox[4]]
            results.append(
                {"image_id": d["image_id"], "category_id": DOTA_V1_CLASSES.index(category), "bbox": box,
                 "score": 1.0}
            )
    return results


def test_tool_scores_task1_from_rotated_results(oriented_patch_set, catalog, tmp_path, monkeypatch):
    root, scenes = oriented_patch_set
    register_dota("tiny_val_r", root / "val_p")
    dicts = DatasetCatalog.get("tiny_val_r")
    results = tmp_path / "coco_instances_results.json"
    results.write_text(json.dumps(objects_as_rotated_results(dicts, scenes)))
    tool = load_script(REPO / "tools" / "dota_merge_eval.py", "dota_merge_eval")
    out = tmp_path / "full"
    labels = str(root / "val" / "labelTxt")
    argv = ["--dataset", "tiny_val_r", "--detections", str(results), "--labels", labels, "--output", str(out)]
    assert tool.main(argv) == 0  # the task follows the results: 5 numbers a box
    report = json.loads((out / "dota_task1_eval.json").read_text())
    assert report["mAP"] == 1.0 and {c: report["AP"][c] for c in CLASSES} == {c: 1.0 for c in CLASSES}
    written = sorted(p.name for p in out.glob("Task1_*.txt"))
    assert written == sorted(f"Task1_{c}.txt" for c in DOTA_V1_CLASSES)
    assert not list(out.glob("Task2_*.txt"))
    # the submission files score 1 in the devkit too, merged to one line per object
    lines = sum(len((out / f"Task1_{c}.txt").read_text().splitlines()) for c in CLASSES)
    assert lines == sum(len(objs) for objs in scenes.values())
    theirs = devkit_task1_ap(out, root / "val" / "labelTxt", list(scenes), CLASSES, True, monkeypatch)
    assert theirs == pytest.approx({c: 1.0 for c in CLASSES}, abs=1e-12)

    # the check can fail: without one object's detections, its class loses AP
    stem, (_, category, _) = "P0000", next(o for o in scenes["P0000"] if o[2] == 0)
    results.write_text(json.dumps(objects_as_rotated_results(dicts, scenes, skip=(stem, category))))
    assert tool.main(argv + ["--task", "1"]) == 0
    assert json.loads((out / "dota_task1_eval.json").read_text())["AP"][category] < 1.0
    # rotated results are not Task 2's: refused with the fix, no traceback
    assert tool.main(argv + ["--task", "2"]) == 1
    with pytest.raises(ValueError, match="use --task 1"):
        merge_and_evaluate_coco_results("tiny_val_r", results, tmp_path / "o", labels, task=2)


def rotated_outputs(dicts, results):
    """Model outputs (Instances with RotatedBoxes) per patch dict from COCO-style rotated results."""
    per_patch = {d["image_id"]: [] for d in dicts}
    for r in results:
        per_patch[r["image_id"]].append(r)
    for d in dicts:
        rows = per_patch[d["image_id"]]
        inst = Instances((d["height"], d["width"]))
        boxes = torch.tensor([r["bbox"] for r in rows], dtype=torch.float32).reshape(-1, 5)
        inst.pred_boxes = RotatedBoxes(boxes)
        inst.scores = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        inst.pred_classes = torch.tensor([r["category_id"] for r in rows], dtype=torch.int64)
        yield {k: v for k, v in d.items() if k != "annotations"}, {"instances": inst}


def test_evaluator_scores_task1_on_rotated_outputs(oriented_patch_set, catalog, tmp_path):
    root, scenes = oriented_patch_set
    register_dota("tiny_val_ev_r", root / "val_p")
    dicts = DatasetCatalog.get("tiny_val_ev_r")
    labels = str(root / "val" / "labelTxt")
    evaluator = DOTAFullImageEvaluator("tiny_val_ev_r", str(tmp_path), task=1, labels_dir=labels)
    evaluator.reset()
    for inp, out in rotated_outputs(dicts, objects_as_rotated_results(dicts, scenes)):
        evaluator.process([inp], [out])
    result = evaluator.evaluate()["dota_task1"]
    assert result["mAP"] == pytest.approx(100.0)
    assert all(result[f"AP-{c}"] == pytest.approx(100.0) for c in CLASSES)
    assert json.loads((tmp_path / "dota_task1_eval.json").read_text())["mAP"] == 1.0
    assert not list(tmp_path.glob("Task1_*.txt"))  # labelled split: no submission unless asked

    # horizontal predictions cannot be scored as Task 1 (and rotated ones not as Task 2): named, with the fix
    inp, out = next(rotated_outputs(dicts, []))
    out["instances"].pred_boxes = Boxes(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="Task 1 scores rotated boxes.*predicted horizontal boxes"):
        evaluator.process([inp], [out])
    task2 = DOTAFullImageEvaluator("tiny_val_ev_r", str(tmp_path))
    with pytest.raises(ValueError, match="Task 2 scores horizontal boxes.*predicted rotated boxes"):
        task2.process(*[[x] for x in next(rotated_outputs(dicts, []))])


def test_unlabelled_split_writes_task1_files(tmp_path, catalog):
    write_dota_folder(tmp_path / "test", sizes=((300, 200),), labels=False)
    split_dota(tmp_path / "test", tmp_path / "test_p", settings=SplitSettings(PATCH, GAP), num_workers=1,
               progress=False)
    register_dota("tiny_test_r", tmp_path / "test_p")
    d = DatasetCatalog.get("tiny_test_r")[1]
    inst = Instances((PATCH, PATCH))
    inst.pred_boxes = RotatedBoxes(torch.tensor([[30.0, 40.0, 20.0, 10.0, 90.0]]))
    inst.scores = torch.tensor([0.75])
    inst.pred_classes = torch.tensor([1])
    evaluator = DOTAFullImageEvaluator("tiny_test_r", str(tmp_path / "out"), task=1)
    evaluator.reset()
    evaluator.process([d], [{"instances": inst}])
    assert evaluator.evaluate() == {}
    files = sorted(p.name for p in (tmp_path / "out").glob("Task1_*.txt"))
    assert files == sorted(f"Task1_{c}.txt" for c in DOTA_V1_CLASSES)
    x, y = d["patch_origin"]
    # a 20 x 10 box turned 90 degrees counter-clockwise: its own top-left corner is at the bottom left
    corners = [(25, 50), (25, 30), (35, 30), (35, 50)]
    expected = ["P0000", "0.750000"] + [f"{v:.2f}" for cx, cy in corners for v in (cx + x, cy + y)]
    assert (tmp_path / "out" / "Task1_ship.txt").read_text().split() == expected


def test_oriented_patch_set_is_scored_as_task1_from_its_records(oriented_patch_set, catalog, tmp_path):
    root, scenes = oriented_patch_set
    register_dota("tiny_val_oriented", root / "val_p", boxes="oriented")
    dicts = DatasetCatalog.get("tiny_val_oriented")
    evaluator = DOTAFullImageEvaluator("tiny_val_oriented", str(tmp_path))  # the task from the box kind
    evaluator.reset()
    for inp, out in rotated_outputs(dicts, objects_as_rotated_results(dicts, scenes)):
        evaluator.process([inp], [out])
    result = evaluator.evaluate()["dota_task1"]  # ground truth: the polygons recorded at split time
    assert result["mAP"] == pytest.approx(100.0)
    assert all(result[f"AP-{c}"] == pytest.approx(100.0) for c in CLASSES)


def test_oriented_patch_sets_get_rotated_coco_ap_and_task1(oriented_patch_set, catalog, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.evaluation import RotatedCOCOEvaluator

    from ds2d2.config import add_ds2d2_config
    from ds2d2.engine import build_evaluators

    cfg = get_cfg()
    add_ds2d2_config(cfg)
    root, _ = oriented_patch_set
    register_dota("tiny_val_engine", root / "val_p", boxes="oriented")
    evaluators = build_evaluators(cfg, "tiny_val_engine", str(tmp_path))._evaluators
    assert [type(e) for e in evaluators] == [RotatedCOCOEvaluator, DOTAFullImageEvaluator]
    assert evaluators[1]._task == 1
