"""Detector families: descriptions of the detectors a distiller pairs (``DetectorFamily`` in base.py), one
file per kind; nothing else looks at architecture names. Adding a detector kind is one more file here and a
line in ``family_for`` (docs/baselines.md, "Adding a detector family")."""
from typing import Optional, Sequence

from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.roi_heads import RROIHeads
from torch import nn

from ..modeling.rotated_retinanet import RotatedRetinaNet

from .base import DetectorFamily, HeadPredictions
from .rcnn import RCNNFamily, RoITargets
from .retinanet import AnchorTargets, RetinaNetFamily
from .rotated_rcnn import RotatedRCNNFamily
from .rotated_retinanet import RotatedRetinaNetFamily


def family_for(detector: nn.Module, levels: Optional[Sequence[str]] = None) -> DetectorFamily:
    """The family of ``detector`` (a RetinaNet, a RotatedRetinaNet, or a GeneralizedRCNN with StandardROIHeads
    or RROIHeads), its head run on ``levels`` (None: the head's own input levels). The rotated kinds are
    subclasses of the horizontal ones, so they are tested first."""
    if isinstance(detector, RotatedRetinaNet):
        return RotatedRetinaNetFamily(detector, levels)
    if isinstance(detector, RetinaNet):
        return RetinaNetFamily(detector, levels)
    if isinstance(detector, GeneralizedRCNN) and isinstance(detector.roi_heads, RROIHeads):
        return RotatedRCNNFamily(detector, levels)
    if isinstance(detector, GeneralizedRCNN):
        return RCNNFamily(detector, levels)
    raise ValueError(
        f"MODEL.DS2D2.DETECTOR / the teacher's MODEL.META_ARCHITECTURE builds a {type(detector).__name__}; "
        "the distiller supports RetinaNet, RotatedRetinaNet and GeneralizedRCNN (StandardROIHeads or "
        "RROIHeads). Another detector needs one more family file in ds2d2/families/ (docs/baselines.md, "
        "'Adding a detector family')."
    )


__all__ = [
    "AnchorTargets",
    "DetectorFamily",
    "HeadPredictions",
    "RCNNFamily",
    "RetinaNetFamily",
    "RoITargets",
    "RotatedRCNNFamily",
    "RotatedRetinaNetFamily",
    "family_for",
]
