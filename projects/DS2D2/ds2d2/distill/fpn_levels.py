"""The FPN levels FGD and MGD distil by default, as their official code hooks them: the outputs of the FPN's
convs (mmdet ``neck.fpn_convs``). RetinaNet's P6 and P7 are convs (P3-P7 distilled); Faster R-CNN's P6 is a
stride-2 subsample of P5 (``LastLevelMaxPool``), not distilled (P2-P5). Across families, a level that either
model max-pools is left out (a Faster R-CNN teacher's P6 for a RetinaNet student: P3-P5)."""
from typing import List, Set

from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from .base import TermContext


def max_pooled_levels(detector: nn.Module) -> Set[str]:
    """The levels ``detector``'s FPN max-pools from another (its ``LastLevelMaxPool`` top block's outputs,
    the coarsest ones); none without such a block."""
    backbone = detector.backbone
    top_block = getattr(backbone, "top_block", None)
    if not isinstance(top_block, LastLevelMaxPool):
        return set()
    shapes = backbone.output_shape()
    return set(sorted(shapes, key=lambda f: shapes[f].stride)[-top_block.num_levels:])


def conv_levels(context: TermContext) -> List[str]:
    """``context.in_features`` (``MODEL.DS2D2.IN_FEATURES``, or the levels both models have) without the
    levels that the student's or the teacher's FPN max-pools. Without models (a term built alone),
    ``context.in_features`` as they are."""
    pooled = set()
    if context.student_family is not None:
        pooled |= max_pooled_levels(context.student_family.detector)
    if context.teacher is not None:
        pooled |= max_pooled_levels(context.teacher)
    return [f for f in context.in_features if f not in pooled]
