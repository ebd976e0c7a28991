"""Evaluators: VOC-style per-class AP50 (DIOR papers) and DOTA full-image Task-2 mAP with submission files."""
from .dota import DOTAFullImageEvaluator
from .voc import VOCDetectionEvaluator

__all__ = ["DOTAFullImageEvaluator", "VOCDetectionEvaluator"]
