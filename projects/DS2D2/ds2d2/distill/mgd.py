"""MGD (Yang et al., "Masked Generative Distillation", ECCV 2022): on each FPN level, the student's feature
(through a 1x1 align conv when its width differs from the teacher's) has random positions zeroed, and a small
generator (3x3 conv, ReLU, 3x3 conv) must rebuild the teacher's whole feature from what is left; the student
learns features from which the teacher's can be generated. One align conv and one generator per level, as the
paper; they are trainable submodules of the term (saved with the student, dropped by the export). Levels:
by default those an FPN conv computes (RetinaNet P3-P7, Faster R-CNN P2-P5), as the authors'. Keys
``MODEL.DS2D2.MGD.{WEIGHT, MASK_RATIO, IN_FEATURES}`` (docs/baselines.md); the authors' RetinaNet recipe
also inherits the teacher's FPN and head (``MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD``)."""
from typing import Dict, Optional

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext, select_levels
from .fpn_levels import conv_levels


def random_mask(feature: Tensor, ratio: float) -> Tensor:
    """[B, 1, H, W] mask of a [B, C, H, W] feature, shared over channels: 0 where a uniform draw (torch's
    global RNG on the feature's device, so the trainer's per-iteration seeding makes it reproducible) is
    below ``ratio``, 1 elsewhere."""
    b, _, h, w = feature.shape
    return (torch.rand((b, 1, h, w), device=feature.device) >= ratio).to(feature.dtype)


def generator(width: int) -> nn.Sequential:
    """3x3 conv, ReLU, 3x3 conv at the teacher's ``width``: [B, C_t, H, W] -> [B, C_t, H, W]."""
    return nn.Sequential(
        nn.Conv2d(width, width, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, kernel_size=3, padding=1),
    )


@DISTILL_TERM_REGISTRY.register()
class MGD(DistillTerm):
    """``loss_mgd`` = WEIGHT * sum_l sum((G_l(A_l(S_l) * M_l) - T_l)^2) / B: A_l the 1x1 align conv (identity
    at equal widths), M_l a ``random_mask`` of ratio MASK_RATIO, G_l the level's ``generator``, the sum over
    every element of the [B, C_t, H_l, W_l] level."""

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        mgd = cfg.MODEL.DS2D2.MGD
        self.weight, self.mask_ratio = float(mgd.WEIGHT), float(mgd.MASK_RATIO)
        self.in_features = select_levels(
            mgd.IN_FEATURES or conv_levels(context), "MODEL.DS2D2.MGD.IN_FEATURES", context, None
        )
        s_width, t_width = context.student_width, context.teacher_width
        self.align: Optional[nn.ModuleDict] = None
        if s_width != t_width:
            self.align = nn.ModuleDict({f: nn.Conv2d(s_width, t_width, 1) for f in self.in_features})
        self.generators = nn.ModuleDict({f: generator(t_width) for f in self.in_features})

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        levels = []
        for f in self.in_features:  # masks drawn in this order
            student = step.student_feats[f]
            if self.align is not None:
                student = self.align[f](student)
            generated = self.generators[f](student * random_mask(student, self.mask_ratio))
            error = (generated.float() - step.teacher_feats[f].float()) ** 2
            levels.append(error.sum() / student.shape[0])
        return {"loss_mgd": self.weight * torch.stack(levels).sum()}
