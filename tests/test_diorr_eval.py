"""DIOR-R's metric: VOC-style AP50 of rotated boxes (RotatedVOCDetectionEvaluator), against an independent
reference written from MMDetection's eval_map rules (what DIOR-R's authors' code scores with) and Shapely's
IoU; VOC07 11-point by default."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances, RotatedBoxes
from shapely.geometry import Polygon

from ds2d2.evaluation.dota_task1 import rotated_to_polygons
from ds2d2.evaluation.voc import RotatedVOCDetectionEvaluator, rotated_pairwise_iou

CLASSES = ["airplane", "ship", "vehicle"]


def shapely_iou(a, b) -> float:
    pa, pb = Polygon(rotated_to_polygons(a)[0]), Polygon(rotated_to_polygons(b)[0])
    return pa.intersection(pb).area / pa.union(pb).area


def random_rboxes(rng, n):
    return np.concatenate(
        [rng.uniform(0, 200, (n, 2)), rng.uniform(8, 60, (n, 2)), rng.uniform(-180, 180, (n, 1))], axis=1
    )


def test_rotated_iou_is_exact():
    rng = np.random.default_rng(0)
    a, b = random_rboxes(rng, 30), random_rboxes(rng, 30)
    reference = np.array([[shapely_iou(x, y) for y in b] for x in a])
    assert (reference > 0.05).sum() > 10
    np.testing.assert_allclose(rotated_pairwise_iou(a, b), reference, atol=1e-9)


def reference_ap(images, classes, use_07_metric):
    """Per-class AP in percent from first principles: all detections of a class by decreasing score, each
    matched to the object of its image with the highest (Shapely) IoU; >= 0.5 and not difficult: a hit if
    the object is still free, else a false positive; difficult: ignored; below 0.5: a false positive. Recall
    over the non-difficult objects; 11-point: mean over t = 0, 0.1, ..., 1 of the best precision at recall
    >= t (VOC2007's t); area: sum over recall steps of the best precision at or after each step."""
    aps = {}
    for c, name in enumerate(classes):
        dets = [
            (score, k, box)
            for k, img in enumerate(images)
            for box, score, cls in zip(img["det_boxes"], img["det_scores"], img["det_classes"])
            if cls == c
        ]
        dets.sort(key=lambda d: -d[0])
        npos = sum(int(np.sum((img["gt_classes"] == c) & ~img["gt_difficult"])) for img in images)
        if npos == 0:
            continue
        taken = [set() for _ in images]
        tps, fps = [], []
        for _, k, box in dets:
            img = images[k]
            ious = [
                shapely_iou(box, g) if gc == c else -1.0 for g, gc in zip(img["gt_boxes"], img["gt_classes"])
            ]
            j = int(np.argmax(ious)) if ious else -1
            if j >= 0 and ious[j] >= 0.5:
                if img["gt_difficult"][j]:
                    continue
                hit = j not in taken[k]
                taken[k].add(j)
                tps.append(hit)
                fps.append(not hit)
            else:
                tps.append(False)
                fps.append(True)
        tp, fp = np.cumsum(tps), np.cumsum(fps)
        recall, precision = tp / npos, tp / np.maximum(tp + fp, 1e-300)
        if use_07_metric:
            grid = np.arange(0.0, 1.1, 0.1)  # VOC2007's thresholds, float rounding included
            ap = sum(max([p for r, p in zip(recall, precision) if r >= t] or [0.0]) for t in grid) / 11
        else:
            ap, previous = 0.0, 0.0
            for i, r in enumerate(recall):
                if r > previous:
                    ap += (r - previous) * precision[i:].max()
                    previous = r
        aps[name] = 100 * ap
    return aps


def random_images(rng, count=4):
    images = []
    for _ in range(count):
        n = int(rng.integers(5, 12))
        gt = random_rboxes(rng, n)
        gt_classes = rng.integers(0, 3, n)
        hit = rng.random(n) < 0.75
        jitter = np.concatenate(
            [rng.normal(0, 3, (n, 2)), gt[:, 2:4] * rng.uniform(-0.2, 0.1, (n, 2)), rng.normal(0, 8, (n, 1))],
            axis=1,
        )
        det = np.concatenate([(gt + jitter)[hit], gt[:2] + [1, 1, 0, 0, 2], random_rboxes(rng, 3)])
        det_classes = np.concatenate([gt_classes[hit], gt_classes[:2], rng.integers(0, 3, 3)])
        images.append(
            {
                "gt_boxes": gt,
                "gt_classes": gt_classes,
                "gt_difficult": rng.random(n) < 0.15,
                "det_boxes": det,
                "det_scores": rng.random(len(det)),
                "det_classes": det_classes,
            }
        )
    return images


def register(name, images, mode=BoxMode.XYWHA_ABS):
    dicts = [
        {
            "file_name": f"{k}.jpg",
            "image_id": k,
            "height": 800,
            "width": 800,
            "annotations": [
                {"bbox": list(b), "bbox_mode": mode, "category_id": int(c), "difficult": int(d)}
                for b, c, d in zip(img["gt_boxes"], img["gt_classes"], img["gt_difficult"])
            ],
        }
        for k, img in enumerate(images)
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type="voc_detection", box_kind="oriented")


def run(evaluator, images, box_type=RotatedBoxes):
    evaluator.reset()
    for k, img in enumerate(images):
        inst = Instances((800, 800))
        inst.pred_boxes = box_type(torch.tensor(img["det_boxes"], dtype=torch.float64))
        inst.scores = torch.tensor(img["det_scores"])
        inst.pred_classes = torch.tensor(img["det_classes"])
        evaluator.process([{"image_id": k}], [{"instances": inst}])
    return evaluator.evaluate()


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_ap_equals_the_reference(catalog, use_07_metric, seed):
    images = random_images(np.random.default_rng(seed))
    register("diorr_tiny", images)
    result = run(RotatedVOCDetectionEvaluator("diorr_tiny", use_07_metric=use_07_metric), images)
    ours = result["voc_rotated_ap50"]
    expected = reference_ap(images, CLASSES, use_07_metric)
    assert set(ours) == {"mAP50"} | {f"AP50-{c}" for c in expected}
    for c, ap in expected.items():
        assert ours[f"AP50-{c}"] == pytest.approx(ap, abs=1e-9)
    assert ours["mAP50"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    assert 10 < min(expected.values()) and max(expected.values()) < 100  # neither trivial nor perfect


def test_rotated_ap_rules_by_hand(catalog):
    square = [5.0, 5.0, 10.0, 10.0, 0.0]
    images = [
        {
            "gt_boxes": np.array([square, [50.0, 50.0, 20.0, 4.0, 60.0]]),
            "gt_classes": np.array([0, 0]),
            "gt_difficult": np.array([False, True]),
        }
    ]
    register("diorr_hand", images)
    evaluator = RotatedVOCDetectionEvaluator("diorr_hand")

    def ap(boxes, scores):
        images[0].update(
            det_boxes=np.array(boxes), det_scores=np.array(scores), det_classes=np.zeros(len(boxes), int)
        )
        return run(evaluator, images)["voc_rotated_ap50"]["AP50-airplane"]

    assert ap([[5.0, 5.0, 10.0, 10.0, 90.0]], [0.9]) == 100.0  # the same square turned by 90 degrees
    assert ap([[2.5, 5.0, 5.0, 10.0, 0.0]], [0.9]) == 100.0  # IoU exactly 0.5 is a hit (>=, unlike DOTA's >)
    assert ap([[2.5, 5.0, 4.9, 10.0, 0.0]], [0.9]) == 0.0  # just below
    # the difficult object (a bar at 60 degrees) matched first: ignored, so precision stays 1
    assert ap([[50.0, 50.0, 20.0, 4.0, 60.0], square], [0.9, 0.8]) == 100.0
    # the same bar at angle 0 misses it (IoU ~0.13), a false positive first: precision 1/2 at every recall
    assert ap([[50.0, 50.0, 20.0, 4.0, 0.0], square], [0.9, 0.8]) == pytest.approx(50.0)
    # horizontal predictions on an oriented dataset are named, with the fix
    with pytest.raises(ValueError, match="scores rotated boxes.*predicted horizontal boxes"):
        horizontal = dict(images[0], det_boxes=np.zeros((1, 4)), det_scores=[0.5], det_classes=[0])
        run(evaluator, [horizontal], Boxes)


def test_horizontal_annotations_count_as_angle_zero(catalog):
    images = random_images(np.random.default_rng(3), 2)
    for img in images:  # axis-aligned objects given as XYXY_ABS
        img["gt_boxes"][:, 4] = 0.0
    rotated = RotatedVOCDetectionEvaluator
    register("diorr_xywha", images)
    xyxy = [
        dict(img, gt_boxes=np.concatenate([img["gt_boxes"][:, :2] - img["gt_boxes"][:, 2:4] / 2,
                                           img["gt_boxes"][:, :2] + img["gt_boxes"][:, 2:4] / 2], 1))
        for img in images
    ]
    register("diorr_xyxy", xyxy, BoxMode.XYXY_ABS)
    from_xyxy = run(rotated("diorr_xyxy"), images)["voc_rotated_ap50"]
    assert from_xyxy == pytest.approx(run(rotated("diorr_xywha"), images)["voc_rotated_ap50"], abs=1e-9)
    assert from_xyxy["mAP50"] > 10


def test_oriented_voc_datasets_get_the_rotated_evaluators(catalog, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.evaluation import RotatedCOCOEvaluator

    from ds2d2.config import add_ds2d2_config
    from ds2d2.engine import build_evaluators

    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.TEST.VOC_USE_07_METRIC = True  # DIOR-R's AP
    register("diorr_engine", random_images(np.random.default_rng(0), 1))
    evaluators = build_evaluators(cfg, "diorr_engine", str(tmp_path))._evaluators
    assert [type(e) for e in evaluators] == [RotatedCOCOEvaluator, RotatedVOCDetectionEvaluator]
    assert evaluators[1]._use_07_metric is True
