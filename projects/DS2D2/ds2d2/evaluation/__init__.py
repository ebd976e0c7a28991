"""Evaluators: VOC-style per-class AP50 (DIOR papers) and DOTA full-image Task-2 mAP."""
