"""The post-processing that stays outside the ONNX graph, in NumPy, step for step as Detectron2 v0.6 does it
at test time (float32 throughout, so the detections match PyTorch's to rounding).

- ``nms`` / ``batched_nms``: torchvision's greedy NMS (a box is suppressed when its IoU with a kept,
  higher-scoring box is > the threshold), run per class (``batched_nms``), results best first; rotated boxes
  ``[N, 5]`` go to ``rotated_ops.batched_nms_rotated`` (exact rotated IoU, the same rule).
- ``dense_detections``: RetinaNet's ``inference_single_image`` (and RotatedRetinaNet's): per level, scores >
  threshold, the ``topk`` best (anchor, class) pairs; then class-wise NMS over all levels and the best
  ``max_det``.
- ``roi_detections``: Faster R-CNN's ``fast_rcnn_inference_single_image`` (and its rotated twin): drop
  non-finite rows, clip the class boxes to the image, scores > threshold, class-wise NMS, the best
  ``max_det``.
- ``rotated_proposals``: RRPN's ``find_top_rrpn_proposals`` after the graph's per-level top-k and decoding:
  drop non-finite boxes, clip, drop small ones, NMS per level, the best ``post_topk``.
- ``rescale``: ``detector_postprocess``: from model-input pixels to the original image's, clipped to it,
  empty boxes dropped.

Boxes are ``[N, 4]`` (x0, y0, x1, y1) or, for rotated detectors, ``[N, 5]`` (cx, cy, w, h, angle in degrees
counter-clockwise on screen; Detectron2's ``RotatedBoxes``, which it clips only when nearly horizontal: see
``clip_rotated``) float32 pixels; scores ``[N]`` float32; classes ``[N]`` int64.
"""
import math
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from .rotated_ops import batched_nms_rotated


class Detections(NamedTuple):
    boxes: np.ndarray  # [N, 4] float32, x0 y0 x1 y1; or [N, 5] rotated: cx cy w h angle
    scores: np.ndarray  # [N] float32, best first
    classes: np.ndarray  # [N] int64, 0..K-1

    @classmethod
    def empty(cls, box_dim: int = 4) -> "Detections":
        return cls(np.zeros((0, box_dim), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

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
    """``nms`` within each class (rotated boxes [N, 5]: ``batched_nms_rotated``); the kept indices of all
    classes, best first."""
    if boxes.shape[1] == 5:
        return batched_nms_rotated(boxes, scores, classes, iou_thresh)
    per_class = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    keep = [idx[nms(boxes[idx], scores[idx], iou_thresh)] for idx in per_class]
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return keep[_descending(scores[keep])]


def dense_detections(
    level_scores: Sequence[np.ndarray], level_boxes: Sequence[np.ndarray], score_thresh: float,
    topk: int, nms_thresh: float, max_det: int,
) -> Detections:
    """RetinaNet: ``level_scores[i]`` ``[Ai, K]`` (sigmoid), ``level_boxes[i]`` ``[Ai, 4]`` (all anchors
    decoded; ``[Ai, 5]`` for a RotatedRetinaNet) -> the detections in model-input pixels."""
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for scores, boxes in zip(level_scores, level_boxes):
        flat = scores.reshape(-1)
        candidates = np.flatnonzero(flat > score_thresh)
        candidates = candidates[_top(flat[candidates], topk)]
        anchors, classes = np.divmod(candidates, scores.shape[1])
        parts.append((boxes[anchors], flat[candidates], classes.astype(np.int64)))
    dets = Detections(*(np.concatenate(column) for column in zip(*parts)))
    return dets.take(batched_nms(dets.boxes, dets.scores, dets.classes, nms_thresh)[:max_det])


CLIP_ANGLE_THRESH = 1.0  # degrees: rotated boxes this close to horizontal are clipped (Detectron2's rule)


def clip_rotated(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Detectron2's ``RotatedBoxes.clip`` of rotated boxes ``[N, 5]``: angles normalised to [-180, 180);
    boxes within ``CLIP_ANGLE_THRESH`` of horizontal clipped as horizontal boxes (centre moved, sides
    shrunk), the others left whole (clipping would deform them)."""
    out = boxes.copy()
    out[:, 4] = np.remainder(out[:, 4] + np.float32(180), np.float32(360)) - np.float32(180)
    near = np.abs(out[:, 4]) <= CLIP_ANGLE_THRESH
    cx, cy, w, h = (out[near, k] for k in range(4))
    x0, x1 = (np.clip(v, 0, width).astype(np.float32) for v in (cx - w / 2, cx + w / 2))
    y0, y1 = (np.clip(v, 0, height).astype(np.float32) for v in (cy - h / 2, cy + h / 2))
    out[near, 0], out[near, 1] = (x0 + x1) / 2, (y0 + y1) / 2
    out[near, 2], out[near, 3] = np.minimum(w, x1 - x0), np.minimum(h, y1 - y0)
    return out


def clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Boxes ``[..., 4]`` clamped to [0, width] x [0, height]; rotated boxes ``[..., 5]`` by
    ``clip_rotated``."""
    if boxes.shape[-1] == 5:
        return clip_rotated(boxes.reshape(-1, 5), height, width).reshape(boxes.shape)
    limits = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(boxes, np.float32(0), limits)


def roi_detections(
    class_probs: np.ndarray, class_boxes: np.ndarray, image_size: Tuple[int, int], score_thresh: float,
    nms_thresh: float, max_det: int, box_dim: int = 4,
) -> Detections:
    """Faster R-CNN: ``class_probs`` ``[R, K + 1]`` (background last), ``class_boxes`` ``[R, box_dim K]``
    (or ``[R, box_dim]`` class-agnostic) decoded in model-input pixels, ``box_dim`` 4 (x0 y0 x1 y1) or 5
    (rotated); ``image_size`` the resized image's (h, w)."""
    valid = np.isfinite(class_boxes).all(axis=1) & np.isfinite(class_probs).all(axis=1)
    scores = class_probs[valid, :-1]
    boxes = clip(class_boxes[valid].reshape(len(scores), -1, box_dim), *image_size)
    rows, classes = np.nonzero(scores > score_thresh)
    boxes = boxes[rows, classes if boxes.shape[1] > 1 else 0]
    dets = Detections(boxes, scores[rows, classes], classes.astype(np.int64))
    return dets.take(batched_nms(dets.boxes, dets.scores, dets.classes, nms_thresh)[:max_det])


def rotated_proposals(
    level_scores: Sequence[np.ndarray], level_boxes: Sequence[np.ndarray], image_size: Tuple[int, int],
    nms_thresh: float, post_topk: int, min_size: float,
) -> np.ndarray:
    """RRPN at test time after the graph: per level the best objectness logits ``[k_i]`` and their decoded
    boxes ``[k_i, 5]`` -> the proposals ``[R, 5]``, best first: non-finite ones dropped, clipped
    (``clip_rotated``), sides > ``min_size`` kept, rotated NMS within each level, the best ``post_topk``."""
    levels = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(level_scores)])
    scores, boxes = np.concatenate(level_scores), np.concatenate(level_boxes)
    valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    boxes = clip_rotated(boxes[valid], *image_size)
    scores, levels = scores[valid], levels[valid]
    big = (boxes[:, 2] > min_size) & (boxes[:, 3] > min_size)
    boxes, scores, levels = boxes[big], scores[big], levels[big]
    return boxes[batched_nms_rotated(boxes, scores, levels, nms_thresh)[:post_topk]]


def scale_rotated(boxes: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Detectron2's ``RotatedBoxes.scale``: rotated boxes ``[N, 5]`` under the scaling (scale_x, scale_y),
    the rectangle fitted to the sheared parallelogram when the two differ."""
    out = boxes.copy()
    out[:, 0] *= scale_x
    out[:, 1] *= scale_y
    theta = out[:, 4] * math.pi / 180.0
    cos, sin = np.cos(theta), np.sin(theta)
    out[:, 2] *= np.sqrt((scale_x * cos) ** 2 + (scale_y * sin) ** 2)
    out[:, 3] *= np.sqrt((scale_x * sin) ** 2 + (scale_y * cos) ** 2)
    out[:, 4] = np.arctan2(scale_x * sin, scale_y * cos) * 180 / math.pi
    return out


def rescale(dets: Detections, input_size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
    """From the model input's (h, w) pixels to ``output_size`` (h, w): scaled, clipped, empties dropped."""
    scale_x, scale_y = output_size[1] / input_size[1], output_size[0] / input_size[0]
    if dets.boxes.shape[1] == 5:
        boxes = clip_rotated(scale_rotated(dets.boxes, scale_x, scale_y), *output_size)
        nonempty = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        return Detections(boxes, dets.scores, dets.classes).take(nonempty)
    boxes = dets.boxes.copy()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clip(boxes, *output_size)
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return Detections(boxes, dets.scores, dets.classes).take(nonempty)
