"""CrossKD: cross-head knowledge distillation (Wang, Chen, Zheng, Li, Cheng, Hou, "CrossKD: Cross-Head
Knowledge Distillation for Object Detection", CVPR 2024; docs/baselines.md). The student's head features go
through the frozen teacher's remaining head layers, and these cross-head predictions mimic the teacher's own
predictions on the teacher's features: the KD gradient reaches the student's trunk and the first layers of its
head, never the student's own predictions, which only the ground truth supervises.

- RetinaNet: both subnets of the student's head run their first CROSS_LAYER conv blocks on the student's FPN
  features; the output of the last of them, before its ReLU (where the authors cross), is re-standardised to
  the statistics of the teacher's at the same layer (``align_statistics``), then goes through that ReLU, the
  teacher's remaining conv blocks and its ``cls_score`` / ``bbox_pred``. Classification KD: quality-focal
  (beta 1) on the non-ignored anchors; box KD: GIoU of the decoded boxes weighted by the teacher's max score
  on the non-ignored anchors; both divided by the positive anchors of the student's own loss.
- Faster R-CNN: the cross head is the teacher's whole RoI box head, run on the student's FPN features pooled
  at the RoIs the student sampled for its own loss (through the shared 1x1 adapters when the FPN widths
  differ). Classification KD: KL at temperature 3 (reduced as ``ROI_CLS_REDUCTION`` says); box KD: L1 on the
  deltas of the teacher's most probable class, weighted by its probability (DS2D2's RoI KD primitives).
- Rotated RetinaNet and rotated Faster R-CNN: the same, with 5 box deltas per anchor or class; the dense box
  KD is ProbIoU on the decoded rotated boxes and the RoI box KD the L1 on the 5 deltas (``box_kd.py``, an
  extension: docs/method.md "Rotated boxes (extension)").
- Across families (a RetinaNet teacher and a Faster R-CNN student, or the other way round) the student has no
  head layers that feed the teacher's: refused, naming ``MODEL.DS2D2.TERMS``.
The teacher's own predictions are the step's (``DistillStep.teacher_predictions``), shared with other terms.
"""
from typing import Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from ..families import RCNNFamily, RetinaNetFamily
from ..families.retinanet import per_anchor
from ..losses import ROI_CLS_REDUCTIONS, dense_cls_kd, roi_cls_divisor, roi_cls_kd
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext
from .box_kd import DENSE_BOX_KD, ROI_BOX_KD

QFL_BETA = 1.0  # the authors' quality-focal exponent (RetinaNet classification KD)
ROI_TEMPERATURE = 3.0  # the authors' KL temperature (Faster R-CNN classification KD)
ALIGN_EPS = 1e-5  # added to both variances in align_statistics
SUBNETS = (("cls_subnet", "cls_score"), ("bbox_subnet", "bbox_pred"))  # RetinaNetHead's, with predictors

Block = List[nn.Module]  # one [Conv2d, (norm), ReLU] block of a RetinaNetHead subnet


def subnet_blocks(subnet: nn.Sequential, owner: str) -> List[Block]:
    """The [Conv2d, (norm), ReLU] blocks of a RetinaNetHead subnet, as plain lists (nothing re-registered)."""
    blocks: List[Block] = []
    for module in subnet:
        if isinstance(module, nn.Conv2d) or not blocks:
            blocks.append([])
        blocks[-1].append(module)
    if any(not isinstance(b[0], nn.Conv2d) or not isinstance(b[-1], nn.ReLU) or len(b) < 2 for b in blocks):
        raise ValueError(f"CrossKD needs the {owner}'s RetinaNet subnets made of [Conv2d, (norm), ReLU] "
                         f"blocks, got {subnet}.")
    return blocks


def first_blocks(blocks: List[Block], x: Tensor, n: int) -> Tensor:
    """``x`` [B, C, H, W] through ``blocks[:n]``, the n-th without its ReLU (its pre-activation); ``x`` if
    n = 0."""
    for i, block in enumerate(blocks[:n]):
        for module in block[:-1] if i == n - 1 else block:
            x = module(x)
    return x


def last_blocks(blocks: List[Block], x: Tensor, n: int) -> Tensor:
    """The rest of the subnet after ``first_blocks``: the n-th block's ReLU (none if n = 0), then
    ``blocks[n:]``."""
    if n > 0:
        x = blocks[n - 1][-1](x)
    for block in blocks[n:]:
        for module in block:
            x = module(x)
    return x


def align_statistics(student: Tensor, teacher: Tensor, eps: float = ALIGN_EPS) -> Tensor:
    """``student`` [B, C, H, W] standardised per image and channel over (H, W), then given the mean and
    standard deviation of ``teacher`` (same shape, a constant) for that image and channel:
    (S - mean_S) / sqrt(var_S + eps) * sqrt(var_T + eps) + mean_T, with biased variances, so that equal
    statistics leave ``student`` unchanged (to float rounding). Computed in float32, returned in ``student``'s
    dtype."""
    if student.shape != teacher.shape:
        raise ValueError(f"align_statistics: student {tuple(student.shape)} != teacher "
                         f"{tuple(teacher.shape)}")
    s = student.float()
    s_var, s_mean = torch.var_mean(s, dim=(2, 3), correction=0, keepdim=True)
    with torch.no_grad():
        t_var, t_mean = torch.var_mean(teacher.float(), dim=(2, 3), correction=0, keepdim=True)
    aligned = (s - s_mean) * torch.rsqrt(s_var + eps) * (t_var + eps).sqrt() + t_mean
    return aligned.to(student.dtype)


@DISTILL_TERM_REGISTRY.register()
class CrossKD(DistillTerm):
    """``loss_crosskd_cls`` = CLS_WEIGHT * classification KD and ``loss_crosskd_box`` = BOX_WEIGHT * box KD
    between the cross-head predictions and the teacher's (see the module docstring)."""

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        crosskd = cfg.MODEL.DS2D2.CROSSKD
        self.cls_weight, self.box_weight = float(crosskd.CLS_WEIGHT), float(crosskd.BOX_WEIGHT)
        family = context.student_family
        if not context.same_kind:
            raise ValueError(
                "MODEL.DS2D2.TERMS lists CrossKD, which runs the student's head features through the "
                f"teacher's head layers: both must be of one detector family, but the teacher is a "
                f"{context.teacher_family.kind} and the student a {family.kind}. Remove CrossKD from "
                "MODEL.DS2D2.TERMS (every other term distils across families)."
            )
        self.family = family
        self.levels = list(family.levels)
        self.dense = isinstance(family, RetinaNetFamily)
        if self.dense:
            self._init_dense(cfg, context)
        elif isinstance(family, RCNNFamily):
            self._init_roi(cfg, context)
        else:
            raise ValueError(f"CrossKD supports RetinaNet and Faster R-CNN, not {family.kind}.")

    def _init_dense(self, cfg: CfgNode, context: TermContext) -> None:
        student, teacher = context.student_family.detector, context.teacher
        s_head, t_head = context.student_family.head, context.teacher_family.head
        if context.student_width != context.teacher_width:
            raise ValueError(
                "CrossKD runs the teacher's head layers on the student's head features, as wide as its FPN: "
                f"MODEL.FPN.OUT_CHANNELS must be the same in the student ({context.student_width}) and the "
                f"teacher ({context.teacher_width})."
            )
        s_blocks = {name: subnet_blocks(getattr(s_head, name), "student") for name, _ in SUBNETS}
        t_blocks = {name: subnet_blocks(getattr(t_head, name), "teacher") for name, _ in SUBNETS}
        num_convs = {len(b) for b in (*s_blocks.values(), *t_blocks.values())}
        if len(num_convs) != 1:
            raise ValueError(
                "CrossKD needs as many head convs in the student as in the teacher "
                f"(MODEL.RETINANET.NUM_CONVS); got student {len(s_blocks['cls_subnet'])}, "
                f"teacher {len(t_blocks['cls_subnet'])}."
            )
        n = num_convs.pop()
        layer = cfg.MODEL.DS2D2.CROSSKD.CROSS_LAYER
        if layer == -1:
            layer = max(n - 1, 0)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise ValueError(
                f"MODEL.DS2D2.CROSSKD.CROSS_LAYER must be -1 (NUM_CONVS - 1) or an integer in [0, {n}] "
                f"(MODEL.RETINANET.NUM_CONVS = {n}), got {cfg.MODEL.DS2D2.CROSSKD.CROSS_LAYER!r}."
            )
        self.cross_layer = layer
        s_anchors, t_anchors = student.anchor_generator.cell_anchors, teacher.anchor_generator.cell_anchors
        if len(s_anchors) != len(t_anchors) or not all(
            a.shape == b.shape and torch.equal(a.cpu(), b.cpu()) for a, b in zip(s_anchors, t_anchors)
        ):
            raise ValueError(
                "CrossKD decodes the teacher's and the cross head's box deltas on the student's anchors: "
                "MODEL.ANCHOR_GENERATOR must be the same in the student and the teacher."
            )
        if tuple(student.box2box_transform.weights) != tuple(teacher.box2box_transform.weights):
            raise ValueError(
                "CrossKD decodes the teacher's box deltas with the student's transform: "
                "MODEL.RETINANET.BBOX_REG_WEIGHTS must be the same in the student and the teacher."
            )
        # Modules owned by the student and by the frozen teacher: referenced, not submodules of the term.
        self._shared = {"student_blocks": s_blocks, "teacher_blocks": t_blocks, "teacher_head": t_head}

    def _init_roi(self, cfg: CfgNode, context: TermContext) -> None:
        ck = cfg.MODEL.DS2D2.CROSSKD
        if ck.CROSS_LAYER != -1:
            raise ValueError(
                "MODEL.DS2D2.CROSSKD.CROSS_LAYER applies to RetinaNet heads only; Faster R-CNN's cross head "
                f"is the teacher's whole RoI box head: leave it at -1, got {ck.CROSS_LAYER!r}."
            )
        if ck.ROI_CLS_REDUCTION not in ROI_CLS_REDUCTIONS:
            raise ValueError(
                f"MODEL.DS2D2.CROSSKD.ROI_CLS_REDUCTION must be one of {sorted(ROI_CLS_REDUCTIONS)}, "
                f"got {ck.ROI_CLS_REDUCTION!r}."
            )
        self.reduction = ck.ROI_CLS_REDUCTION
        t_heads = context.teacher_family.head
        if list(t_heads.box_in_features) != self.levels:
            raise ValueError(
                "CrossKD pools the student's features with the teacher's RoI head: "
                f"MODEL.ROI_HEADS.IN_FEATURES must be the same in the student ({self.levels}) and the "
                f"teacher ({list(t_heads.box_in_features)})."
            )
        adapters = context.adapters() if context.student_width != context.teacher_width else None
        # Owned by the frozen teacher / by the distiller: referenced, not submodules of the term.
        self._shared = {"teacher_heads": t_heads, "adapters": adapters}

    # ------------------------------------------------------------------------------------------------------------
    def predictions(self, step: DistillStep) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(cross-head class logits, cross-head box deltas, teacher logits, teacher deltas), the teacher's
        constants. RetinaNet: [B*A, K] and [B*A, D], image-major over every level's anchors (the rows of
        ``step.targets``); Faster R-CNN: [R, K+1] and [R, D*K] (or [R, D]) on the sampled RoIs of
        ``step.targets``; D the family's ``box_dim`` (4, or 5 for rotated boxes)."""
        cross = self._dense_cross(step) if self.dense else self._roi_cross(step)
        teacher = step.teacher_predictions()
        return cross[0], cross[1], teacher.class_logits, teacher.box_deltas

    def _dense_cross(self, step: DistillStep) -> Tuple[Tensor, Tensor]:
        n, t_head = self.cross_layer, self._shared["teacher_head"]
        dims = {"cls_subnet": self.family.num_classes, "bbox_subnet": self.family.box_dim}
        cross = {}
        for subnet, predictor in SUBNETS:
            s_blocks = self._shared["student_blocks"][subnet]
            t_blocks = self._shared["teacher_blocks"][subnet]
            predict = getattr(t_head, predictor)
            # Each pass runs every level once, in order: domain-specific norms (CycleBatchNormList) cycle
            # through the levels one call at a time.
            with torch.no_grad():
                t_held = [first_blocks(t_blocks, step.teacher_feats[f], n) for f in self.levels]
            s_held = [first_blocks(s_blocks, step.student_feats[f], n) for f in self.levels]
            aligned = [align_statistics(s, t) for s, t in zip(s_held, t_held)]
            c_out = [predict(last_blocks(t_blocks, a, n)) for a in aligned]
            cross[subnet] = per_anchor(c_out, dims[subnet]).flatten(0, 1)
        return cross["cls_subnet"], cross["bbox_subnet"]

    def _roi_cross(self, step: DistillStep) -> Tuple[Tensor, Tensor]:
        adapters = self._shared["adapters"]
        feats = step.adapted(adapters) if adapters is not None else step.student_feats
        cross = step.head_predictions(self._shared["teacher_heads"], feats)
        return cross.class_logits, cross.box_deltas

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        c_logits, c_deltas, t_logits, t_deltas = self.predictions(step)
        targets = step.targets
        if self.dense:
            valid, num_pos = targets.valid, targets.num_pos
            c_boxes = self.family.decode_boxes(c_deltas, targets)
            with torch.no_grad():
                t_boxes = self.family.decode_boxes(t_deltas, targets)
                # ignored anchors weigh 0, as in the authors' code
                box_weight = t_logits.float().sigmoid().amax(dim=1) * valid
            cls = dense_cls_kd(c_logits, t_logits, valid, num_pos, beta=QFL_BETA)
            box = DENSE_BOX_KD[self.family.box_dim](c_boxes, t_boxes, box_weight, num_pos)
        else:
            divisor = roi_cls_divisor(self.reduction, c_logits.shape[0], targets.num_images)
            cls = roi_cls_kd(c_logits, t_logits, temperature=ROI_TEMPERATURE, divisor=divisor)
            box = ROI_BOX_KD[self.family.box_dim](c_deltas, t_deltas, t_logits)
        return {"loss_crosskd_cls": self.cls_weight * cls, "loss_crosskd_box": self.box_weight * box}
