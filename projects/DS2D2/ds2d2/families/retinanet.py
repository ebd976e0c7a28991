"""RetinaNet family: the detector's losses with anchor matching done once, its anchors labelled for a given
set of boxes, and its head's per-anchor predictions on given features."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import CycleBatchNormList
from detectron2.modeling import RetinaNet
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from .base import HeadPredictions


def per_anchor(predictions: List[Tensor], dim: int) -> Tensor:
    """Per-level head outputs [B, A*dim, H_l, W_l] -> [B, sum_l H_l*W_l*A, dim], in the anchors' order."""
    return torch.cat([permute_to_N_HWA_K(x, dim) for x in predictions], dim=1)


@dataclass
class AnchorTargets:
    """A RetinaNet's anchors and their labels for one batch.

    ``anchors`` [A, 4] xyxy (or [A, 5] XYWHA for a rotated RetinaNet) in input pixels: every level's anchors
    of one image, in the head's order (levels, then H, W, cell anchor). ``gt_labels`` [B, A]: the matched
    class in [0, K), K (``num_classes``) for background, -1 for ignored (the matcher's between-thresholds
    band).
    """

    anchors: Tensor
    gt_labels: Tensor
    num_classes: int

    @property
    def valid(self) -> Tensor:
        """[B*A] bool, image-major like ``HeadPredictions``' rows: the anchor is not ignored."""
        return (self.gt_labels >= 0).flatten()

    @property
    def num_pos(self) -> Tensor:
        """The number of foreground anchors in the batch (a 0-dim integer tensor)."""
        return ((self.gt_labels >= 0) & (self.gt_labels != self.num_classes)).sum()

    @property
    def anchors_per_row(self) -> Tensor:
        """[B*A, 4] (or [B*A, 5]): the anchor of each ``HeadPredictions`` row."""
        return self.anchors.repeat(self.gt_labels.shape[0], 1)


class RetinaNetFamily:
    """A ``RetinaNet`` (see ``DetectorFamily``). ``levels``: the head's input levels, or a prefix of them
    (a teacher whose last levels the student lacks: its anchors are generated for those levels only)."""

    kind = "RetinaNet"
    head_prefix = "head."
    box_dim = 4  # box deltas per anchor (rotated_retinanet.py: 5)

    def __init__(self, detector: RetinaNet, levels: Optional[Sequence[str]] = None):
        own = list(detector.head_in_features)
        self.levels = list(levels) if levels is not None else own
        if not self.levels or self.levels != own[:len(self.levels)]:
            raise ValueError(
                f"A RetinaNet's head can run on the first of its levels {own} only (its anchors are "
                f"generated level by level in that order); got {self.levels}."
            )
        if self.levels != own and any(isinstance(m, CycleBatchNormList) for m in detector.head.modules()):
            raise ValueError(
                f"A RetinaNet head with per-level norms (MODEL.RETINANET.NORM set) runs on all its levels "
                f"{own} only; the student lacks {own[len(self.levels):]}. Set the teacher's "
                "MODEL.RETINANET.NORM to '' or give the student those levels."
            )
        self.detector = detector

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def head(self) -> nn.Module:
        return self.detector.head

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], AnchorTargets, HeadPredictions]:
        """The RetinaNet losses on all its head's levels, the anchors and labels they used, and the head's
        predictions there."""
        d = self.detector
        feats = [features[f] for f in d.head_in_features]
        anchors = d.anchor_generator(feats)
        cls_out, box_out = d.head(feats)
        logits = [permute_to_N_HWA_K(x, d.num_classes) for x in cls_out]
        deltas = [permute_to_N_HWA_K(x, self.box_dim) for x in box_out]
        gt_labels, gt_boxes = d.label_anchors(anchors, gt_instances)
        losses = d.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        targets = AnchorTargets(type(anchors[0]).cat(anchors).tensor, torch.stack(gt_labels), d.num_classes)
        predictions = HeadPredictions(
            torch.cat(logits, dim=1).flatten(0, 1), torch.cat(deltas, dim=1).flatten(0, 1)
        )
        return losses, targets, predictions

    def kd_targets(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> AnchorTargets:
        """The anchors of ``levels`` labelled by the detector's own matcher for ``gt_instances``."""
        d = self.detector
        anchors = d.anchor_generator([features[f] for f in self.levels])
        gt_labels, _ = d.label_anchors(anchors, gt_instances)
        return AnchorTargets(type(anchors[0]).cat(anchors).tensor, torch.stack(gt_labels), d.num_classes)

    def predict(
        self, head: nn.Module, features: Dict[str, Tensor], targets: AnchorTargets
    ) -> HeadPredictions:
        """A RetinaNetHead on the ``levels`` of ``features``: [B*A, K] logits and [B*A, D] deltas (D =
        ``box_dim``)."""
        feats = [features[f] for f in self.levels]
        if len(feats) == len(self.detector.head_in_features):
            cls_out, box_out = head(feats)
        else:  # RetinaNetHead.forward, on fewer levels than it was built for (no per-level norm: __init__)
            cls_out = [head.cls_score(head.cls_subnet(x)) for x in feats]
            box_out = [head.bbox_pred(head.bbox_subnet(x)) for x in feats]
        logits, deltas = per_anchor(cls_out, self.num_classes), per_anchor(box_out, self.box_dim)
        if logits.shape[1] != targets.gt_labels.shape[1]:
            raise ValueError(
                f"The head predicts {logits.shape[1]} anchors per image on {self.levels}, the targets label "
                f"{targets.gt_labels.shape[1]}: both must come from the same anchor generator and levels."
            )
        return HeadPredictions(logits.flatten(0, 1), deltas.flatten(0, 1))

    def decode_boxes(self, deltas: Tensor, targets: AnchorTargets) -> Tensor:
        """[B*A, D] deltas -> [B*A, D] boxes on the anchors (D = ``box_dim``), with the detector's box
        transform."""
        return self.detector.box2box_transform.apply_deltas(deltas, targets.anchors_per_row)
