"""Rotated RetinaNet (``MODEL.META_ARCHITECTURE: "RotatedRetinaNet"``): Detectron2's RetinaNet predicting
oriented boxes (cx, cy, w, h, angle in degrees CCW, Detectron2's ``RotatedBoxes``). Detectron2 has no such
model; this one changes only what the box kind needs and keeps RetinaNet's tensor names, so its checkpoints
are plain Detectron2 checkpoints of this registered meta-architecture.

Anchors. ``RotatedAnchorGenerator`` (``MODEL.ANCHOR_GENERATOR.NAME``) with ``ANGLES [[0]]`` in the configs:
RetinaNet's horizontal anchors (3 scales x 3 ratios per location), written as rotated boxes of angle 0,
matched to the objects' oriented boxes with the exact rotated IoU (Detectron2's ``pairwise_iou_rotated``)
and regressed to them with 5-d deltas (``Box2BoxTransformRotated``: dx, dy, dw, dh and the angle difference
in radians). This is the setting MMRotate reports 68.4 Task-1 mAP with on DOTA v1.0 (R-50, 1x, "obb"
RetinaNet): its anchor generator makes horizontal anchors of angle 0 and its assigner uses the rotated IoU;
its "hbb" variant instead matches the anchors to the objects' horizontal hulls with the horizontal IoU and
scores lower (64.6). Horizontal anchors keep the anchor count, the head and its initialisation of RetinaNet;
setting more ANGLES gives rotated anchors (ANGLES x 9 per location) with no code change.

Regression targets. A rectangle has four (w, h, angle) spellings within a turn: (w, h, a), (w, h, a + 180)
and (h, w, a +- 90). Each anchor regresses to the spelling of its object whose angle is nearest its own
(angle delta in [-45, 45) degrees), so the target does not depend on how the data wrote the angle and never
asks for a quarter turn where swapping width and height does it (MMRotate's ``edge_swap``).

The rest is RetinaNet's: focal loss on every non-ignored anchor, L1 (smooth L1, ``SMOOTH_L1_LOSS_BETA``) on
the positives, both over the EMA of the positive count; ``MODEL.RETINANET.IOU_THRESHOLDS`` with low-quality
matches; at test, per level the ``TOPK_CANDIDATES_TEST`` scores above ``SCORE_THRESH_TEST``, then class-wise
rotated NMS (``batched_nms_rotated``, ``NMS_THRESH_TEST``) and ``TEST.DETECTIONS_PER_IMAGE``.
"""
from typing import Dict, List, Tuple

import torch
from detectron2 import layers
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransformRotated
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import ImageList, Instances, RotatedBoxes, pairwise_iou_rotated
from torch import Tensor, nn

__all__ = ["RotatedRetinaNet", "RotatedRetinaNetHead", "nearest_spelling", "check_rotated_retinanet_config"]

BOX_DIM = 5  # (cx, cy, w, h, angle)


def check_rotated_retinanet_config(cfg) -> None:
    """Raise ValueError naming the key when a config cannot build a RotatedRetinaNet: anchors must be
    RotatedAnchorGenerator's, MODEL.RETINANET.BBOX_REG_WEIGHTS five numbers, the box loss "smooth_l1"."""
    name = cfg.MODEL.ANCHOR_GENERATOR.NAME
    if name != "RotatedAnchorGenerator":
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.NAME is {name!r}: RotatedRetinaNet needs rotated anchors, set it to "
            "'RotatedAnchorGenerator' (with MODEL.ANCHOR_GENERATOR.ANGLES [[0]] for horizontal anchors)."
        )
    weights = cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS
    if len(weights) != BOX_DIM:
        raise ValueError(
            f"MODEL.RETINANET.BBOX_REG_WEIGHTS is {tuple(weights)}: RotatedRetinaNet regresses 5 deltas "
            "(dx, dy, dw, dh, dangle); give 5 weights, e.g. (1.0, 1.0, 1.0, 1.0, 1.0)."
        )
    loss = cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE
    if loss != "smooth_l1":
        raise ValueError(
            f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE is {loss!r}: the IoU losses are horizontal-box losses; "
            "RotatedRetinaNet supports 'smooth_l1' (an L1 loss with SMOOTH_L1_LOSS_BETA 0)."
        )


def nearest_spelling(boxes: Tensor, angles: Tensor) -> Tensor:
    """``boxes`` [N, 5] (cx, cy, w, h, angle in degrees) rewritten as the same rectangles whose angle lies
    within [-45, 45) degrees of ``angles`` [N] (width and height swapped where a quarter turn is taken)."""
    delta = torch.remainder(boxes[:, 4] - angles + 90.0, 180.0) - 90.0  # in [-90, 90): a half turn is free
    swap = (delta >= 45.0) | (delta < -45.0)
    delta = torch.where(delta >= 45.0, delta - 90.0, torch.where(delta < -45.0, delta + 90.0, delta))
    width = torch.where(swap, boxes[:, 3], boxes[:, 2])
    height = torch.where(swap, boxes[:, 2], boxes[:, 3])
    return torch.stack([boxes[:, 0], boxes[:, 1], width, height, angles + delta], dim=1)


class RotatedRetinaNetHead(RetinaNetHead):
    """RetinaNet's head (same submodules and names) whose ``bbox_pred`` predicts 5 deltas per anchor."""

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_anchors: int, conv_dims: List[int], **kwargs):
        super().__init__(input_shape=input_shape, num_anchors=num_anchors, conv_dims=conv_dims, **kwargs)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], num_anchors * BOX_DIM, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.bbox_pred.weight, mean=0, std=0.01)  # RetinaNet's initialisation
        nn.init.constant_(self.bbox_pred.bias, 0)


@META_ARCH_REGISTRY.register()
class RotatedRetinaNet(RetinaNet):
    """RetinaNet on ``RotatedBoxes``: training inputs carry ``instances.gt_boxes`` as RotatedBoxes, outputs
    ``pred_boxes`` are RotatedBoxes in the input's pixels. See the module docstring for the anchors."""

    @classmethod
    def from_config(cls, cfg) -> Dict:
        check_rotated_retinanet_config(cfg)
        args = super().from_config(cfg)
        shapes = [args["backbone"].output_shape()[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        args["head"] = RotatedRetinaNetHead(cfg, shapes)
        args["box2box_transform"] = Box2BoxTransformRotated(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS)
        return args

    def forward_training(self, images: ImageList, features: List[Tensor], predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, BOX_DIM]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[RotatedBoxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: anchor labels [R] (class, ``num_classes`` for background, -1 ignored) from the rotated
        IoU, and each anchor's object [R, 5] in its ``nearest_spelling`` (undefined for non-positives)."""
        anchors = RotatedBoxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for gt in gt_instances:
            matched_idxs, anchor_labels = self.anchor_matcher(pairwise_iou_rotated(gt.gt_boxes, anchors))
            if len(gt) > 0:
                boxes = nearest_spelling(gt.gt_boxes.tensor[matched_idxs], anchors.tensor[:, 4])
                labels = gt.gt_classes[matched_idxs]
                labels[anchor_labels == 0] = self.num_classes
                labels[anchor_labels == -1] = -1
            else:
                boxes = torch.zeros_like(anchors.tensor)
                labels = torch.full_like(matched_idxs, self.num_classes)
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def forward_inference(self, images: ImageList, features: List[Tensor], predictions) -> List[Instances]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, BOX_DIM]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors, [x[i].sigmoid() for x in pred_logits], [x[i] for x in pred_anchor_deltas], size
            )
            for i, size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, anchors: List[RotatedBoxes], box_cls: List[Tensor], box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image: per level [HWA, K] scores and [HWA, 5] deltas -> best-first Instances."""
        pred = Instances.cat([
            self._decode_level(a, s, d, image_size) for a, s, d in zip(anchors, box_cls, box_delta)
        ])
        keep = layers.batched_nms_rotated(  # looked up at call time: ds2d2.compat may have replaced it
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]

    def _decode_level(
        self, anchors: RotatedBoxes, scores: Tensor, deltas: Tensor, image_size: Tuple[int, int]
    ) -> Instances:
        """The level's ``test_topk_candidates`` best (anchor, class) scores above ``test_score_thresh``."""
        candidates = scores > self.test_score_thresh
        scores = scores[candidates]
        index = torch.nonzero(candidates)  # [K, 2]: anchor, class
        scores, order = scores.sort(descending=True)
        order = order[: self.test_topk_candidates]
        anchor_idxs, classes = index[order].unbind(dim=1)
        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idxs], anchors.tensor[anchor_idxs])
        return Instances(
            image_size, pred_boxes=RotatedBoxes(boxes), scores=scores[: len(order)], pred_classes=classes
        )
