"""The parts of a Detectron2 detector that go into the ONNX graph, as modules with tensor inputs and outputs.

Both take one image ``[1, 3, H, W]`` float32 of raw pixel values in the config's INPUT.FORMAT channel order,
already resized like the test transform and padded at the bottom/right with PIXEL_MEAN to H, W multiples of
the backbone's size divisibility (so the padding is exactly 0 after normalisation, as Detectron2's zero
padding of the normalised batch). What the graph leaves out is done by ``ds2d2_onnx.postprocess`` in NumPy:

- RetinaNet: the graph returns, per head level, the sigmoid class scores ``[Hi*Wi*A, K]`` and the boxes of
  all anchors decoded ``[Hi*Wi*A, 4]`` (x0, y0, x1, y1 in input pixels); score threshold, per-level top-k,
  class-wise NMS and rescaling are post-processing. RotatedRetinaNet: the same with ``[Hi*Wi*A, 5]`` boxes
  (cx, cy, w, h, angle in degrees, Detectron2's ``Box2BoxTransformRotated``: its clamp, angle in
  [-180, 180)); its NMS is the rotated one.
- Faster R-CNN: the proposal step (per-level top-k, decoding, clipping, empty-box removal, per-level NMS,
  top-k) runs in the graph because the box head needs its output; the graph returns, for the R proposals,
  class probabilities ``[R, K + 1]`` (softmax, background last) and the class-specific boxes decoded
  ``[R, 4K]``; clipping, score threshold, class-wise NMS and rescaling are post-processing.
- Rotated Faster R-CNN (RRPN + RROIHeads): ONNX has no rotated NMS, and an exact ROIAlignRotated with
  Detectron2's adaptive sampling (a grid per box) has no static shape, so both are NumPy
  (``ds2d2_onnx.rotated_ops``, ``ds2d2_onnx.roi_align_rotated``) and the graph holds the two parts around
  them, run one after the other: from the image, per RPN level the ``PRE_NMS_TOPK_TEST`` best objectness
  logits ``[k_i]`` and their proposals decoded ``[k_i, 5]``, and the box pooler's FPN levels; from pooled
  RoI features ``[R, C, S, S]`` and their proposals ``[R, 5]``, the class probabilities ``[R, K + 1]`` and
  class boxes ``[R, 5K]``. Proposal clipping, NMS and top-k, the pooling, and the detections' clipping,
  threshold, NMS and rescaling are post-processing.
"""
from typing import List, Tuple

import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.box_regression import Box2BoxTransformRotated
from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import Tensor, nn
from torchvision.ops import nms


def _normalise(model: nn.Module, image: Tensor) -> Tensor:
    return (image - model.pixel_mean) / model.pixel_std


def _pool(pooler: ROIPooler, features: List[Tensor], boxes: Tensor) -> Tensor:
    """``pooler(features, [Boxes(boxes)])`` for one image, written without the list-length tensors that
    torch.export cannot trace: ``[R, C, S, S]``."""
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], rois)
    levels = assign_boxes_to_levels(
        [Boxes(boxes)], pooler.min_level, pooler.max_level, pooler.canonical_box_size, pooler.canonical_level
    )
    size = pooler.output_size
    output = boxes.new_zeros(boxes.shape[0], features[0].shape[1], size[0], size[1])
    for level, level_pooler in enumerate(pooler.level_poolers):
        index = torch.nonzero(levels == level).squeeze(1)
        output = output.index_put((index,), level_pooler(features[level], rois[index]))
    return output


def _box_dim(transform: nn.Module) -> int:
    return 5 if isinstance(transform, Box2BoxTransformRotated) else 4


def _top_proposals(rpn: nn.Module, features: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Per RPN level: the ``PRE_NMS_TOPK_TEST`` best objectness logits ``[k]``, best first, and their anchors'
    deltas applied ``[k, box dim]`` (Detectron2's ``find_top_rpn_proposals`` / ``find_top_rrpn_proposals``
    up to their NMS)."""
    logits, deltas = rpn.rpn_head(features)
    anchors = rpn.anchor_generator(features)
    dim = _box_dim(rpn.box2box_transform)
    levels = []
    for logits_i, deltas_i, anchors_i in zip(logits, deltas, anchors):
        logits_i = logits_i.permute(0, 2, 3, 1).flatten()  # (Hi * Wi * A)
        h, w = deltas_i.shape[-2:]
        deltas_i = deltas_i.view(-1, dim, h, w).permute(2, 3, 0, 1).reshape(-1, dim)
        n, k = logits_i.shape[0], rpn.pre_nms_topk[False]
        # a SymInt under torch.export, a tensor under jit.trace (fvcore's FLOP counter)
        k = n.clamp(max=k) if isinstance(n, Tensor) else torch.sym_min(n, k)
        top_scores, top = logits_i.topk(k)
        levels.append((top_scores, rpn.box2box_transform.apply_deltas(deltas_i[top], anchors_i.tensor[top])))
    return levels


class RetinaNetGraph(nn.Module):
    """``image [1, 3, H, W]`` -> ``(scores_0, boxes_0, scores_1, boxes_1, ...)``, one pair per head level
    (a RotatedRetinaNet's boxes are rotated)."""

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        m = self.model
        features = m.backbone(_normalise(m, image))
        features = [features[f] for f in m.head_in_features]
        logits, deltas = m.head(features)
        anchors = m.anchor_generator(features)
        dim = _box_dim(m.box2box_transform)
        outputs: List[Tensor] = []
        for logits_i, deltas_i, anchors_i in zip(logits, deltas, anchors):
            scores = permute_to_N_HWA_K(logits_i, m.num_classes)[0].sigmoid()
            boxes = m.box2box_transform.apply_deltas(permute_to_N_HWA_K(deltas_i, dim)[0], anchors_i.tensor)
            outputs += [scores, boxes]
        return tuple(outputs)


class FasterRCNNGraph(nn.Module):
    """``(image [1, 3, H, W], image_size [2] float32: the resized image's height and width before padding)``
    -> ``(class_probs [R, K + 1], boxes [R, 4K])`` for the R <= POST_NMS_TOPK_TEST proposals."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def proposals(self, features: List[Tensor], image_size: Tensor) -> Tensor:
        """Detectron2's ``find_top_rpn_proposals`` for one image at test time: ``[R, 4]``, best first."""
        rpn = self.model.proposal_generator
        height, width = image_size[0], image_size[1]
        boxes, scores = [], []
        for top_scores, proposals in _top_proposals(rpn, features):
            valid = torch.isfinite(proposals).all(dim=1) & torch.isfinite(top_scores)
            x = proposals[:, 0::2].clamp(min=0).minimum(width)
            y = proposals[:, 1::2].clamp(min=0).minimum(height)
            proposals = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
            size = rpn.min_box_size
            valid &= (proposals[:, 2] - proposals[:, 0] > size) & (proposals[:, 3] - proposals[:, 1] > size)
            proposals, top_scores = proposals[valid], top_scores[valid]
            keep = nms(proposals, top_scores, rpn.nms_thresh)  # per level, as torchvision's batched_nms
            boxes.append(proposals[keep])
            scores.append(top_scores[keep])
        order = torch.cat(scores).argsort(descending=True)[: rpn.post_nms_topk[False]]
        return torch.cat(boxes)[order]

    def forward(self, image: Tensor, image_size: Tensor) -> Tuple[Tensor, Tensor]:
        m = self.model
        features = m.backbone(_normalise(m, image))
        proposals = self.proposals([features[f] for f in m.proposal_generator.in_features], image_size)
        heads = m.roi_heads
        pooled = _pool(heads.box_pooler, [features[f] for f in heads.box_in_features], proposals)
        logits, deltas = heads.box_predictor(heads.box_head(pooled))
        boxes = heads.box_predictor.box2box_transform.apply_deltas(deltas, proposals)
        return logits.softmax(dim=-1), boxes


class RotatedFasterRCNNGraph(nn.Module):
    """``(image [1, 3, H, W], roi_features [R, C, S, S], proposals [R, 5])`` -> ``(objectness_0,
    proposals_0, objectness_1, ..., features_0, features_1, ..., class_probs [R, K + 1], class_boxes
    [R, 5K])``: per RPN level the best logits ``[k]`` and their proposals ``[k, 5]``, the box pooler's FPN
    levels ``[1, C, Hi, Wi]``, and the box head's outputs for the given pooled RoIs. The two parts share no
    tensor: a caller feeds the part whose outputs it does not use a minimal input."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, roi_features: Tensor, proposals: Tensor) -> Tuple[Tensor, ...]:
        m = self.model
        features = m.backbone(_normalise(m, image))
        rpn, heads = m.proposal_generator, m.roi_heads
        outputs: List[Tensor] = []
        for top_scores, top_proposals in _top_proposals(rpn, [features[f] for f in rpn.in_features]):
            outputs += [top_scores, top_proposals]
        outputs += [features[f] for f in heads.box_in_features]
        logits, deltas = heads.box_predictor(heads.box_head(roi_features))
        boxes = heads.box_predictor.box2box_transform.apply_deltas(deltas, proposals)
        return (*outputs, logits.softmax(dim=-1), boxes)
