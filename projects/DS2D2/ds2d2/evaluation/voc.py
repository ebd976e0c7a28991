"""Pascal-VOC-style per-class AP at IoU 0.5, the metric DIOR and DIOR-R papers report.

Horizontal boxes (DIOR): ``VOCDetectionEvaluator``. Oriented boxes (DIOR-R, ``box_kind`` "oriented"):
``RotatedVOCDetectionEvaluator``, the same rules with the exact IoU of rotated boxes (XYWHA_ABS,
``ds2d2.rotated.ops.pairwise_iou_rotated`` in float64). DIOR-R's AP as its papers report it: AOPG's code
(OBBDetection, which introduced DIOR-R) scores it with MMDetection's ``eval_map`` rules, VOC07 11-point AP
at rotated IoU >= 0.5 with difficult objects ignored, mAP over the classes with objects; that is
``use_07_metric=True`` here (``TEST.VOC_USE_07_METRIC True``).
"""

import logging
import os
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from tabulate import tabulate

from ..rotated.ops import pairwise_iou_rotated

__all__ = [
    "VOCDetectionEvaluator",
    "RotatedVOCDetectionEvaluator",
    "average_precision",
    "convert_box",
    "match_detections",
    "rotated_pairwise_iou",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU [N, M] of [N, 4] and [M, 4] XYXY boxes in continuous coordinates (area (x1 - x0) * (y1 - y0))."""
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1[:, None] + area2[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def rotated_pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU [N, M] of [N, 5] and [M, 5] rotated boxes (cx, cy, w, h, angle in degrees CCW), exact, float64."""
    iou = pairwise_iou_rotated(
        torch.as_tensor(boxes1, dtype=torch.float64).reshape(-1, 5),
        torch.as_tensor(boxes2, dtype=torch.float64).reshape(-1, 5),
    )
    return iou.numpy()


def convert_box(bbox, from_mode: BoxMode, to_mode: BoxMode) -> list:
    """``BoxMode.convert`` of one box, also from XYXY_ABS to XYWHA_ABS (angle 0), which Detectron2 lacks."""
    if from_mode == BoxMode.XYXY_ABS and to_mode == BoxMode.XYWHA_ABS:
        bbox, from_mode = BoxMode.convert(list(bbox), from_mode, BoxMode.XYWH_ABS), BoxMode.XYWH_ABS
    return BoxMode.convert(list(bbox), from_mode, to_mode)


def match_detections(
    det_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray,
    iou: Callable[[np.ndarray, np.ndarray], np.ndarray] = pairwise_iou,
) -> Tuple[np.ndarray, np.ndarray]:
    """VOC matching of one image and class.

    Args:
        det_boxes: [D, 4] detections (or [D, 5] with ``iou=rotated_pairwise_iou``), by decreasing score.
        gt_boxes: [G, 4] (or [G, 5]) ground truth; gt_ignore: [G] bool, true for difficult objects.

    Returns:
        tp, fp: [D] bool. Each detection goes to its highest-IoU ground truth; with IoU >= 0.5 it is a TP if
        that object is not yet taken, a duplicate FP if it is, and neither if the object is difficult.
        Otherwise it is a FP.
    """
    tp = np.zeros(len(det_boxes), dtype=bool)
    fp = np.ones(len(det_boxes), dtype=bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return tp, fp
    ious = iou(det_boxes, gt_boxes)
    best = ious.argmax(axis=1)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.flatnonzero(ious[np.arange(len(det_boxes)), best] >= IOU_THRESHOLD):
        g = best[d]
        if gt_ignore[g]:
            fp[d] = False
        elif not taken[g]:
            taken[g] = True
            tp[d], fp[d] = True, False
    return tp, fp


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP (in [0, 1]) of a precision/recall curve ordered by decreasing score.

    Default: area under the monotone (upper-envelope) precision curve, VOC2010+. ``use_07_metric``: mean of
    the maximum precision at recall >= t for t in 0, 0.1, ..., 1 (VOC2007 11-point).
    """
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class VOCDetectionEvaluator(DatasetEvaluator):
    """Per-class AP50 the Pascal VOC way, from the ground truth in ``DatasetCatalog.get(dataset_name)``.

    Difficult objects (``"difficult": 1``, or ``"iscrowd": 1``) are ignored: a detection matched to one is
    neither TP nor FP, and they do not count towards recall. IoU uses continuous coordinates (no +1), like the
    loader in ds2d2.data.voc. Classes without any non-difficult ground truth in the dataset are left out of
    the mean and of the results (synthetic data uses a subset of DIOR's classes).

    ``evaluate()`` returns ``{"voc_ap50": {"mAP50": float, "AP50-<class>": float, ...}}`` in percent on the
    main process, ``{}`` elsewhere. With ``output_dir``, the gathered predictions are saved to
    ``output_dir/voc_predictions.pth``.
    """

    BOX_MODE = BoxMode.XYXY_ABS  # of the predictions (Boxes) and the ground truth it is compared in
    BOX_WIDTH = 4
    RESULT_KEY = "voc_ap50"

    @staticmethod
    def _iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
        return pairwise_iou(boxes1, boxes2)

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, use_07_metric: bool = False):
        self._dataset_name = dataset_name
        self._classes = list(MetadataCatalog.get(dataset_name).thing_classes)
        self._output_dir = output_dir
        self._use_07_metric = use_07_metric
        self._predictions: List[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Keep, per image, boxes [N, 4] (XYXY_ABS, original image pixels; [N, 5] XYWHA_ABS for the rotated
        evaluator), scores [N] and classes [N]."""
        for input_, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            width = instances.pred_boxes.tensor.shape[1]
            if width != self.BOX_WIDTH:
                kinds = {4: "horizontal boxes (Boxes)", 5: "rotated boxes (RotatedBoxes)"}
                raise ValueError(
                    f"{type(self).__name__} on {self._dataset_name!r} scores {kinds[self.BOX_WIDTH]}, but "
                    f"the model predicted {kinds.get(width, f'boxes of {width} numbers')} for image "
                    f"{input_.get('image_id')!r}: evaluate a detector of the dataset's box kind (metadata "
                    "box_kind), or register the dataset with the other one"
                )
            self._predictions.append(
                {
                    "image_id": input_["image_id"],
                    "boxes": instances.pred_boxes.tensor.numpy().astype(np.float64),
                    "scores": instances.scores.numpy().astype(np.float64),
                    "classes": instances.pred_classes.numpy().astype(np.int64),
                }
            )

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        comm.synchronize()
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        predictions = [p for rank_predictions in gathered for p in rank_predictions]
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            torch.save(predictions, os.path.join(self._output_dir, "voc_predictions.pth"))
        return {self.RESULT_KEY: self._compute(predictions)}

    def _ground_truth(self) -> Tuple[Dict[object, int], List[Tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """image_id -> index, and per image (boxes [G, 4] XYXY_ABS or [G, 5] XYWHA_ABS, classes [G], ignore
        [G] bool)."""
        index, per_image = {}, []
        for record in DatasetCatalog.get(self._dataset_name):
            annotations = record.get("annotations", [])
            boxes = np.array(
                [convert_box(a["bbox"], a["bbox_mode"], self.BOX_MODE) for a in annotations],
                dtype=np.float64,
            ).reshape(-1, self.BOX_WIDTH)
            classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
            ignore = np.array(
                [bool(a.get("difficult", 0) or a.get("iscrowd", 0)) for a in annotations], dtype=bool
            )
            index[record["image_id"]] = len(per_image)
            per_image.append((boxes, classes, ignore))
        return index, per_image

    def _match(
        self, predictions: List[dict], index: Dict[object, int], ground_truth: List[tuple]
    ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class: (scores [D], tp [D], fp [D]) of all its detections, by decreasing score.

        Equal scores keep dataset order, then the model's order within an image.
        """
        num_classes = len(self._classes)
        per_class = [([], [], []) for _ in range(num_classes)]
        predictions = sorted(predictions, key=lambda p: self._image_index(index, p["image_id"]))
        for previous, p in zip(predictions, predictions[1:]):
            if previous["image_id"] == p["image_id"]:
                raise ValueError(f"image_id {p['image_id']!r} was predicted more than once")
        for p in predictions:
            gt_boxes, gt_classes, gt_ignore = ground_truth[index[p["image_id"]]]
            for c in np.unique(p["classes"]):
                if not 0 <= c < num_classes:
                    raise ValueError(
                        f"image {p['image_id']!r}: predicted class {c} not in [0, {num_classes})"
                    )
                keep = np.flatnonzero(p["classes"] == c)
                keep = keep[np.argsort(-p["scores"][keep], kind="stable")]
                gt = gt_classes == c
                tp, fp = match_detections(p["boxes"][keep], gt_boxes[gt], gt_ignore[gt], self._iou)
                for store, value in zip(per_class[c], (p["scores"][keep], tp, fp)):
                    store.append(value)
        matched = []
        for scores, tp, fp in per_class:
            scores, tp, fp = (np.concatenate(x) if x else np.zeros(0) for x in (scores, tp, fp))
            order = np.argsort(-scores, kind="stable")
            matched.append((scores[order], tp[order], fp[order]))
        return matched

    def _compute(self, predictions: List[dict]) -> Dict[str, float]:
        index, ground_truth = self._ground_truth()
        matched = self._match(predictions, index, ground_truth)
        num_classes = len(self._classes)

        num_gt = np.zeros(num_classes, dtype=np.int64)
        num_difficult = np.zeros(num_classes, dtype=np.int64)
        for _, gt_classes, gt_ignore in ground_truth:
            num_gt += np.bincount(gt_classes[~gt_ignore], minlength=num_classes)
            num_difficult += np.bincount(gt_classes[gt_ignore], minlength=num_classes)

        results, rows = OrderedDict(), []
        for c, name in enumerate(self._classes):
            if num_gt[c] == 0:
                continue
            scores, tp, fp = matched[c]
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            recall = tp / num_gt[c]
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            results[f"AP50-{name}"] = 100.0 * average_precision(recall, precision, self._use_07_metric)
            rows.append((name, results[f"AP50-{name}"], num_gt[c], num_difficult[c], len(scores)))

        if not results:
            logger.warning(f"{self._dataset_name}: no class has non-difficult ground truth; mAP50 is NaN")
            return {"mAP50": float("nan")}
        results = OrderedDict(mAP50=float(np.mean(list(results.values()))), **results)
        table = tabulate(
            rows,
            headers=["class", "AP50", "#gt", "#difficult", "#detections"],
            tablefmt="pipe",
            floatfmt=".2f",
        )
        metric = "VOC2007 11-point" if self._use_07_metric else "VOC area"
        logger.info(
            f"Per-class AP50 ({metric}) on {self._dataset_name}: mAP50 = {results['mAP50']:.2f} over "
            f"{len(rows)} classes with ground truth:\n{table}"
        )
        return dict(results)

    def _image_index(self, index: Dict[object, int], image_id: object) -> int:
        if image_id not in index:
            raise ValueError(
                f"prediction for image_id {image_id!r}, which is not in dataset {self._dataset_name!r}"
            )
        return index[image_id]


class RotatedVOCDetectionEvaluator(VOCDetectionEvaluator):
    """``VOCDetectionEvaluator`` for oriented boxes (DIOR-R, ``diorr_*``): predictions ``pred_boxes`` are
    RotatedBoxes, ground truth XYWHA_ABS (an XYXY_ABS or XYWH_ABS annotation counts as angle 0), IoU the
    exact rotated one (``rotated_pairwise_iou``), a hit at IoU >= 0.5. VOC07 11-point AP by default (as
    DIOR-R papers report it, module docstring); the trainer passes ``TEST.VOC_USE_07_METRIC``, which every
    rotated config sets True.

    ``evaluate()`` returns ``{"voc_rotated_ap50": {"mAP50": float, "AP50-<class>": float, ...}}`` in percent.
    """

    BOX_MODE = BoxMode.XYWHA_ABS
    BOX_WIDTH = 5
    RESULT_KEY = "voc_rotated_ap50"

    @staticmethod
    def _iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
        return rotated_pairwise_iou(boxes1, boxes2)

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, use_07_metric: bool = True):
        super().__init__(dataset_name, output_dir, use_07_metric)
