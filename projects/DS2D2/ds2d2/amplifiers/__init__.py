"""Detector families: how each detector kind computes its own losses once and runs a head for prediction
KD."""
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from torch import nn

from .dense import DenseFamily
from .roi import RoIFamily


def family_for(student: nn.Module, loss_cfg) -> "DenseFamily | RoIFamily":
    """The family adapter of ``student`` (a RetinaNet or a GeneralizedRCNN with StandardROIHeads)."""
    if isinstance(student, RetinaNet):
        return DenseFamily(student, beta=loss_cfg.DENSE_BETA)
    if isinstance(student, GeneralizedRCNN):
        return RoIFamily(
            student,
            temperature=loss_cfg.ROI_TEMPERATURE,
            cls_weight=loss_cfg.ROI_CLS_WEIGHT,
            cls_reduction=loss_cfg.ROI_CLS_REDUCTION,
        )
    raise ValueError(
        f"MODEL.DS2D2.DETECTOR builds a {type(student).__name__}; DS2D2 supports RetinaNet (dense) and "
        "GeneralizedRCNN (two-stage). Another detector needs one more family file in ds2d2/amplifiers/."
    )


__all__ = ["DenseFamily", "RoIFamily", "family_for"]
