"""Box KD by box kind: the prediction-KD box losses of DS2D2's implicit stream and of CrossKD, chosen by the
family's ``box_dim`` (4: horizontal xyxy, 5: rotated XYWHA), so that the terms read the same for both kinds.

- Dense (RetinaNet): horizontal boxes keep the authors' GIoU (``losses.dense_box_kd``); rotated boxes use
  ``dense_rotated_box_kd``, the same sum of per-anchor weights times a box distance over the positive anchors,
  with the ProbIoU loss (``losses.probiou_loss``: the boxes as 2-D Gaussians, so the angle, the size and the
  centre enter one smooth, differentiable distance, with no polygon clipping) in place of 1 - GIoU (an
  extension, docs/method.md "Rotated boxes (extension)").
- RoI (Faster R-CNN): L1 on the deltas of the teacher's most probable foreground class, weighted by its
  probability (``losses.roi_box_kd`` for 4 deltas; ``roi_rotated_box_kd`` for the 5 rotated deltas, the angle
  delta in radians counted like the others).
"""
from typing import Callable, Dict, Union

import torch
import torch.nn.functional as F
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


def roi_rotated_box_kd(student_deltas: Tensor, teacher_deltas: Tensor, teacher_logits: Tensor) -> Tensor:
    """L1 between the student's and the teacher's 5 deltas of the teacher's most probable foreground class,
    each RoI weighted by that class's teacher probability p, the sum divided by 5 * sum(p); a 0-dim float32
    tensor whose gradient reaches ``student_deltas`` only.

    Args:
        student_deltas, teacher_deltas: [R, 5K] (class-specific) or [R, 5] (class-agnostic).
        teacher_logits: [R, K+1] (background last).
    """
    num_rois, num_classes = teacher_logits.shape[0], teacher_logits.shape[1] - 1
    if student_deltas.shape != teacher_deltas.shape or student_deltas.dim() != 2 \
            or student_deltas.shape[0] != num_rois \
            or student_deltas.shape[1] not in (ROTATED_BOX_DIM, ROTATED_BOX_DIM * num_classes):
        raise ValueError(
            f"roi_rotated_box_kd: deltas must both be [R, 5] or [R, {ROTATED_BOX_DIM * num_classes}] for "
            f"{num_classes} classes and R = {num_rois} RoIs, got {tuple(student_deltas.shape)} and "
            f"{tuple(teacher_deltas.shape)}"
        )
    prob, cls = F.softmax(teacher_logits.detach().float(), dim=1)[:, :num_classes].max(dim=1)
    student, teacher = student_deltas.float(), teacher_deltas.detach().float()
    if student.shape[1] != ROTATED_BOX_DIM:
        rows = torch.arange(num_rois, device=student.device)
        student = student.view(num_rois, num_classes, ROTATED_BOX_DIM)[rows, cls]
        teacher = teacher.view(num_rois, num_classes, ROTATED_BOX_DIM)[rows, cls]
    l1 = (student - teacher).abs().sum(dim=1)
    denominator = (ROTATED_BOX_DIM * prob.sum()).clamp(min=torch.finfo(torch.float32).tiny)
    return (l1 * prob).sum() / denominator


# box_dim -> the box KD of that kind (see the module docstring)
DENSE_BOX_KD: Dict[int, Callable[..., Tensor]] = {4: dense_box_kd, ROTATED_BOX_DIM: dense_rotated_box_kd}
ROI_BOX_KD: Dict[int, Callable[..., Tensor]] = {4: roi_box_kd, ROTATED_BOX_DIM: roi_rotated_box_kd}
