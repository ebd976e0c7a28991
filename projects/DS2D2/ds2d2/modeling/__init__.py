"""Detectors Detectron2 lacks, registered in its META_ARCH_REGISTRY on import: ``RotatedRetinaNet``."""
from .rotated_retinanet import RotatedRetinaNet, RotatedRetinaNetHead

__all__ = ["RotatedRetinaNet", "RotatedRetinaNetHead"]
