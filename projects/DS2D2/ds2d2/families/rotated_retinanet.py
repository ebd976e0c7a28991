"""Rotated RetinaNet family (``ds2d2.modeling.RotatedRetinaNet``): the RetinaNet family on rotated anchors.

Everything the RetinaNet family does carries over (the detector's ``label_anchors`` and ``losses`` are the
rotated ones), with 5 numbers per box: ``AnchorTargets.anchors`` [A, 5] XYWHA (angle in degrees CCW),
``HeadPredictions.box_deltas`` [B*A, 5] (dx, dy, dw, dh, dangle in radians) and ``decode_boxes`` -> [B*A, 5]
XYWHA boxes, with the detector's ``Box2BoxTransformRotated``."""
from ..modeling.rotated_retinanet import BOX_DIM
from .retinanet import RetinaNetFamily


class RotatedRetinaNetFamily(RetinaNetFamily):
    """A ``RotatedRetinaNet`` (see ``RetinaNetFamily`` and the module docstring)."""

    kind = "RotatedRetinaNet"
    box_dim = BOX_DIM
