"""Dense family (RetinaNet): detection losses with anchor matching done once, and prediction KD through a
head.

The matching of the student's own loss (``label_anchors``) is reused by both implicit streams: its labels say
which anchors are ignored (label -1) and how many are positive (the normaliser of the KD terms).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.modeling import RetinaNet
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ..losses import dense_box_kd, dense_cls_kd


def per_anchor(predictions: List[Tensor], dim: int) -> Tensor:
    """Per-level head outputs [B, A*dim, H_l, W_l] -> [B, sum_l H_l*W_l*A, dim], in the anchors' order."""
    return torch.cat([permute_to_N_HWA_K(x, dim) for x in predictions], dim=1)


class DenseFamily:
    head_prefix = "head."  # where a RetinaNet keeps its head in a state dict

    def __init__(self, student: RetinaNet, beta: float):
        self.student = student
        self.beta = beta

    @property
    def num_classes(self) -> int:
        return self.student.num_classes

    @staticmethod
    def head_of(detector: RetinaNet) -> nn.Module:
        return detector.head

    def head_in_features(self) -> List[str]:
        return list(self.student.head_in_features)

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict]:
        """The student's RetinaNet losses, plus the anchors and anchor labels the KD terms reuse."""
        s = self.student
        feats = [features[f] for f in s.head_in_features]
        anchors = s.anchor_generator(feats)
        cls_out, box_out = s.head(feats)
        logits = [permute_to_N_HWA_K(x, s.num_classes) for x in cls_out]
        deltas = [permute_to_N_HWA_K(x, 4) for x in box_out]
        gt_labels, gt_boxes = s.label_anchors(anchors, gt_instances)
        losses = s.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        return losses, {"anchors": Boxes.cat(anchors).tensor, "gt_labels": torch.stack(gt_labels)}

    def kd_loss(
        self, head: nn.Module, student_feats: List[Tensor], teacher_feats: List[Tensor], targets: Dict
    ) -> Tensor:
        """Quality-focal classification KD on every non-ignored anchor + GIoU between decoded boxes on every
        anchor (ignored ones included, as the authors), weighted by sigmoid(max teacher logit).

        ``head`` is frozen; gradients reach the student through ``student_feats`` only.
        """
        s = self.student
        dims = [s.num_classes, 4]
        s_logits, s_deltas = (per_anchor(x, d).flatten(0, 1) for x, d in zip(head(student_feats), dims))
        with torch.no_grad():
            t_logits, t_deltas = (per_anchor(x, d).flatten(0, 1) for x, d in zip(head(teacher_feats), dims))
        gt_labels = targets["gt_labels"]  # [B, A]: class, num_classes (background) or -1 (ignored)
        valid = (gt_labels >= 0).flatten()
        num_pos = ((gt_labels >= 0) & (gt_labels != s.num_classes)).sum()
        # [B*A, 4], image-major like the predictions
        anchors = targets["anchors"].repeat(gt_labels.shape[0], 1)
        s_boxes = s.box2box_transform.apply_deltas(s_deltas, anchors)
        with torch.no_grad():
            t_boxes = s.box2box_transform.apply_deltas(t_deltas, anchors)
            box_weight = t_logits.float().sigmoid().amax(dim=1)
        cls = dense_cls_kd(s_logits, t_logits, valid, num_pos, beta=self.beta)
        return cls + dense_box_kd(s_boxes, t_boxes, box_weight, num_pos)
