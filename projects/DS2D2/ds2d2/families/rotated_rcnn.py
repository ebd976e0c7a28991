"""Rotated Faster R-CNN family (a GeneralizedRCNN with Detectron2's RROIHeads and RRPN): the Faster R-CNN
family on rotated RoIs.

Everything the Faster R-CNN family does carries over (RROIHeads samples its rotated proposals with the
rotated IoU and pools them with ROIAlignRotated), with 5 numbers per box: ``RoITargets.rois`` are
``RotatedBoxes`` (XYWHA, angle in degrees CCW), ``HeadPredictions.box_deltas`` [R, 5K] (or [R, 5]
class-agnostic: dx, dy, dw, dh, dangle in radians) and ``decode_boxes`` -> XYWHA boxes of that shape, with
the predictor's ``Box2BoxTransformRotated``."""
from detectron2.modeling.roi_heads import RROIHeads

from .rcnn import RCNNFamily


class RotatedRCNNFamily(RCNNFamily):
    """A GeneralizedRCNN with RROIHeads (see ``RCNNFamily`` and the module docstring)."""

    kind = "GeneralizedRCNN/RROIHeads"
    box_dim = 5
    roi_heads_type = RROIHeads
