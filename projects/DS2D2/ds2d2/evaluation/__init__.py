"""Evaluators: VOC-style per-class AP50 of horizontal (DIOR papers) and rotated boxes (DIOR-R papers), and
DOTA full-image Task-1 (oriented) and Task-2 (horizontal) mAP with submission files."""
from .dota import DOTAFullImageEvaluator
from .voc import RotatedVOCDetectionEvaluator, VOCDetectionEvaluator

__all__ = ["DOTAFullImageEvaluator", "RotatedVOCDetectionEvaluator", "VOCDetectionEvaluator"]
