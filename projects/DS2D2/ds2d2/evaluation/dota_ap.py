"""The DOTA devkit's per-class AP rules, whatever the boxes (Task 1: polygons, Task 2: horizontal boxes).

Per class, over all images: each image's detections, by decreasing score, go to the ground truth of that
class (difficult objects included) with which they have the highest IoU; above ``iou_thresh`` (strictly) a
detection is a hit if that object is not difficult and not yet taken, a false positive if it is taken, and
neither if it is difficult; otherwise it is a false positive. Recall counts the non-difficult objects. AP is
VOC07 11-point by default (the devkit's), the area under the interpolated PR curve with
``use_07_metric=False``; a class without non-difficult objects gets NaN. Equal scores keep image order, then
each image's order.
"""

import math
from typing import Callable, Dict, Mapping, NamedTuple, Sequence, Tuple

import numpy as np

from .voc import average_precision

__all__ = ["Detections", "Objects", "devkit_average_precision"]


class Detections(NamedTuple):
    """One image's detections: boxes (N, ...) as the IoU function takes them, scores (N,), classes (N,)
    int64 (0-based)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


class Objects(NamedTuple):
    """One image's ground truth: boxes (M, ...), classes (M,) int64, difficult (M,) bool."""

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


IouFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (N, ...), (M, ...) -> (N, M)


def _match_image(
    dets: Detections, gt: Objects, cls: int, iou: IouFunction, iou_thresh: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, tp, fp) of one image's detections of class ``cls``, matched greedily by decreasing score."""
    d = np.flatnonzero(dets.classes == cls)
    d = d[np.argsort(-dets.scores[d], kind="stable")]
    g = gt.classes == cls
    gboxes, gdifficult = gt.boxes[g], gt.difficult[g]
    tp, fp = np.zeros(len(d)), np.zeros(len(d))
    if len(gboxes) == 0:
        fp[:] = 1.0
        return dets.scores[d], tp, fp
    ious = iou(dets.boxes[d], gboxes)
    taken = np.zeros(len(gboxes), dtype=bool)
    for k, j in enumerate(ious.argmax(1)):
        if ious[k, j] <= iou_thresh:
            fp[k] = 1.0
        elif gdifficult[j]:
            continue
        elif taken[j]:
            fp[k] = 1.0
        else:
            tp[k], taken[j] = 1.0, True
    return dets.scores[d], tp, fp


def devkit_average_precision(
    detections: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: Sequence[str],
    iou: IouFunction,
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
) -> Dict[str, float]:
    """Per-class AP in [0, 1] (NaN for a class without non-difficult objects) over the images of
    ``ground_truth``.

    detections: image -> (boxes, scores, classes) (e.g. ``Detections``); ground_truth: image -> (boxes,
    classes, difficult) (e.g. ``Objects``). A detection on an image without ground truth is an error, as
    in the devkit."""
    unknown = sorted(set(detections) - set(ground_truth))
    if unknown:
        raise KeyError(f"Detections for images without ground truth: {unknown[:5]}")
    gts = {stem: Objects(*gt) for stem, gt in ground_truth.items()}
    dets = {stem: Detections(*det) for stem, det in detections.items()}
    aps = {}
    for cls, name in enumerate(classes):
        npos = sum(int(np.sum((gt.classes == cls) & ~gt.difficult)) for gt in gts.values())
        if npos == 0:
            aps[name] = math.nan
            continue
        matched = [_match_image(dets[s], gt, cls, iou, iou_thresh) for s, gt in gts.items() if s in dets]
        scores, tp, fp = (np.concatenate([m[i] for m in matched] + [np.zeros(0)]) for i in range(3))
        order = np.argsort(-scores, kind="stable")
        tp, fp = np.cumsum(tp[order]), np.cumsum(fp[order])
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = average_precision(tp / npos, precision, use_07_metric)
    return aps
