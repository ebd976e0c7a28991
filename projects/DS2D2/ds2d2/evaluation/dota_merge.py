"""Patch detections -> full-image detections (the DOTA devkit's ``ResultMerge.py`` for horizontal boxes).

Boxes are (N, 4) float64 xyxy in pixels, scores (N,) float64, classes (N,) int64 (0-based contiguous ids).
A patch box maps to the original image as ``p / patch_scale + patch_origin`` (origin: the patch's top-left
corner in original-image pixels; scale: patch pixels per original pixel). An image's boxes from all its
patches are clipped to its (width, height) and merged with class-wise NMS (IoU 0.3 by default, the devkit's
value).
"""

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torchvision.ops import nms

__all__ = ["DEFAULT_NMS_THRESH", "ImageDetections", "patch_to_image", "merge_detections"]

DEFAULT_NMS_THRESH = 0.3


class ImageDetections(NamedTuple):
    """One image's detections: boxes (N, 4) float64 xyxy pixels, scores (N,), classes (N,) int64 (0-based)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def patch_to_image(boxes: np.ndarray, origin: Sequence[float], scale: float) -> np.ndarray:
    """Boxes (N, 4) xyxy in patch pixels -> original image pixels: ``p / scale + origin``."""
    offset = np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.float64)
    return np.asarray(boxes, dtype=np.float64) / scale + offset


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
