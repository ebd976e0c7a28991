"""DS2D2: Dual-Stream Spectral Decoupling Distillation for remote sensing object detection (Detectron2 project).

Importing ``ds2d2`` registers its meta-architectures (DS2D2Amplifier, DS2D2Distiller) and builtin datasets
(dior_*, synthetic_dior_*, dota_*) with Detectron2, and exposes the reusable building blocks below.
"""
from .config import add_ds2d2_config

__all__ = ["add_ds2d2_config"]
