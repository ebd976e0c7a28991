"""PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
Coefficient", NeurIPS 2022): each channel of the student's and of the teacher's FPN level is standardised over
the batch and the positions, and the student's is pulled to the teacher's with an MSE halved, i.e. one minus
their Pearson correlation, averaged over channels. Magnitudes no longer matter, so no adapter is used and the
FPN widths must be equal. Keys ``MODEL.DS2D2.PKD.{WEIGHT, IN_FEATURES}`` (docs/baselines.md)."""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor

from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext, select_levels

EPS = 1e-6  # added to each channel's standard deviation: a constant channel standardises to 0, not NaN


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
        self.weight = float(pkd.WEIGHT)
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
