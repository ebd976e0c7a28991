"""Datasets: Pascal-VOC-format aerial data (DIOR and any other), COCO JSONs, DOTA patch sets, datasets
declared in the config (``DATASETS.OWN``, see ``own.py``). The synthetic generator (``synthetic.py``, for the
tests, the demo and the benchmarks) is imported only by what uses it.

Importing this package registers the builtin names (dior_*, synthetic_dior_*, dota_v1_*_1024, ... with
horizontal boxes; diorr_*, synthetic_diorr_*, dota_v1_*_1024_oriented, ... with oriented ones, XYWHA_ABS)
under $DETECTRON2_DATASETS (default ./datasets); they load lazily, so missing folders only matter when a
dataset is used. Metadata ``box_kind`` says which kind a dataset's boxes are.
"""
import os

from .builtin import DIOR_CLASSES, register_all_dior
from .coco import register_coco_detection
from .dota import register_all_dota, register_dota
from .own import register_own_datasets
from .voc import load_voc_detection, register_voc_detection

_ROOT = os.environ.get("DETECTRON2_DATASETS", "datasets")
register_all_dior(_ROOT)
register_all_dota(_ROOT)

__all__ = [
    "DIOR_CLASSES",
    "load_voc_detection",
    "register_all_dior",
    "register_all_dota",
    "register_coco_detection",
    "register_dota",
    "register_own_datasets",
    "register_voc_detection",
]
