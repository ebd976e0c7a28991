"""Detectors Detectron2 lacks, registered in its META_ARCH_REGISTRY on import: ``RotatedRetinaNet``; which
configs predict rotated boxes (``predicts_rotated_boxes``)."""
from .box_kind import predicts_rotated_boxes
from .rotated_retinanet import RotatedRetinaNet, RotatedRetinaNetHead

__all__ = ["RotatedRetinaNet", "RotatedRetinaNetHead", "predicts_rotated_boxes"]
