"""Detector families: how each detector kind computes its own losses once and runs a head for prediction
KD. ``DetectorFamily`` is the interface every family implements; nothing else looks at architecture names."""
from typing import Dict, List, Protocol, Tuple

from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from .dense import DenseFamily
from .roi import RoIFamily


class DetectorFamily(Protocol):
    """What the distiller and its terms need from a detector kind."""

    student: nn.Module
    head_prefix: str  # where the detector keeps the head that amplifiers replace, in a state dict

    @property
    def num_classes(self) -> int:
        """Foreground classes the detector predicts."""

    @staticmethod
    def head_of(detector: nn.Module) -> nn.Module:
        """The head of ``detector`` (RetinaNet head / StandardROIHeads) that prediction KD runs."""

    def head_in_features(self) -> List[str]:
        """FPN levels the head reads."""

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict]:
        """The student's own detection losses and the targets (matching / sampling) KD terms reuse."""

    def kd_loss(self, head: nn.Module, student_feats: List[Tensor], teacher_feats: List[Tensor],
                targets: Dict) -> Tensor:
        """Prediction KD between ``head`` on student and on teacher features, at ``targets``."""


def family_for(student: nn.Module, loss_cfg) -> DetectorFamily:
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


__all__ = ["DetectorFamily", "DenseFamily", "RoIFamily", "family_for"]
