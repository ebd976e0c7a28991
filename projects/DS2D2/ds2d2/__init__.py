"""DS2D2: Dual-Stream Spectral Decoupling Distillation for remote sensing object detection
(Detectron2 project).

Importing ``ds2d2`` registers its meta-architectures (DS2D2Amplifier, DS2D2Distiller, RotatedRetinaNet), its
RetinaNet backbone (build_ds2d2_retinanet_resnet_fpn_backbone), its RPN with a minimum IoU for low-quality
matches (DS2D2RPN) and builtin datasets (dior_*, synthetic_dior_*, dota_*) with Detectron2, and exposes the
reusable building blocks below. On a detectron2 without compiled ops it also points Detectron2's rotated
IoU, NMS and ROIAlignRotated at ds2d2.rotated's pure-PyTorch ops (``compat.install_rotated_ops``).
"""
from . import backbone, data, meta_arch, modeling, rpn  # noqa: F401  (registration only)
from .compat import install_rotated_ops
from .config import add_ds2d2_config
from .disw import disw_map, disw_maps
from .losses import (
    dense_box_kd,
    dense_cls_kd,
    explicit_band_losses,
    explicit_loss,
    explicit_loss_from_bands,
    roi_box_kd,
    roi_cls_divisor,
    roi_cls_kd,
)
from .wavelet import dwt, high_frequency, high_frequency_from_bands, validate_wavelet

install_rotated_ops()

__all__ = [
    "add_ds2d2_config",
    "dense_box_kd",
    "dense_cls_kd",
    "disw_map",
    "disw_maps",
    "dwt",
    "explicit_band_losses",
    "explicit_loss",
    "explicit_loss_from_bands",
    "high_frequency",
    "high_frequency_from_bands",
    "roi_box_kd",
    "roi_cls_divisor",
    "roi_cls_kd",
    "validate_wavelet",
]
