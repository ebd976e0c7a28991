"""The post-processing that stays outside the ONNX graph, in NumPy, step for step as Detectron2 v0.6 does it
at test time (float32 throughout, so the detections match PyTorch's to rounding).

- ``nms`` / ``batched_nms``: torchvision's greedy NMS (a box is suppressed when its IoU with a kept,
  higher-scoring box is > the threshold), run per class (``batched_nms``), results best first.
- ``dense_detections``: RetinaNet's ``inference_single_image``: per level, scores > threshold, the
  ``topk`` best (anchor, class) pairs; then class-wise NMS over all levels and the best ``max_det``.
- ``roi_detections``: Faster R-CNN's ``fast_rcnn_inference_single_image``: drop non-finite rows, clip the
  class boxes to the image, scores > threshold, class-wise NMS, the best ``max_det``.
- ``rescale``: ``detector_postprocess``: from model-input pixels to the original image's, clipped to it,
  empty boxes dropped.

Boxes are ``[N, 4]`` (x0, y0, x1, y1) float32 pixels; scores ``[N]`` float32; classes ``[N]`` int64.
"""
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np


class Detections(NamedTuple):
    boxes: np.ndarray  # [N, 4] float32, x0 y0 x1 y1
    scores: np.ndarray  # [N] float32, best first
    classes: np.ndarray  # [N] int64, 0..K-1

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.classes[index])


NMS_BLOCK = 512  # rows of the IoU matrix computed at a time (memory: NMS_BLOCK x boxes)


def _descending(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (a partition first: linear in len(scores))."""
    if len(scores) > k:
        candidates = np.argpartition(-scores, k - 1)[:k]
        return candidates[_descending(scores[candidates])]
    return _descending(scores)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [m, 4] with every box of ``b`` [n, 4]: [m, n], float32 as torchvision."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.maximum(np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0]), np.float32(0))
    h = np.maximum(np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1]), np.float32(0))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 (two empty boxes) is not an overlap
        return inter / (area_a[:, None] + area_b - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best first. The IoU rows are computed a block at a time."""
    order = _descending(scores)
    ordered = boxes[order]
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for start in range(0, len(order), NMS_BLOCK):
        stop = min(start + NMS_BLOCK, len(order))
        # compared in double, as torchvision compares its float IoU with the double threshold
        overlaps = _iou(ordered[start:stop], ordered[start:]).astype(np.float64) > iou_thresh
        for i in range(start, stop):
            if not suppressed[i]:
                keep.append(order[i])
                suppressed[i + 1:] |= overlaps[i - start, i + 1 - start:]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thresh: float) -> np.ndarray:
    """``nms`` within each class; the kept indices of all classes, best first."""
    per_class = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    keep = [idx[nms(boxes[idx], scores[idx], iou_thresh)] for idx in per_class]
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return keep[_descending(scores[keep])]


def dense_detections(
    level_scores: Sequence[np.ndarray], level_boxes: Sequence[np.ndarray], score_thresh: float,
    topk: int, nms_thresh: float, max_det: int,
) -> Detections:
    """RetinaNet: ``level_scores[i]`` ``[Ai, K]`` (sigmoid), ``level_boxes[i]`` ``[Ai, 4]`` (all anchors
    decoded) -> the detections in model-input pixels."""
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for scores, boxes in zip(level_scores, level_boxes):
        flat = scores.reshape(-1)
        candidates = np.flatnonzero(flat > score_thresh)
        candidates = candidates[_top(flat[candidates], topk)]
        anchors, classes = np.divmod(candidates, scores.shape[1])
        parts.append((boxes[anchors], flat[candidates], classes.astype(np.int64)))
    dets = Detections(*(np.concatenate(column) for column in zip(*parts)))
    return dets.take(batched_nms(dets.boxes, dets.scores, dets.classes, nms_thresh)[:max_det])


def clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Boxes ``[..., 4]`` clamped to [0, width] x [0, height]."""
    limits = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(boxes, np.float32(0), limits)


def roi_detections(
    class_probs: np.ndarray, class_boxes: np.ndarray, image_size: Tuple[int, int], score_thresh: float,
    nms_thresh: float, max_det: int,
) -> Detections:
    """Faster R-CNN: ``class_probs`` ``[R, K + 1]`` (background last), ``class_boxes`` ``[R, 4K]`` (or
    ``[R, 4]`` class-agnostic) decoded in model-input pixels; ``image_size`` the resized image's (h, w)."""
    valid = np.isfinite(class_boxes).all(axis=1) & np.isfinite(class_probs).all(axis=1)
    scores = class_probs[valid, :-1]
    boxes = clip(class_boxes[valid].reshape(len(scores), -1, 4), *image_size)
    rows, classes = np.nonzero(scores > score_thresh)
    boxes = boxes[rows, classes if boxes.shape[1] > 1 else 0]
    dets = Detections(boxes, scores[rows, classes], classes.astype(np.int64))
    return dets.take(batched_nms(dets.boxes, dets.scores, dets.classes, nms_thresh)[:max_det])


def rescale(dets: Detections, input_size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
    """From the model input's (h, w) pixels to ``output_size`` (h, w): scaled, clipped, empties dropped."""
    boxes = dets.boxes.copy()
    boxes[:, 0::2] *= output_size[1] / input_size[1]
    boxes[:, 1::2] *= output_size[0] / input_size[0]
    boxes = clip(boxes, *output_size)
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return Detections(boxes, dets.scores, dets.classes).take(nonempty)
