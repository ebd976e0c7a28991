"""Patch detections -> full-image detections (the DOTA devkit's ``ResultMerge*.py``).

Horizontal boxes (Task 2) are (N, 4) float64 xyxy in pixels; rotated boxes (Task 1) are (N, 5) float64
(cx, cy, w, h, angle): Detectron2's XYWHA_ABS, angle in degrees counter-clockwise on screen
(ds2d2.rotated.boxes states the convention). Scores are (N,) float64, classes (N,) int64 (0-based contiguous
ids). A patch box maps to the original image as ``p / patch_scale + patch_origin`` (origin: the patch's
top-left corner in original-image pixels; scale: patch pixels per original pixel); a rotated box's centre and
size map so, its angle stays.

An image's detections from all its patches are merged with class-wise greedy NMS: horizontal boxes clipped to
the image at IoU 0.3 (the devkit's ``ResultMerge.py``), rotated boxes, which clipping would deform, unclipped
at rotated IoU 0.1 (the devkit's ``ResultMerge_multi_process.py``, its polygon merge ``mergebypoly``; MMRotate
merges DOTA patches at 0.1 too). Boxes wholly outside the image (in a patch's padding) are dropped.
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import nms

from ..rotated.ops import batched_nms_rotated

__all__ = [
    "DEFAULT_NMS_THRESH",
    "DEFAULT_ROTATED_NMS_THRESH",
    "ImageDetections",
    "patch_to_image",
    "rotated_patch_to_image",
    "boxes_to_image",
    "merge_detections",
    "merge_rotated_detections",
    "merge_detections_of_kind",
]

DEFAULT_NMS_THRESH = 0.3  # Task 2 (horizontal boxes)
DEFAULT_ROTATED_NMS_THRESH = 0.1  # Task 1 (rotated boxes)


class ImageDetections(NamedTuple):
    """One image's detections: boxes (N, 4) float64 xyxy pixels or (N, 5) XYWHA_ABS, scores (N,), classes
    (N,) int64 (0-based)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def patch_to_image(boxes: np.ndarray, origin: Sequence[float], scale: float) -> np.ndarray:
    """Boxes (N, 4) xyxy in patch pixels -> original image pixels: ``p / scale + origin``."""
    offset = np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.float64)
    return np.asarray(boxes, dtype=np.float64) / scale + offset


def rotated_patch_to_image(boxes: np.ndarray, origin: Sequence[float], scale: float) -> np.ndarray:
    """Rotated boxes (N, 5) XYWHA in patch pixels -> original image pixels (centre ``c / scale + origin``,
    size ``/ scale``, same angle)."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 5)
    out[:, :4] /= scale
    out[:, :2] += np.asarray(origin, dtype=np.float64)
    return out


def boxes_to_image(boxes: np.ndarray, origin: Sequence[float], scale: float) -> np.ndarray:
    """Patch boxes -> original image pixels, by their kind: (N, 4) xyxy as ``patch_to_image``, (N, 5) XYWHA
    as ``rotated_patch_to_image``."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
        raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (N, 4) xyxy or (N, 5) XYWHA")
    to_image = rotated_patch_to_image if boxes.shape[1] == 5 else patch_to_image
    return to_image(boxes, origin, scale)


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS (plain IoU, suppress above ``thresh``) of boxes (N, 4); ties in score keep the larger box
    first (a whole object over a part of it cut by a patch border), then the earlier one. Kept indices, best
    first.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((np.arange(len(boxes)), -areas, -scores))
    # torchvision's NMS sorts scores stably, so equal scores keep the order given here
    keep = nms(torch.from_numpy(boxes[order]), torch.from_numpy(scores[order]), thresh).numpy()
    return order[keep]


def merge_detections(
    parts: Sequence[ImageDetections], width: int, height: int, nms_thresh: float = DEFAULT_NMS_THRESH
) -> ImageDetections:
    """One image's detections from all its patches (already in image pixels): clip to the (width, height)
    image, drop boxes left empty (they lay in a patch's padding), class-wise NMS; sorted by decreasing score.
    """
    boxes = np.concatenate([p.boxes.reshape(-1, 4) for p in parts] + [np.zeros((0, 4))]).astype(np.float64)
    scores = np.concatenate([p.scores for p in parts] + [np.zeros(0)]).astype(np.float64)
    classes = np.concatenate([p.classes for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
    per_class = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    keep = np.concatenate(
        [idx[_nms(boxes[idx], scores[idx], nms_thresh)] for idx in per_class] + [np.zeros(0, int)]
    )
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return ImageDetections(boxes[keep], scores[keep], classes[keep])


def _rotated_bounds(boxes: np.ndarray) -> np.ndarray:
    """Bounding rectangles (N, 4) xyxy of rotated boxes (N, 5)."""
    theta = np.deg2rad(boxes[:, 4])
    half_w = 0.5 * (np.abs(np.cos(theta)) * boxes[:, 2] + np.abs(np.sin(theta)) * boxes[:, 3])
    half_h = 0.5 * (np.abs(np.sin(theta)) * boxes[:, 2] + np.abs(np.cos(theta)) * boxes[:, 3])
    cx, cy = boxes[:, 0], boxes[:, 1]
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1)


def merge_rotated_detections(
    parts: Sequence[ImageDetections], width: int, height: int, nms_thresh: float = DEFAULT_ROTATED_NMS_THRESH
) -> ImageDetections:
    """One image's rotated detections from all its patches (boxes (N, 5), already in image pixels): drop
    empty boxes and those wholly outside the (width, height) image, then class-wise rotated NMS (exact IoU;
    equal scores keep the larger box first, then the earlier one); sorted by decreasing score. Not clipped."""
    boxes = np.concatenate([p.boxes.reshape(-1, 5) for p in parts] + [np.zeros((0, 5))]).astype(np.float64)
    scores = np.concatenate([p.scores for p in parts] + [np.zeros(0)]).astype(np.float64)
    classes = np.concatenate([p.classes for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    bounds = _rotated_bounds(boxes)
    inside = (bounds[:, 2] > 0) & (bounds[:, 0] < width) & (bounds[:, 3] > 0) & (bounds[:, 1] < height)
    valid = inside & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
    order = np.lexsort((np.arange(len(boxes)), -boxes[:, 2] * boxes[:, 3], -scores))
    # batched_nms_rotated sorts scores stably, so equal scores keep the order given here
    keep = batched_nms_rotated(
        torch.from_numpy(boxes[order]), torch.from_numpy(scores[order]), torch.from_numpy(classes[order]),
        nms_thresh,
    ).numpy()
    keep = order[keep]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return ImageDetections(boxes[keep], scores[keep], classes[keep])


def merge_detections_of_kind(
    parts: Sequence[ImageDetections], width: int, height: int, rotated: bool,
    nms_thresh: Optional[float] = None,
) -> ImageDetections:
    """``merge_rotated_detections`` (boxes (N, 5), Task 1) or ``merge_detections`` (boxes (N, 4), Task 2) at
    ``nms_thresh``, by default the devkit's IoU of that kind (0.1 rotated, 0.3 horizontal)."""
    if rotated:
        thresh = DEFAULT_ROTATED_NMS_THRESH if nms_thresh is None else nms_thresh
        return merge_rotated_detections(parts, width, height, thresh)
    return merge_detections(parts, width, height, DEFAULT_NMS_THRESH if nms_thresh is None else nms_thresh)
