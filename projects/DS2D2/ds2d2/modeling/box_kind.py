"""Which detectors predict rotated boxes, read from a config (for tools that treat the two kinds apart)."""
from detectron2.config import CfgNode

from ..config import detector_architecture

__all__ = ["predicts_rotated_boxes"]


def predicts_rotated_boxes(cfg: CfgNode) -> bool:
    """Whether the detector ``cfg`` trains (a distiller's student included) outputs RotatedBoxes: a
    RotatedRetinaNet, or a GeneralizedRCNN with Detectron2's RROIHeads (Rotated Faster R-CNN)."""
    arch = detector_architecture(cfg)
    if arch == "GeneralizedRCNN":
        return cfg.MODEL.ROI_HEADS.NAME == "RROIHeads"
    return arch == "RotatedRetinaNet"
