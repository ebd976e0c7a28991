"""The FPN levels FGD and MGD distil by default, as their official code hooks them: the outputs of the FPN's
convs (mmdet ``neck.fpn_convs``). RetinaNet's P6 and P7 are convs (P3-P7 distilled); Faster R-CNN's P6 is a
stride-2 subsample of P5 (``LastLevelMaxPool``), not distilled (P2-P5)."""
from typing import List

from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .base import TermContext


def conv_levels(context: TermContext) -> List[str]:
    """``context.in_features`` (``MODEL.DS2D2.IN_FEATURES``, or every student level) without the levels
    that the student's FPN max-pools from another (its ``LastLevelMaxPool`` top block's outputs, the
    coarsest ones). Without a family (a term built alone), ``context.in_features`` as they are."""
    if context.family is None:
        return list(context.in_features)
    backbone = context.family.student.backbone
    top_block = getattr(backbone, "top_block", None)
    if not isinstance(top_block, LastLevelMaxPool):
        return list(context.in_features)
    shapes = context.student_shapes
    pooled = sorted(shapes, key=lambda f: shapes[f].stride)[-top_block.num_levels:]
    return [f for f in context.in_features if f not in pooled]
