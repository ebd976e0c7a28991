"""DS2D2's explicit stream: DISW-weighted squared differences between the one-level wavelet bands of the
adapted student and of the teacher, on every level of ``MODEL.DS2D2.IN_FEATURES`` (docs/method.md, "Explicit
stream"). Weights l1 (low band) and l2 (high bands): ``MODEL.DS2D2.LOSS.EXPLICIT_LOW`` / ``EXPLICIT_HIGH``."""
from typing import Dict

from detectron2.config import CfgNode
from torch import Tensor

from ..losses import explicit_loss_from_bands
from ..wavelet import dwt
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext


@DISTILL_TERM_REGISTRY.register()
class DS2D2Explicit(DistillTerm):
    """``loss_ds2d2_ex_low`` = l1 * L_ex_low and ``loss_ds2d2_ex_high`` = l2 * L_ex_high (a zero weight drops
    its key)."""

    @staticmethod
    def enabled(cfg: CfgNode) -> bool:
        return cfg.MODEL.DS2D2.LOSS.EXPLICIT_LOW > 0 or cfg.MODEL.DS2D2.LOSS.EXPLICIT_HIGH > 0

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        loss = cfg.MODEL.DS2D2.LOSS
        self.low_weight, self.high_weight = float(loss.EXPLICIT_LOW), float(loss.EXPLICIT_HIGH)
        self.wave = cfg.MODEL.DS2D2.WAVELET
        self.in_features = list(context.in_features)
        self._shared = {"adapters": context.adapters()}  # owned (and saved) by the distiller

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        adapted = step.adapted(self._shared["adapters"])
        low, high = explicit_loss_from_bands(
            [dwt(adapted[f], self.wave) for f in self.in_features],
            [step.teacher_bands(f, self.wave) for f in self.in_features],  # shared with the implicit stream
            step.gt_boxes,
            step.input_size,
        )
        losses = {}
        if self.low_weight > 0:
            losses["loss_ds2d2_ex_low"] = self.low_weight * low
        if self.high_weight > 0:
            losses["loss_ds2d2_ex_high"] = self.high_weight * high
        return losses
