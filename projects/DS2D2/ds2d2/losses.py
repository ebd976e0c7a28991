"""DS2D2 distillation losses: the explicit (wavelet-band) stream and the amplifiers' prediction-level KD.

Conventions shared by every loss here:
- teacher inputs are constants (detached inside), so gradients reach only the student;
- computation is in float32 even for half inputs (AMP), and each loss is a 0-dim float32 tensor;
- loss weights (lambda_1..4) are applied by the caller;
- normalisers given as tensors stay on the device (no host synchronisation).
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ds2d2.disw import disw_maps
from ds2d2.wavelet import dwt

__all__ = [
    "explicit_band_losses",
    "explicit_loss",
    "explicit_loss_from_bands",
    "dense_cls_kd",
    "dense_box_kd",
    "probiou_loss",
    "roi_cls_kd",
    "roi_cls_divisor",
    "roi_box_kd",
    "ROI_CLS_REDUCTIONS",
]


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}"
        )


def _normaliser(num_pos: Union[Tensor, float]) -> Union[Tensor, float]:
    """max(num_pos, 1) without leaving the device when num_pos is a tensor."""
    if isinstance(num_pos, Tensor):
        if num_pos.dim() != 0:
            raise ValueError(f"num_pos must be a number or a 0-dim tensor, got shape {tuple(num_pos.shape)}")
        return num_pos.detach().float().clamp(min=1.0)
    return max(float(num_pos), 1.0)


# --------------------------------------------------------------------------------------------------
# Explicit stream
# --------------------------------------------------------------------------------------------------
def explicit_band_losses(
    student_low: Tensor, student_high: Tensor, teacher_low: Tensor, teacher_high: Tensor, weight: Tensor
) -> Tuple[Tensor, Tensor]:
    """DISW-weighted squared band differences for one level.

    Args:
        student_low, teacher_low: LL bands [B, C, h, w].
        student_high, teacher_high: high bands [B, C, 3, h, w].
        weight: DISW map [B, 1, h, w].

    Returns:
        (mean((LL_s - LL_t)^2 * W), mean((H_s - H_t)^2 * W)), means over every element.
    """
    _check_same_shape(student_low, teacher_low, "explicit low band")
    _check_same_shape(student_high, teacher_high, "explicit high bands")
    b, _, h, w = student_low.shape
    if student_high.shape != (b, student_low.shape[1], 3, h, w):
        raise ValueError(f"explicit: high bands {tuple(student_high.shape)} do not match low band "
                         f"{tuple(student_low.shape)} (expected [B, C, 3, h, w])")
    if weight.shape != (b, 1, h, w):
        raise ValueError(f"explicit: weight shape {tuple(weight.shape)} != {(b, 1, h, w)}")
    weight = weight.detach().float()
    low = ((student_low.float() - teacher_low.detach().float()).square() * weight).mean()
    high = ((student_high.float() - teacher_high.detach().float()).square() * weight.unsqueeze(2)).mean()
    return low, high


def explicit_loss(
    adapted_student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    boxes: List[Tensor],
    image_size: Tuple[int, int],
    wave: str = "haar",
) -> Tuple[Tensor, Tensor]:
    """(L_ex_low, L_ex_high) summed over levels.

    Args:
        adapted_student_feats: per level [B, C, H_l, W_l], the student features after the adapter.
        teacher_feats: per level, same shapes.
        boxes: per image [N_i, 4] ground-truth boxes, xyxy in input pixels.
        image_size: (H_in, W_in) of the padded batch.
        wave: wavelet name (see ds2d2.wavelet.dwt).
    """
    if len(adapted_student_feats) == 0 or len(adapted_student_feats) != len(teacher_feats):
        raise ValueError(
            f"explicit_loss: got {len(adapted_student_feats)} student and {len(teacher_feats)} teacher "
            f"levels; need the same non-zero number"
        )
    student_bands, teacher_bands = [], []
    for level, (student, teacher) in enumerate(zip(adapted_student_feats, teacher_feats)):
        _check_same_shape(student, teacher, f"explicit_loss level {level}")
        student_bands.append(dwt(student, wave))
        with torch.no_grad():
            teacher_bands.append(dwt(teacher, wave))
    return explicit_loss_from_bands(student_bands, teacher_bands, boxes, image_size)


def explicit_loss_from_bands(
    student_bands: Sequence[Tuple[Tensor, Tensor]],
    teacher_bands: Sequence[Tuple[Tensor, Tensor]],
    boxes: List[Tensor],
    image_size: Tuple[int, int],
) -> Tuple[Tensor, Tensor]:
    """(L_ex_low, L_ex_high) summed over levels, from each level's (LL [B, C, h, w], high [B, C, 3, h, w])
    bands (``ds2d2.wavelet.dwt``), for callers that already hold the teacher's; DISW once for all levels."""
    weights = disw_maps(boxes, image_size, [tuple(low.shape[-2:]) for low, _ in teacher_bands])
    levels = [explicit_band_losses(*s, *t, w) for s, t, w in zip(student_bands, teacher_bands, weights)]
    return torch.stack([low for low, _ in levels]).sum(), torch.stack([high for _, high in levels]).sum()


# --------------------------------------------------------------------------------------------------
# Dense detectors (RetinaNet): inputs flattened over the levels and anchors of the batch
# --------------------------------------------------------------------------------------------------
def dense_cls_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    valid: Tensor,
    num_pos: Union[Tensor, float],
    beta: float = 1.0,
) -> Tensor:
    """Quality-focal classification KD.

    sum over valid anchors and classes of BCEWithLogits(s, sigmoid(t)) * |sigmoid(s) - sigmoid(t)|^beta,
    divided by max(num_pos, 1).

    Args:
        student_logits, teacher_logits: [N, K] class logits.
        valid: [N] bool, anchors that are not ignored.
        num_pos: number of positive anchors (number or 0-dim tensor).
        beta: focusing exponent, > 0.
    """
    _check_same_shape(student_logits, teacher_logits, "dense_cls_kd logits")
    if valid.shape != student_logits.shape[:1] or valid.dtype != torch.bool:
        raise ValueError(
            f"dense_cls_kd: valid must be a bool tensor of shape {tuple(student_logits.shape[:1])}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    if beta <= 0:
        raise ValueError(f"dense_cls_kd: beta must be > 0, got {beta}")
    student = student_logits.float()
    target = teacher_logits.detach().float().sigmoid()
    bce = F.binary_cross_entropy_with_logits(student, target, reduction="none")
    loss = bce * (student.sigmoid() - target).abs().pow(beta)
    loss = torch.where(valid.unsqueeze(1), loss, torch.zeros_like(loss))
    return loss.sum() / _normaliser(num_pos)


def _giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalized IoU of matching rows of two [N, 4] xyxy tensors, [N]. Identical boxes give exactly 1."""
    x0 = torch.maximum(boxes1[:, 0], boxes2[:, 0])
    y0 = torch.maximum(boxes1[:, 1], boxes2[:, 1])
    x1 = torch.minimum(boxes1[:, 2], boxes2[:, 2])
    y1 = torch.minimum(boxes1[:, 3], boxes2[:, 3])
    intersection = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1 + area2 - intersection
    iou = intersection / union.clamp(min=eps)
    hull_w = torch.maximum(boxes1[:, 2], boxes2[:, 2]) - torch.minimum(boxes1[:, 0], boxes2[:, 0])
    hull_h = torch.maximum(boxes1[:, 3], boxes2[:, 3]) - torch.minimum(boxes1[:, 1], boxes2[:, 1])
    hull = hull_w * hull_h
    return iou - (hull - union) / hull.clamp(min=eps)


def dense_box_kd(
    student_boxes: Tensor, teacher_boxes: Tensor, weight: Tensor, num_pos: Union[Tensor, float]
) -> Tensor:
    """Box KD: sum of weight * (1 - GIoU(student, teacher)) / max(num_pos, 1).

    Args:
        student_boxes, teacher_boxes: [N, 4] decoded xyxy boxes on the same anchors.
        weight: [N] per-anchor weight, e.g. sigmoid(max teacher logit) * valid (treated as a constant).
        num_pos: number of positive anchors (number or 0-dim tensor).
    """
    _check_same_shape(student_boxes, teacher_boxes, "dense_box_kd boxes")
    if student_boxes.dim() != 2 or student_boxes.shape[1] != 4:
        raise ValueError(f"dense_box_kd: boxes must be [N, 4], got {tuple(student_boxes.shape)}")
    if weight.shape != student_boxes.shape[:1]:
        raise ValueError(
            f"dense_box_kd: weight shape {tuple(weight.shape)} != {tuple(student_boxes.shape[:1])}"
        )
    loss = 1.0 - _giou(student_boxes.float(), teacher_boxes.detach().float())
    return (loss * weight.detach().float()).sum() / _normaliser(num_pos)


def _gaussian_covariance(var_w: Tensor, var_h: Tensor, degrees: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(var_x, var_y, cov_xy) [N] of R diag(var_w, var_h) R^T, the width direction being (cos a, -sin a) and
    the height direction (sin a, cos a) for the angle a in degrees CCW."""
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    var_x = var_w * cos**2 + var_h * sin**2
    var_y = var_w * sin**2 + var_h * cos**2
    cov_xy = (var_h - var_w) * sin * cos
    return var_x, var_y, cov_xy


def probiou_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """ProbIoU loss (Llerena et al., 2021): the Hellinger distance of the boxes' Gaussians, [N] in [0, 1].

    Each rotated box (cx, cy, w, h, angle in degrees CCW) is the 2-D Gaussian of mean (cx, cy) and covariance
    R diag(w^2/12, h^2/12) R^T + eps I (the uniform rectangle's second moments; eps in pixels^2 keeps
    degenerate boxes finite). With S = (S_1 + S_2) / 2 and d the centres' difference, the Bhattacharyya
    distance is B = d^T S^-1 d / 8 + ln(det S / sqrt(det S_1 det S_2)) / 2 and the loss sqrt(1 - exp(-B)):
    0 for identical boxes, towards 1 for distant ones.

    Why this loss for box KD on rotated heads (the horizontal path uses 1 - GIoU on decoded boxes): it is
    differentiable in closed form (at identical boxes, a cone's tip like L1, its gradient is taken as 0),
    with no polygon clipping (whose exact IoU has gradients that
    vanish or jump as the intersection's vertices change); a Gaussian does not see the (w, h, a) ==
    (h, w, a + 90) and a == a + 180 ambiguities, so a student that predicts the teacher's box in another
    representation is not penalised (no angle-periodicity or edge-swap problem, unlike an L1 on the 5
    numbers); and it is bounded in [0, 1] like 1 - IoU, so one far-off anchor cannot dominate the sum. Its
    known blind spot: a square's Gaussian is isotropic, so the angle of a square box is not distilled.

    Args:
        pred: [N, 5] student boxes (gradients flow to them).
        target: [N, 5] teacher boxes (a constant: detached, as every teacher input here).
        eps: added to both variances of every covariance, in pixels^2.

    Returns:
        [N] losses, float32 (float64 when either input is float64); computed in float64 inside (the
        quadratic form of long thin boxes cancels in float32). Identical boxes give exactly 0.
    """
    _check_same_shape(pred, target, "probiou_loss boxes")
    if pred.dim() != 2 or pred.shape[1] != 5:
        raise ValueError(f"probiou_loss: boxes must be [N, 5] XYWHA, got {tuple(pred.shape)}")
    if not eps > 0:
        raise ValueError(f"probiou_loss: eps must be > 0, got {eps}")
    out_dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    p, t = pred.to(torch.float64), target.detach().to(torch.float64)
    var_w1, var_h1 = p[:, 2] ** 2 / 12 + eps, p[:, 3] ** 2 / 12 + eps  # along each box's own axes
    var_w2, var_h2 = t[:, 2] ** 2 / 12 + eps, t[:, 3] ** 2 / 12 + eps
    a1, b1, c1 = _gaussian_covariance(var_w1, var_h1, p[:, 4])
    a2, b2, c2 = _gaussian_covariance(var_w2, var_h2, t[:, 4])
    a, b, c = (a1 + a2) / 2, (b1 + b2) / 2, (c1 + c2) / 2
    # det S as a sum of positive terms (a * b - c^2 cancels for thin boxes): with phi the boxes' relative
    # angle, det(S_1 + S_2) = det S_1 + det S_2 + tr(adj(S_1) S_2), det S_i = var_w_i var_h_i
    phi = torch.deg2rad(p[:, 4] - t[:, 4])
    det1, det2 = var_w1 * var_h1, var_w2 * var_h2
    cross = torch.cos(phi) ** 2 * (var_h1 * var_w2 + var_w1 * var_h2)
    cross = cross + torch.sin(phi) ** 2 * (var_w1 * var_w2 + var_h1 * var_h2)
    det = (det1 + det2 + cross) / 4
    dx, dy = p[:, 0] - t[:, 0], p[:, 1] - t[:, 1]
    mahalanobis = (b * dx**2 - 2 * c * dx * dy + a * dy**2) / det  # d^T S^-1 d
    bhattacharyya = mahalanobis / 8 + 0.5 * (torch.log(det) - 0.5 * (torch.log(det1) + torch.log(det2)))
    squared = -torch.expm1(-bhattacharyya)  # 1 - exp(-B), exact near 0
    # B >= 0 up to rounding; at 0 (identical boxes) sqrt's slope is infinite: the loss and its gradient are 0
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    loss = torch.where(positive, torch.sqrt(safe), torch.zeros_like(squared))
    return loss.to(out_dtype)


# --------------------------------------------------------------------------------------------------
# Two-stage detectors (Faster R-CNN): on the RoIs sampled by the student's RoI head
# --------------------------------------------------------------------------------------------------
def roi_cls_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 3.0,
    divisor: Union[Tensor, float, None] = None,
) -> Tensor:
    """Sum over RoIs of KL(softmax(t/T) || softmax(s/T)) (summed over classes), times T^2, divided by
    ``divisor``.

    Args:
        student_logits, teacher_logits: [R, K+1] logits (background last, as in Detectron2).
        temperature: T > 0.
        divisor: None = R (the mean over RoIs); 1 = the plain sum over the RoIs; any other positive number
            (or 0-dim tensor), e.g. images / 2 for the authors' sum per two-image batch (see
            ``ROI_CLS_REDUCTIONS`` and docs/method.md).
    """
    _check_same_shape(student_logits, teacher_logits, "roi_cls_kd logits")
    if student_logits.dim() != 2:
        raise ValueError(f"roi_cls_kd: logits must be [R, K+1], got {tuple(student_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"roi_cls_kd: temperature must be > 0, got {temperature}")
    if divisor is None:
        divisor = max(student_logits.shape[0], 1)
    elif not isinstance(divisor, Tensor) and not divisor > 0:
        raise ValueError(f"roi_cls_kd: divisor must be > 0, got {divisor}")
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=1)
    return kl.sum() / divisor * temperature**2


# Reductions of the RoI classification KD over the RoIs that the student sampled (MODEL.DS2D2.LOSS.
# ROI_CLS_REDUCTION) -> the divisor of the summed KL, given R RoIs from ``num_images`` images on this process.
ROI_CLS_REDUCTIONS = {
    "sum_per_2_images": lambda num_rois, num_images: num_images / 2.0,
    "sum": lambda num_rois, num_images: 1.0,
    "mean": lambda num_rois, num_images: float(max(num_rois, 1)),
}


def roi_cls_divisor(reduction: str, num_rois: int, num_images: int) -> float:
    """The ``roi_cls_kd`` divisor of ``reduction`` (a key of ``ROI_CLS_REDUCTIONS``)."""
    if reduction not in ROI_CLS_REDUCTIONS:
        raise ValueError(
            f"MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION must be one of {sorted(ROI_CLS_REDUCTIONS)}, "
            f"got {reduction!r}."
        )
    if num_images < 1:
        raise ValueError(f"roi_cls_divisor: num_images must be >= 1, got {num_images}")
    return ROI_CLS_REDUCTIONS[reduction](num_rois, num_images)


def roi_box_kd(
    student_deltas: Tensor, teacher_deltas: Tensor, teacher_logits: Tensor, box_dim: int = 4
) -> Tensor:
    """L1 between student and teacher deltas of the teacher's most probable foreground class.

    Each RoI is weighted by that class's teacher probability p; the sum is divided by box_dim * sum(p).

    Args:
        student_deltas, teacher_deltas: [R, K*box_dim] (class-specific) or [R, box_dim] (class-agnostic).
        teacher_logits: [R, K+1] (background last).
        box_dim: deltas per box: 4 (dx, dy, dw, dh), or 5 for rotated boxes (and dangle, in radians).
    """
    _check_same_shape(student_deltas, teacher_deltas, "roi_box_kd deltas")
    if teacher_logits.dim() != 2 or teacher_logits.shape[0] != student_deltas.shape[0]:
        raise ValueError(f"roi_box_kd: teacher_logits {tuple(teacher_logits.shape)} do not match deltas "
                         f"{tuple(student_deltas.shape)} (expected [R, K+1])")
    num_rois, num_classes = teacher_logits.shape[0], teacher_logits.shape[1] - 1
    if student_deltas.dim() != 2 or student_deltas.shape[1] not in (box_dim, box_dim * num_classes):
        raise ValueError(
            f"roi_box_kd: deltas must be [R, {box_dim}] or [R, {box_dim * num_classes}] for {num_classes} "
            f"classes, got {tuple(student_deltas.shape)}"
        )
    foreground = F.softmax(teacher_logits.detach().float(), dim=1)[:, :num_classes]
    prob, cls = foreground.max(dim=1)
    student, teacher = student_deltas.float(), teacher_deltas.detach().float()
    if student.shape[1] != box_dim:
        rows = torch.arange(num_rois, device=student.device)
        student = student.view(num_rois, num_classes, box_dim)[rows, cls]
        teacher = teacher.view(num_rois, num_classes, box_dim)[rows, cls]
    l1 = (student - teacher).abs().sum(dim=1)
    denominator = (box_dim * prob.sum()).clamp(min=torch.finfo(torch.float32).tiny)
    return (l1 * prob).sum() / denominator
