"""Box KD by box kind: the prediction-KD box losses of DS2D2's implicit stream and of CrossKD, chosen by the
family's ``box_dim`` (4: horizontal xyxy, 5: rotated XYWHA), so that the terms read the same for both kinds.

- Dense (RetinaNet): horizontal boxes keep the authors' GIoU (``losses.dense_box_kd``); rotated boxes use
  ``dense_rotated_box_kd``, the same sum of per-anchor weights times a box distance over the positive anchors,
  with the ProbIoU loss (``losses.probiou_loss``: the boxes as 2-D Gaussians, so the angle, the size and the
  centre enter one smooth, differentiable distance, with no polygon clipping) in place of 1 - GIoU (an
  extension, docs/method.md "Rotated boxes (extension)").
- RoI (Faster R-CNN): L1 on the deltas of the teacher's most probable foreground class, weighted by its
  probability (``losses.roi_box_kd``, with ``box_dim=5`` for the rotated deltas: the angle delta, in radians,
  counted like the others).
"""
from functools import partial
from typing import Callable, Dict, Union

import torch
from torch import Tensor

from ..losses import dense_box_kd, probiou_loss, roi_box_kd

ROTATED_BOX_DIM = 5  # (cx, cy, w, h, angle) and its deltas (dx, dy, dw, dh, dangle)


def dense_rotated_box_kd(
    student_boxes: Tensor, teacher_boxes: Tensor, weight: Tensor, num_pos: Union[Tensor, float]
) -> Tensor:
    """sum over anchors of weight * probiou_loss(student, teacher), divided by max(num_pos, 1); a 0-dim
    float32 tensor whose gradient reaches ``student_boxes`` only.

    Args:
        student_boxes, teacher_boxes: [N, 5] decoded XYWHA boxes (angle in degrees) on the same anchors.
        weight: [N] per-anchor weight, e.g. sigmoid(max teacher logit) (treated as a constant).
        num_pos: the number of positive anchors (a number or a 0-dim tensor).
    """
    if student_boxes.shape != teacher_boxes.shape or student_boxes.dim() != 2 \
            or student_boxes.shape[1] != ROTATED_BOX_DIM:
        raise ValueError(f"dense_rotated_box_kd: boxes must both be [N, 5], got {tuple(student_boxes.shape)} "
                         f"and {tuple(teacher_boxes.shape)}")
    if weight.shape != student_boxes.shape[:1]:
        raise ValueError(f"dense_rotated_box_kd: weight shape {tuple(weight.shape)} != "
                         f"{tuple(student_boxes.shape[:1])}")
    loss = probiou_loss(student_boxes.float(), teacher_boxes.detach().float())
    divisor = torch.as_tensor(num_pos, dtype=torch.float32, device=loss.device).detach().clamp(min=1.0)
    return (loss * weight.detach().float()).sum() / divisor


# box_dim -> the box KD of that kind (see the module docstring)
DENSE_BOX_KD: Dict[int, Callable[..., Tensor]] = {4: dense_box_kd, ROTATED_BOX_DIM: dense_rotated_box_kd}
ROI_BOX_KD: Dict[int, Callable[..., Tensor]] = {
    4: roi_box_kd, ROTATED_BOX_DIM: partial(roi_box_kd, box_dim=ROTATED_BOX_DIM)}
