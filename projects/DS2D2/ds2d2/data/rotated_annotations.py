"""Oriented (``BoxMode.XYWHA_ABS``) annotations through Detectron2's data transforms, into ``Instances``.

Detectron2's ``DatasetMapper`` converts every box to XYXY_ABS, so an oriented box would silently become its
horizontal hull. Here each box's 4 corners go through the transforms' ``apply_coords`` (whatever the
augmentation list holds: flips, resizes, crops) and the box is the minimum-area rectangle of the moved
corners (``ds2d2.rotated.boxes``, canonical form). That is exact for flips, crops and uniform resizes (a
rectangle stays a rectangle), and for a non-uniform resize, which turns a tilted rectangle into a
parallelogram, it is the smallest rectangle holding it (MMRotate's rule: corners, transform, minimum-area
rectangle); Detectron2's own ``apply_rotated_box`` follows the height edge there instead, and exists only
for flips and resizes.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode, Instances, RotatedBoxes

from ..rotated.boxes import polygons_to_rotated_boxes, rotated_boxes_to_polygons

__all__ = ["has_rotated_boxes", "transform_rotated_boxes", "rotated_annotations_to_instances"]


def has_rotated_boxes(annotations: Sequence[dict], where: str) -> bool:
    """Whether an image's annotations are oriented (XYWHA_ABS); a mix of box modes is a ValueError naming
    ``where`` (the image file)."""
    modes = {a["bbox_mode"] for a in annotations}
    if BoxMode.XYWHA_ABS not in modes:
        return False
    if len(modes) > 1:
        raise ValueError(
            f"{where}: the annotations mix oriented (XYWHA_ABS) and other box modes "
            f"{sorted(map(str, modes))}; a dataset's boxes are all of one kind (register it with "
            "boxes='horizontal' or 'oriented')"
        )
    return True


def transform_rotated_boxes(boxes: np.ndarray, transforms: T.TransformList) -> np.ndarray:
    """Rotated boxes (N, 5) (cx, cy, w, h, angle in degrees CCW) moved by ``transforms``: their corners are
    transformed, then boxed again by the minimum-area rectangle. Returns (N, 5) float64, canonical form."""
    corners = rotated_boxes_to_polygons(torch.as_tensor(boxes, dtype=torch.float64)).numpy().reshape(-1, 2)
    moved = transforms.apply_coords(corners.copy()).reshape(-1, 8)
    return polygons_to_rotated_boxes(torch.from_numpy(np.ascontiguousarray(moved, dtype=np.float64))).numpy()


def rotated_annotations_to_instances(
    annotations: List[dict], transforms: T.TransformList, image_size: Tuple[int, int]
) -> Instances:
    """``Instances`` of an image's oriented annotations after ``transforms``: ``gt_boxes`` (RotatedBoxes,
    clipped as Detectron2 clips them: only boxes within 1 degree of horizontal), ``gt_classes``; crowd
    annotations are left out, as Detectron2's mapper leaves them out. image_size: (height, width) after the
    transforms."""
    kept = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = np.array([a["bbox"] for a in kept], dtype=np.float64).reshape(-1, 5)
    instances = Instances(image_size)
    rotated = RotatedBoxes(torch.as_tensor(transform_rotated_boxes(boxes, transforms), dtype=torch.float32))
    rotated.clip(image_size)
    instances.gt_boxes = rotated
    instances.gt_classes = torch.tensor([a["category_id"] for a in kept], dtype=torch.int64)
    return instances
