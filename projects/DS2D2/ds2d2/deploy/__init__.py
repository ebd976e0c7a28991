"""Deployment: a trained detector or distilled student -> an ONNX file that ``ds2d2_onnx`` runs without torch.

``export_onnx(cfg, checkpoint, output, input_size=None)`` is what ``tools/export_student.py --format onnx``
calls; ``graphs`` holds the exported modules, ``student`` the loading of the detector from a checkpoint.
"""
from .onnx_export import export_model, export_onnx
from .student import class_names_for, detector_config, load_detector

__all__ = ["class_names_for", "detector_config", "export_model", "export_onnx", "load_detector"]
