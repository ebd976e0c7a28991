"""A plain RetinaNet / Faster R-CNN (or a distiller's student) -> one self-describing ONNX file.

The graph (``graphs.py``) is exported with ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript;
TorchScript is not used), weights inside the file, and the settings inference needs are written to the
model's metadata (``ds2d2_onnx.DeployInfo``). Input size:

- dynamic (default): any height and width that are multiples of the backbone's size divisibility
  (``ds2d2_onnx`` pads to them), up to ``MAX_DYNAMIC_SIDE``; detections equal Detectron2's at every size;
- fixed ``(H, W)`` (multiples of the divisibility): every image is padded to H x W. Where Detectron2 would
  pad less (a smaller image), features near the bottom/right border see more padding, so detections there
  can differ slightly; for images whose padded size is H x W (e.g. all DIOR images at 800 x 800) they are
  Detectron2's. Fixed sizes let onnxruntime plan memory once and suit accelerators that need static shapes.
"""
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode
from torch import nn

from ds2d2_onnx.metadata import METADATA_KEY, DeployInfo

from ..checkpoint import atomic_path
from ..modeling import predicts_rotated_boxes
from .graphs import FasterRCNNGraph, RetinaNetGraph
from .student import class_names_for, detector_config, load_detector

MAX_DYNAMIC_SIDE = 8192
# Example size of a dynamic export, in units of the size divisibility: large enough that no level of the
# pyramid is 1 pixel (torch.export would fix such a size), different for height and width.
EXAMPLE_BLOCKS = (11, 13)


def deploy_info(model: nn.Module, cfg: CfgNode, input_size: Optional[Tuple[int, int]],
                source: Dict[str, str]) -> DeployInfo:
    """The metadata of ``model`` (built from ``detector_config(cfg)``) exported at ``input_size``."""
    retina = cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    predictor = None if retina else model.roi_heads.box_predictor
    num_classes = model.num_classes if retina else model.roi_heads.num_classes
    return DeployInfo(
        family=cfg.MODEL.META_ARCHITECTURE,
        class_names=class_names_for(cfg, None, num_classes),
        input_format=cfg.INPUT.FORMAT,
        pixel_mean=[float(v) for v in model.pixel_mean.flatten()],
        min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=int(model.backbone.size_divisibility),
        input_size=input_size,
        score_thresh=float(model.test_score_thresh if retina else predictor.test_score_thresh),
        nms_thresh=float(model.test_nms_thresh if retina else predictor.test_nms_thresh),
        detections_per_image=int(model.max_detections_per_image if retina else predictor.test_topk_per_image),
        topk_candidates=int(model.test_topk_candidates) if retina else 0,
        source=source,
    )


def _check_input_size(input_size: Optional[Tuple[int, int]], divisibility: int) -> None:
    if input_size is not None and (min(input_size) <= 0 or any(v % max(divisibility, 1) for v in input_size)):
        raise ValueError(
            f"input size {tuple(input_size)}: height and width must be positive multiples of the backbone's "
            f"size divisibility ({divisibility})."
        )


def export_model(model: nn.Module, cfg: CfgNode, output: str, input_size: Optional[Tuple[int, int]] = None,
                 source: Optional[Dict[str, str]] = None) -> DeployInfo:
    """Write ``model`` (eval mode, CPU, built from the plain detector config ``cfg``) to ``output`` as ONNX
    with its metadata (dynamic height/width when ``input_size`` is None); return the metadata."""
    divisibility = model.backbone.size_divisibility
    _check_input_size(input_size, divisibility)
    height, width = input_size or tuple(b * max(divisibility, 1) for b in EXAMPLE_BLOCKS)
    image = torch.zeros(1, 3, height, width)
    dims = None
    if input_size is None:
        blocks = [torch.export.Dim(f"{side}_blocks", min=1, max=MAX_DYNAMIC_SIDE // max(divisibility, 1))
                  for side in ("height", "width")]
        dims = {"image": {2: divisibility * blocks[0], 3: divisibility * blocks[1]}}
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        graph, args, input_names = RetinaNetGraph(model), (image,), ["image"]
        output_names = [f"{kind}_{f}" for f in model.head_in_features for kind in ("scores", "boxes")]
    else:
        image_size = torch.tensor([height, width], dtype=torch.float32)
        graph, args, input_names = FasterRCNNGraph(model), (image, image_size), ["image", "image_size"]
        output_names = ["class_probs", "class_boxes"]
        if dims is not None:
            dims["image_size"] = None
    info = deploy_info(model, cfg, input_size, source or {})
    with torch.no_grad():
        program = torch.onnx.export(graph.eval(), args, None, dynamo=True, dynamic_shapes=dims, verbose=False,
                                    input_names=input_names, output_names=output_names)
    program.model.metadata_props[METADATA_KEY] = info.to_json()
    with atomic_path(output) as temporary:  # a failed export never leaves a half-written file
        program.save(temporary, external_data=False)
    return info


def export_onnx(cfg: CfgNode, checkpoint: str, output: str, input_size: Optional[Tuple[int, int]] = None,
                config_file: str = "") -> DeployInfo:
    """The detector of ``cfg`` (read from ``config_file``; a distiller's student, or the plain detector)
    with the weights of ``checkpoint`` -> ONNX at ``output``; see ``export_model``. Rotated detectors are
    refused (ValueError): the graphs and ``ds2d2_onnx`` decode horizontal boxes only."""
    if predicts_rotated_boxes(cfg):
        raise ValueError(
            f"{config_file or 'the config'}: its detector predicts rotated boxes (MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r}, MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME!r}); the ONNX "
            "export covers horizontal RetinaNet and Faster R-CNN. Run it with PyTorch instead "
            "(tools/infer_large_image.py --config-file, train_net.py --eval-only)."
        )
    model = load_detector(cfg, checkpoint)
    source = {"config": config_file, "checkpoint": checkpoint}
    return export_model(model, detector_config(cfg), output, input_size, source)
