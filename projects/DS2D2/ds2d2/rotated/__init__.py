"""Rotated boxes (cx, cy, w, h, angle in degrees CCW): Detectron2's rotated ops in pure PyTorch (``ops``)."""
from .ops import batched_nms_rotated, nms_rotated, pairwise_iou_rotated, roi_align_rotated

__all__ = ["batched_nms_rotated", "nms_rotated", "pairwise_iou_rotated", "roi_align_rotated"]
