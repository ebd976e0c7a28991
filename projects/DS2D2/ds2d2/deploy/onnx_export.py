"""A plain RetinaNet / Faster R-CNN, their rotated twins (RotatedRetinaNet; GeneralizedRCNN with RRPN and
RROIHeads), or a distiller's student -> one self-describing ONNX file.

The graph (``graphs.py``) is exported with ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript;
TorchScript is not used), weights inside the file, and the settings inference needs are written to the
model's metadata (``ds2d2_onnx.DeployInfo``). Input size:

- dynamic (default): any height and width that are multiples of the backbone's size divisibility
  (``ds2d2_onnx`` pads to them), up to ``MAX_DYNAMIC_SIDE``; detections equal Detectron2's at every size;
- fixed ``(H, W)`` (multiples of the divisibility; not for a Rotated Faster R-CNN, see
  ``_check_input_size``): every image is padded to H x W. Where Detectron2 would pad less (a smaller
  image), features near the bottom/right border see more padding, so detections there can differ slightly;
  for images whose padded size is H x W (e.g. all DIOR images at 800 x 800) they are Detectron2's. Fixed
  sizes let onnxruntime plan memory once and suit accelerators that need static shapes.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from torch import nn

from ds2d2_onnx.metadata import METADATA_KEY, DeployInfo

from ..checkpoint import atomic_path
from ..modeling import predicts_rotated_boxes
from .graphs import FasterRCNNGraph, RetinaNetGraph, RotatedFasterRCNNGraph
from .student import class_names_for, detector_config, load_detector

MAX_DYNAMIC_SIDE = 8192
# Example size of a dynamic export, in units of the size divisibility: large enough that no level of the
# pyramid is 1 pixel (torch.export would fix such a size), different for height and width.
EXAMPLE_BLOCKS = (11, 13)
EXAMPLE_ROIS = 3  # pooled RoIs of a Rotated Faster R-CNN's example input (their number is dynamic)
MAX_ROIS = 1 << 20


def deploy_family(cfg: CfgNode) -> str:
    """The ``DeployInfo.family`` of a plain detector config: its meta-architecture, "RotatedGeneralizedRCNN"
    for a GeneralizedRCNN with RROIHeads. ValueError naming the keys for a rotated R-CNN that is not RRPN +
    ROIAlignRotated (the only one ``ds2d2_onnx`` runs)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch != "GeneralizedRCNN" or not predicts_rotated_boxes(cfg):
        return arch
    parts = (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
    if parts != ("RRPN", "ROIAlignRotated"):
        raise ValueError(
            f"MODEL.PROPOSAL_GENERATOR.NAME {parts[0]!r} with MODEL.ROI_BOX_HEAD.POOLER_TYPE {parts[1]!r}: "
            "the ONNX export of RROIHeads needs 'RRPN' and 'ROIAlignRotated' (the synthetic, DOTA and DIOR-R "
            "rotated_faster_rcnn configs' setting)."
        )
    return "RotatedGeneralizedRCNN"


def _rotated_rcnn_settings(model: nn.Module) -> Dict[str, Dict]:
    """What ``ds2d2_onnx`` needs of a Rotated Faster R-CNN's RRPN and box pooler (see ``DeployInfo``)."""
    rpn, heads = model.proposal_generator, model.roi_heads
    pooler = heads.box_pooler
    return {
        "proposals": {"nms_thresh": float(rpn.nms_thresh), "post_nms_topk": int(rpn.post_nms_topk[False]),
                      "min_box_size": float(rpn.min_box_size)},
        "pooler": {"features": list(heads.box_in_features),
                   "scales": [float(p.spatial_scale) for p in pooler.level_poolers],
                   "output_size": [int(v) for v in pooler.output_size],
                   "sampling_ratio": int(pooler.level_poolers[0].sampling_ratio),
                   "canonical_box_size": float(pooler.canonical_box_size),
                   "canonical_level": int(pooler.canonical_level)},
    }


def deploy_info(model: nn.Module, cfg: CfgNode, input_size: Optional[Tuple[int, int]],
                source: Dict[str, str]) -> DeployInfo:
    """The metadata of ``model`` (built from ``detector_config(cfg)``) exported at ``input_size``."""
    family = deploy_family(cfg)
    retina = family.endswith("RetinaNet")
    predictor = None if retina else model.roi_heads.box_predictor
    num_classes = model.num_classes if retina else model.roi_heads.num_classes
    return DeployInfo(
        family=family,
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
        **(_rotated_rcnn_settings(model) if family == "RotatedGeneralizedRCNN" else {}),
    )


def _check_input_size(input_size: Optional[Tuple[int, int]], divisibility: int, family: str) -> None:
    if input_size is None:
        return
    if min(input_size) <= 0 or any(v % max(divisibility, 1) for v in input_size):
        raise ValueError(
            f"input size {tuple(input_size)}: height and width must be positive multiples of the backbone's "
            f"size divisibility ({divisibility})."
        )
    if family == "RotatedGeneralizedRCNN":
        raise ValueError(
            f"input size {tuple(input_size)}: a Rotated Faster R-CNN is exported with a dynamic size only. "
            "Its graph runs twice per image (the image part, then the box head after the NumPy NMS and "
            "pooling), each run feeding both parts; at a fixed size the second would run the backbone on a "
            "full image again. Export it without --input-size."
        )


def _rotated_rcnn_graph(model: nn.Module, image: torch.Tensor
                        ) -> Tuple[nn.Module, Tuple, List[str], List[str]]:
    """The Rotated Faster R-CNN graph, its example inputs (``EXAMPLE_ROIS`` pooled RoIs) and the names of
    its inputs and outputs."""
    heads = model.roi_heads
    channels = model.backbone.output_shape()[heads.box_in_features[0]].channels
    size = heads.box_pooler.output_size
    roi_features = torch.zeros(EXAMPLE_ROIS, channels, size[0], size[1])
    proposals = torch.tensor([[16.0, 16.0, 24.0, 12.0, 30.0]]).repeat(EXAMPLE_ROIS, 1)
    levels = model.proposal_generator.in_features
    output_names = [f"{kind}_{f}" for f in levels for kind in ("objectness", "proposals")]
    output_names += [f"features_{f}" for f in heads.box_in_features] + ["class_probs", "class_boxes"]
    return (RotatedFasterRCNNGraph(model), (image, roi_features, proposals),
            ["image", "roi_features", "proposals"], output_names)


def export_model(model: nn.Module, cfg: CfgNode, output: str, input_size: Optional[Tuple[int, int]] = None,
                 source: Optional[Dict[str, str]] = None) -> DeployInfo:
    """Write ``model`` (eval mode, CPU, built from the plain detector config ``cfg``) to ``output`` as ONNX
    with its metadata (dynamic height/width when ``input_size`` is None); return the metadata."""
    divisibility = model.backbone.size_divisibility
    family = deploy_family(cfg)
    _check_input_size(input_size, divisibility, family)
    height, width = input_size or tuple(b * max(divisibility, 1) for b in EXAMPLE_BLOCKS)
    image = torch.zeros(1, 3, height, width)
    dims = None
    if input_size is None:
        blocks = [torch.export.Dim(f"{side}_blocks", min=1, max=MAX_DYNAMIC_SIDE // max(divisibility, 1))
                  for side in ("height", "width")]
        dims = {"image": {2: divisibility * blocks[0], 3: divisibility * blocks[1]}}
    if family.endswith("RetinaNet"):
        graph, args, input_names = RetinaNetGraph(model), (image,), ["image"]
        output_names = [f"{kind}_{f}" for f in model.head_in_features for kind in ("scores", "boxes")]
    elif family == "RotatedGeneralizedRCNN":
        graph, args, input_names, output_names = _rotated_rcnn_graph(model, image)
        rois = torch.export.Dim("rois", min=1, max=MAX_ROIS)
        dims.update(roi_features={0: rois}, proposals={0: rois})
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
    with the weights of ``checkpoint`` -> ONNX at ``output``; see ``export_model``. A rotated R-CNN that
    ``ds2d2_onnx`` cannot run (not RRPN + ROIAlignRotated) is refused (ValueError naming the config keys)
    before the checkpoint is read."""
    try:
        deploy_family(detector_config(cfg))
    except ValueError as e:
        raise ValueError(f"{config_file or 'the config'}: {e}") from None
    model = load_detector(cfg, checkpoint)
    source = {"config": config_file, "checkpoint": checkpoint}
    return export_model(model, detector_config(cfg), output, input_size, source)
