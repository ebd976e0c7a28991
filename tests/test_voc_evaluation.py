"""VOC per-class AP50: hand-computed cases and a brute-force reference on random data."""

import logging
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from ds2d2.evaluation.voc import VOCDetectionEvaluator

CLASSES = ["airplane", "ship", "vehicle", "windmill"]


pytestmark = pytest.mark.usefixtures("restore_catalogs")


def gt(image_id, objects):
    """objects: (class, [x0, y0, x1, y1], difficult)."""
    annotations = [
        {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "difficult": d}
        for c, box, d in objects
    ]
    return {"image_id": image_id, "height": 100, "width": 100, "annotations": annotations}


def register(name, dicts):
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=CLASSES)


def run_evaluator(dataset, detections, use_07_metric=False, output_dir=None):
    """detections: image_id -> list of (class, score, box). Returns what evaluate() returns."""
    evaluator = VOCDetectionEvaluator(dataset, output_dir=output_dir, use_07_metric=use_07_metric)
    evaluator.reset()
    for image_id, dets in detections.items():
        instances = Instances((100, 100))
        instances.pred_boxes = Boxes(torch.tensor([d[2] for d in dets], dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
        instances.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()


def evaluate(dataset, detections, use_07_metric=False, output_dir=None):
    return run_evaluator(dataset, detections, use_07_metric, output_dir)["voc_ap50"]


A, B = [10, 10, 30, 30], [50, 50, 80, 90]


def test_perfect_predictions_give_100(caplog):
    register("t_perfect", [gt("i0", [(0, A, 0), (1, B, 0)]), gt("i1", [(1, A, 0)])])
    with caplog.at_level(logging.INFO, logger="ds2d2.evaluation.voc"):
        res = evaluate("t_perfect", {"i0": [(0, 0.9, A), (1, 0.8, B)], "i1": [(1, 0.3, A)]})
    assert res == {"mAP50": 100.0, "AP50-airplane": 100.0, "AP50-ship": 100.0}
    assert list(res) == ["mAP50", "AP50-airplane", "AP50-ship"]
    (table,) = [r.getMessage() for r in caplog.records if "Per-class AP50" in r.getMessage()]
    assert "airplane" in table and "ship" in table and "vehicle" not in table


@pytest.mark.parametrize("use_07_metric", [False, True])
def test_false_positive_above_the_only_true_positive_halves_ap(use_07_metric):
    register("t_fp", [gt("i0", [(0, A, 0)])])
    res = evaluate("t_fp", {"i0": [(0, 0.9, B), (0, 0.5, A)]}, use_07_metric)
    # precision 1/2 at recall 1 (every 11-point threshold sees precision 1/2 too)
    assert res["AP50-airplane"] == pytest.approx(50.0)


def test_area_and_11_point_differ_on_partial_recall():
    register("t_partial", [gt("i0", [(0, A, 0), (0, B, 0)])])
    dets = {"i0": [(0, 0.9, A)]}
    assert evaluate("t_partial", dets)["AP50-airplane"] == pytest.approx(50.0)
    # recall 0.5 with precision 1: thresholds 0, 0.1, ..., 0.5 -> 6 of 11 points
    assert evaluate("t_partial", dets, use_07_metric=True)["AP50-airplane"] == pytest.approx(600 / 11)


def test_detection_of_difficult_object_is_neither_tp_nor_fp():
    register("t_difficult", [gt("i0", [(0, A, 1), (0, B, 0)])])
    assert evaluate("t_difficult", {"i0": [(0, 0.9, A), (0, 0.5, B)]})["AP50-airplane"] == pytest.approx(
        100.0
    )
    # control: if the difficult object were an ordinary FP/TP the AP would differ
    register("t_not_difficult", [gt("i0", [(0, A, 0), (0, B, 0)])])
    assert evaluate("t_not_difficult", {"i0": [(0, 0.9, A)]})["AP50-airplane"] == pytest.approx(50.0)


def test_duplicate_detection_is_a_false_positive():
    register("t_dup", [gt("i0", [(0, A, 0), (0, B, 0)])])
    shifted = [11, 10, 31, 30]
    res = evaluate("t_dup", {"i0": [(0, 0.9, A), (0, 0.8, shifted), (0, 0.7, B)]})
    # TPs at ranks 1 and 3: precisions 1 and 2/3
    assert res["AP50-airplane"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_iou_threshold_is_inclusive_and_uses_continuous_coordinates():
    register("t_iou", [gt("i0", [(0, [0, 0, 10, 10], 0)]), gt("i1", [(0, [0, 0, 10, 10], 0)])])
    # IoU exactly 0.5 -> TP
    assert evaluate("t_iou", {"i0": [(0, 0.9, [0, 0, 10, 20])], "i1": []})["AP50-airplane"] == pytest.approx(
        50.0
    )
    # IoU 100/210 < 0.5 (it would be 121/242 = 0.5 with the "+1" pixel convention) -> FP
    assert evaluate("t_iou", {"i0": [(0, 0.9, [0, 0, 10, 21])], "i1": []})["AP50-airplane"] == 0.0


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    # vehicle: only a difficult object; windmill: predicted but never annotated
    register("t_subset", [gt("i0", [(0, A, 0), (1, B, 0), (2, A, 1)])])
    res = evaluate("t_subset", {"i0": [(0, 0.9, A), (3, 0.9, B), (2, 0.9, A)]})
    assert res == {"mAP50": 50.0, "AP50-airplane": 100.0, "AP50-ship": 0.0}


def test_unknown_or_repeated_image_is_an_error():
    register("t_ids", [gt("i0", [(0, A, 0)])])
    with pytest.raises(ValueError, match="'nope'.*not in dataset 't_ids'"):
        evaluate("t_ids", {"nope": [(0, 0.9, A)]})
    evaluator = VOCDetectionEvaluator("t_ids")
    instances = Instances((100, 100), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0))
    instances.pred_classes = torch.zeros(0, dtype=torch.int64)
    evaluator.process([{"image_id": "i0"}] * 2, [{"instances": instances}] * 2)
    with pytest.raises(ValueError, match="'i0' was predicted more than once"):
        evaluator.evaluate()


def reference_ap50(dicts, detections, num_classes, use_07_metric):
    """Brute force, written independently: python loops over detections in global score order."""
    result = {}
    for c in range(num_classes):
        objects = {
            d["image_id"]: [(a["bbox"], a["difficult"]) for a in d["annotations"] if a["category_id"] == c]
            for d in dicts
        }
        npos = sum(1 for objs in objects.values() for _, difficult in objs if not difficult)
        if npos == 0:
            continue
        dets = [(s, image_id, box) for image_id, ds in detections.items() for k, s, box in ds if k == c]
        dets.sort(key=lambda t: -t[0])
        used = set()
        outcomes = []  # True = TP, False = FP; ignored detections are not recorded
        for _, image_id, box in dets:
            best, best_j = 0.0, None
            for j, (g, _) in enumerate(objects[image_id]):
                iw = min(box[2], g[2]) - max(box[0], g[0])
                ih = min(box[3], g[3]) - max(box[1], g[1])
                inter = max(iw, 0) * max(ih, 0)
                union = (box[2] - box[0]) * (box[3] - box[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
                if inter / union > best:
                    best, best_j = inter / union, j
            if best < 0.5:
                outcomes.append(False)
            elif objects[image_id][best_j][1]:
                continue
            elif (image_id, best_j) in used:
                outcomes.append(False)
            else:
                used.add((image_id, best_j))
                outcomes.append(True)
        precisions = [sum(outcomes[: k + 1]) / (k + 1) for k in range(len(outcomes))]
        recalls = [sum(outcomes[: k + 1]) / npos for k in range(len(outcomes))]
        if use_07_metric:
            ap = (
                sum(
                    max([p for p, r in zip(precisions, recalls) if r >= t / 10], default=0) for t in range(11)
                )
                / 11
            )
        else:
            # each TP adds 1/npos of recall at the best precision reachable from there on
            ap = sum(max(precisions[k:]) for k in range(len(outcomes)) if outcomes[k]) / npos
        result[f"AP50-{CLASSES[c]}"] = 100 * ap
    result["mAP50"] = sum(result.values()) / len(result)
    return result


def random_problem(seed, num_images=12):
    rng = np.random.default_rng(seed)
    dicts, detections = [], {}
    for i in range(num_images):
        objects, dets = [], []
        for _ in range(rng.integers(0, 6)):
            c = int(rng.integers(0, 3))  # class 3 never has ground truth
            x0, y0 = rng.uniform(0, 70, 2)
            box = [x0, y0, x0 + rng.uniform(4, 30), y0 + rng.uniform(4, 30)]
            objects.append((c, box, int(rng.random() < 0.2)))
            for _ in range(
                rng.integers(0, 3)
            ):  # 0-2 detections per object, jittered: TPs, duplicates, misses
                jitter = rng.uniform(-2, 2, 4)
                dets.append(
                    (c if rng.random() < 0.9 else int(rng.integers(0, 4)), float(rng.random()), box + jitter)
                )
        for _ in range(rng.integers(0, 4)):  # background false positives
            x0, y0 = rng.uniform(0, 80, 2)
            dets.append((int(rng.integers(0, 4)), float(rng.random()), [x0, y0, x0 + 15, y0 + 15]))
        dicts.append(gt(f"img{i}", objects))
        detections[f"img{i}"] = [(c, s, [float(v) for v in b]) for c, s, b in dets]
    for d in dicts:  # loader convention: boxes as floats
        for a in d["annotations"]:
            a["bbox"] = [float(v) for v in a["bbox"]]
    return dicts, detections


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07_metric", [False, True])
def test_matches_brute_force_reference(seed, use_07_metric):
    dicts, detections = random_problem(seed)
    register("t_random", dicts)
    res = evaluate("t_random", detections, use_07_metric)
    # float32 boxes in Instances: the reference sees the same rounded values
    rounded = {
        k: [(c, float(np.float32(s)), np.float32(b).astype(float).tolist()) for c, s, b in v]
        for k, v in detections.items()
    }
    expected = reference_ap50(dicts, rounded, len(CLASSES), use_07_metric)
    assert res.keys() == expected.keys()
    for key in expected:
        assert res[key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0 < res["mAP50"] < 100


def test_saves_gathered_predictions(tmp_path):
    register("t_save", [gt("i0", [(0, A, 0)])])
    evaluate("t_save", {"i0": [(0, 0.9, A)]}, output_dir=str(tmp_path))
    (saved,) = torch.load(tmp_path / "voc_predictions.pth", weights_only=False)
    assert saved["image_id"] == "i0" and saved["boxes"].tolist() == [A]


def _distributed_worker(rank, world_size, init_file, dicts, detections, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    register("t_dist", dicts)
    mine = {k: v for i, (k, v) in enumerate(sorted(detections.items())) if i % world_size == rank}
    res = run_evaluator("t_dist", mine)
    if rank == 0:
        torch.save(res["voc_ap50"], out_file)
    elif res != {}:
        raise AssertionError(f"rank {rank} returned {res}")
    dist.destroy_process_group()


def test_gathers_predictions_across_processes(tmp_path):
    """Two gloo processes, each with half of the images: rank 0 must see them all."""
    dicts, detections = random_problem(3)
    register("t_single", dicts)
    expected = evaluate("t_single", detections)
    out_file = str(tmp_path / "result.pth")
    mp.spawn(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), dicts, detections, out_file),
        nprocs=2,
        join=True,
    )
    result = torch.load(out_file, weights_only=False)
    assert result.keys() == expected.keys()
    assert all(math.isclose(result[k], expected[k], abs_tol=1e-9) for k in expected)
