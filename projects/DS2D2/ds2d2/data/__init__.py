"""Datasets: Pascal-VOC-format aerial data (DIOR and any other), DOTA patch sets, and the synthetic generator.

Importing this package registers the builtin names (dior_*, synthetic_dior_*) under $DETECTRON2_DATASETS
(default ./datasets); they load lazily, so missing folders only matter when a dataset is used.
"""
import os

from .builtin import DIOR_CLASSES, register_all_dior
from .voc import load_voc_detection, register_voc_detection

register_all_dior(os.environ.get("DETECTRON2_DATASETS", "datasets"))

__all__ = ["DIOR_CLASSES", "load_voc_detection", "register_all_dior", "register_voc_detection"]
