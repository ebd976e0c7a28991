"""FitNet-style feature-imitation baseline for the accuracy benchmark (a config variant of the distiller).

``MODEL.META_ARCHITECTURE: FitNetDistiller`` trains the student with its detection losses plus
``MODEL.DS2D2.LOSS.EXPLICIT_LOW * sum_l mean((adapter(S_l) - T_l)^2)`` over ``MODEL.DS2D2.IN_FEATURES``: the
explicit stream's place and adapter, without the wavelet split, DISW or amplifiers. The other three DS2D2
weights must be 0 (so no amplifier is loaded). Importing this module registers the meta-architecture.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from ds2d2.meta_arch import DS2D2Distiller

__all__ = ["FitNetDistiller"]


@META_ARCH_REGISTRY.register()
class FitNetDistiller(DS2D2Distiller):
    """Student + MSE between its adapted FPN features and the frozen teacher's."""

    def __init__(self, cfg):
        others = {k: cfg.MODEL.DS2D2.LOSS[k] for k in ("EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")}
        if any(v != 0 for v in others.values()) or not cfg.MODEL.DS2D2.LOSS.EXPLICIT_LOW > 0:
            raise ValueError(
                "FitNetDistiller takes its MSE weight from MODEL.DS2D2.LOSS.EXPLICIT_LOW (> 0) and needs "
                f"EXPLICIT_HIGH, IMPLICIT_FULL and IMPLICIT_HIGH at 0; got EXPLICIT_LOW="
                f"{cfg.MODEL.DS2D2.LOSS.EXPLICIT_LOW}, {others}."
            )
        super().__init__(cfg)
        self.fitnet_weight = float(cfg.MODEL.DS2D2.LOSS.EXPLICIT_LOW)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.student(batched_inputs)
        images = self.student.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        s_feats = self.student.backbone(images.tensor)
        t_images = self._teacher_images(batched_inputs, images.tensor.shape[-2:])
        with torch.no_grad():
            t_feats = self.teacher.backbone(t_images.tensor)
        losses, _ = self.family.detection_losses(images, s_feats, gt_instances)
        mse = [F.mse_loss(self.adapters[f](s_feats[f]).float(), t_feats[f].float()) for f in self.in_features]
        losses["loss_fitnet"] = self.fitnet_weight * torch.stack(mse).sum()
        return losses
