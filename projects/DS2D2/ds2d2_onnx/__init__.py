"""Run ds2d2 detectors exported to ONNX (``tools/export_student.py --format onnx``) with onnxruntime, NumPy,
Pillow and OpenCV only: no torch, no Detectron2, no config file. Kept outside the ``ds2d2`` package, whose
import loads torch and Detectron2; this folder can be copied to a deployment machine as it is.
"""
from .draw import draw_detections, save_detections
from .metadata import DeployFileError, DeployInfo
from .postprocess import Detections
from .predictor import OnnxDetector

__all__ = [
    "DeployFileError", "DeployInfo", "Detections", "OnnxDetector", "draw_detections", "save_detections"
]
