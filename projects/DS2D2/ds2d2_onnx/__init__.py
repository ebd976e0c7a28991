"""Run ds2d2 detectors exported to ONNX (``tools/export_student.py --format onnx``) with onnxruntime, NumPy,
Pillow and OpenCV only: no torch, no Detectron2, no config file. Kept outside the ``ds2d2`` package, whose
import loads torch and Detectron2; this folder can be copied to a deployment machine as it is. Its image
reader (``image_io``) is the whole project's: ``ds2d2`` imports it, without onnxruntime.
"""
from .draw import draw_detections, save_detections
from .image_io import DEFAULT_MAX_PIXELS, ImageReadError, image_size, read_image
from .metadata import DeployFileError, DeployInfo
from .postprocess import Detections

__all__ = [
    "DEFAULT_MAX_PIXELS", "DeployFileError", "DeployInfo", "Detections", "ImageReadError", "OnnxDetector",
    "draw_detections", "image_size", "read_image", "save_detections",
]


def __getattr__(name: str):
    """``OnnxDetector`` is imported on first use: it needs onnxruntime, which ``ds2d2`` (training, reading
    images through ``image_io``) does not."""
    if name == "OnnxDetector":
        from .predictor import OnnxDetector

        return OnnxDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
