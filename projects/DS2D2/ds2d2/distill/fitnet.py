"""FitNet-style feature imitation (Romero et al., ICLR 2015, applied to detector FPN levels): the student's
features, through the shared 1x1 adapter, regress the frozen teacher's with a plain MSE on every level of
``MODEL.DS2D2.IN_FEATURES``; no wavelet split, DISW or amplifier. Weight: ``MODEL.DS2D2.FITNET.WEIGHT``
(docs/baselines.md)."""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor

from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext


@DISTILL_TERM_REGISTRY.register()
class FitNet(DistillTerm):
    """``loss_fitnet`` = WEIGHT * sum_l mean((adapter(S_l) - T_l)^2)."""

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        self.weight = float(cfg.MODEL.DS2D2.FITNET.WEIGHT)
        self.in_features = list(context.in_features)
        self._shared = {"adapters": context.adapters()}  # owned (and saved) by the distiller

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        adapted = step.adapted(self._shared["adapters"])
        mse = [F.mse_loss(adapted[f].float(), step.teacher_feats[f].float()) for f in self.in_features]
        return {"loss_fitnet": self.weight * torch.stack(mse).sum()}
