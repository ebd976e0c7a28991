"""The RPN with MMDetection's rule for low-quality matches: an object's best anchor becomes a positive only
when its IoU reaches a minimum (``MODEL.RPN.LOW_QUALITY_MIN_IOU``; the authors' ``min_pos_iou=0.3``).

Detectron2's RPN makes the best anchor(s) of every object positive whatever their IoU, so an object smaller
than about 17 x 17 px (IoU < 0.3 with a 32 px anchor) still gets RPN positives there and none in the authors'
code. ``DS2D2RPN`` is Detectron2's ``RPN`` with that one matcher swapped: same submodules and tensor names
(checkpoints load either way), same inference; the matcher only labels anchors for the training loss.
"""
from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, nonzero_tuple
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.rpn import RPN

from .config import config_number

MIN_IOU_KEY = "MODEL.RPN.LOW_QUALITY_MIN_IOU"


class MinIoULowQualityMatcher(Matcher):
    """Detectron2's ``Matcher`` whose low-quality matches need ``IoU >= min_iou``.

    For every object whose best IoU over the predictions is >= ``min_iou``, each prediction reaching that best
    IoU (ties included) is labelled 1, as Detectron2 does for every object; objects below ``min_iou`` add no
    positive. ``min_iou = 0`` is exactly Detectron2's ``Matcher``. As in Detectron2 (and unlike MMDetection,
    which also re-points the anchor at that object), the matched object index stays the anchor's best object.
    """

    def __init__(self, thresholds: List[float], labels: List[int], min_iou: float):
        super().__init__(thresholds, labels, allow_low_quality_matches=True)
        self.min_iou = min_iou

    def set_low_quality_matches_(self, match_labels: torch.Tensor, match_quality_matrix: torch.Tensor):
        """``match_labels`` [N] int8, set in place; ``match_quality_matrix`` [M objects, N predictions]."""
        highest_quality_foreach_gt, _ = match_quality_matrix.max(dim=1)
        is_best = match_quality_matrix == highest_quality_foreach_gt[:, None]
        is_best &= (highest_quality_foreach_gt >= self.min_iou)[:, None]
        _, pred_inds_with_highest_quality = nonzero_tuple(is_best)
        match_labels[pred_inds_with_highest_quality] = 1


def low_quality_min_iou(cfg: CfgNode) -> float:
    """``MODEL.RPN.LOW_QUALITY_MIN_IOU`` checked to lie in [0, 1]."""
    value = config_number(cfg.MODEL.RPN.LOW_QUALITY_MIN_IOU, MIN_IOU_KEY)
    if value > 1:
        raise ValueError(
            f"{MIN_IOU_KEY} must lie in [0, 1] (an IoU: 0.3 as MMDetection's RPN, 0 as Detectron2's), "
            f"got {value}."
        )
    return value


@PROPOSAL_GENERATOR_REGISTRY.register()
class DS2D2RPN(RPN):
    """Detectron2's RPN labelling its anchors with ``MinIoULowQualityMatcher(MODEL.RPN.LOW_QUALITY_MIN_IOU)``
    (``MODEL.PROPOSAL_GENERATOR.NAME: "DS2D2RPN"``)."""

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret["anchor_matcher"] = MinIoULowQualityMatcher(
            cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS, low_quality_min_iou(cfg)
        )
        return ret
