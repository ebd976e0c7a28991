"""PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
Coefficient", NeurIPS 2022): each channel of the student's and of the teacher's FPN level is standardised over
the batch and the positions, and the student's is pulled to the teacher's with an MSE halved, i.e. one minus
their Pearson correlation, averaged over channels. Magnitudes no longer matter, so no adapter is used and the
FPN widths must be equal. Keys ``MODEL.DS2D2.PKD.{WEIGHT, IN_FEATURES}`` (docs/baselines.md)."""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor

from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext

EPS = 1e-6  # added to each channel's standard deviation: a constant channel standardises to 0, not NaN


def positive_weight(value: object, key: str) -> float:
    """``value`` as a float when it is a finite number > 0, else a ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{key} must be a finite number > 0, got {value!r}.")
    return float(value)


def select_levels(requested: List[str], key: str, context: TermContext, default: Optional[int]) -> List[str]:
    """The FPN levels a term distils: ``requested``, or (empty) the student's first ``default`` levels by
    stride (None: all of them). Each must exist in the student and the teacher with one stride, else a
    ValueError naming ``key``."""
    s_shapes, t_shapes = context.student_shapes, context.teacher_shapes
    levels = list(requested) or sorted(s_shapes, key=lambda f: s_shapes[f].stride)[:default]
    bad = [f for f in levels
           if f not in s_shapes or f not in t_shapes or s_shapes[f].stride != t_shapes[f].stride]
    if bad or not levels or len(set(levels)) != len(levels):
        raise ValueError(
            f"{key} must list distinct FPN levels present with the same stride in the student "
            f"({sorted(s_shapes)}) and the teacher ({sorted(t_shapes)}); got {levels}."
        )
    return levels


def standardize(x: Tensor, eps: float = EPS) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]: each channel minus its mean, over its (population) standard deviation
    + ``eps``, both computed over (B, H, W)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True).sqrt()
    return (x - mean) / (std + eps)


def pkd_level_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean((z(S) - z(T))^2) / 2 of two [B, C, H, W] features (z: ``standardize``), a scalar; it equals
    mean_c (1 - Pearson r_c(S, T)) up to ``EPS``."""
    return F.mse_loss(standardize(student.float()), standardize(teacher.float())) / 2


@DISTILL_TERM_REGISTRY.register()
class PKD(DistillTerm):
    """``loss_pkd`` = WEIGHT * sum_l mean((z(S_l) - z(T_l))^2) / 2 over PKD.IN_FEATURES."""

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        pkd = cfg.MODEL.DS2D2.PKD
        self.weight = positive_weight(pkd.WEIGHT, "MODEL.DS2D2.PKD.WEIGHT")
        if context.student_width != context.teacher_width:
            raise ValueError(
                f"PKD compares the student's and the teacher's FPN channels one to one (no adapter): the "
                f"student's MODEL.FPN.OUT_CHANNELS ({context.student_width}) must equal the teacher's "
                f"({context.teacher_width})."
            )
        self.in_features = select_levels(pkd.IN_FEATURES, "MODEL.DS2D2.PKD.IN_FEATURES", context, default=4)

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        levels = [pkd_level_loss(step.student_feats[f], step.teacher_feats[f]) for f in self.in_features]
        return {"loss_pkd": self.weight * torch.stack(levels).sum()}
