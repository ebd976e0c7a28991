"""What every detector family provides: the interface (``DetectorFamily``) and the head predictions it
returns (``HeadPredictions``). A family describes a detector, nothing of any distillation method: the
detector's own losses with the targets (matching / sampling) they used, the same targets computed without
losses (for a teacher), its head's predictions on given features at given targets, box decoding, the class
count and the FPN levels its head reads. Each family also has a typed targets dataclass (``AnchorTargets``
in retinanet.py, ``RoITargets`` in rcnn.py).

Boxes have ``box_dim`` numbers: 4 for the horizontal families (xyxy, input pixels), 5 for the rotated ones
(rotated_retinanet.py, rotated_rcnn.py: XYWHA, centre and size in input pixels, angle in degrees CCW,
Detectron2's ``RotatedBoxes``), in their anchors, RoIs, box deltas and decoded boxes alike."""
from dataclasses import dataclass
from typing import Any, Dict, List, Protocol, Tuple

from detectron2.structures import ImageList, Instances
from torch import Tensor, nn


@dataclass
class HeadPredictions:
    """A head's outputs at one set of targets, one row per prediction.

    RetinaNet: one row per (image, anchor), image-major over every level's anchors, ``class_logits``
    [B*A, K] (sigmoid logits), ``box_deltas`` [B*A, D]. Faster R-CNN: one row per sampled RoI (images in
    order), ``class_logits`` [R, K+1] (softmax logits, background last), ``box_deltas`` [R, D*K] (or [R, D]
    class-agnostic). D is the family's ``box_dim``: 4 deltas (dx, dy, dw, dh), or 5 for rotated boxes
    (dx, dy, dw, dh, dangle in radians, Detectron2's ``Box2BoxTransformRotated``).
    """

    class_logits: Tensor
    box_deltas: Tensor


class DetectorFamily(Protocol):
    """What the distiller and its terms need from a detector kind (see the module docstring)."""

    kind: str  # the detector's meta-architecture name, e.g. "RetinaNet" (rotated R-CNN: + "/RROIHeads")
    box_dim: int  # numbers per box: 4 (xyxy) or 5 (XYWHA, rotated)
    head_prefix: str  # where the detector keeps its head in a state dict, e.g. "head."
    detector: nn.Module
    levels: List[str]  # the FPN levels ``predict`` reads (the head's own, or fewer: ``family_for``)

    @property
    def num_classes(self) -> int:
        """Foreground classes the detector predicts."""

    @property
    def head(self) -> nn.Module:
        """The detector's head that ``predict`` runs (RetinaNetHead / StandardROIHeads)."""

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Any, HeadPredictions]:
        """The detector's own losses on its ``features``, the targets they used and its head's predictions
        there (kept, so that no term runs the student's head again)."""

    def kd_targets(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Any:
        """The targets of this kind for ``gt_instances`` from the detector's own matcher / proposals on its
        ``features``, without losses (a teacher of another kind than the student's)."""

    def predict(self, head: nn.Module, features: Dict[str, Tensor], targets: Any) -> HeadPredictions:
        """``head`` (this family's kind, e.g. the detector's or an amplifier) on ``features`` (name -> [B, C,
        H, W], ``levels`` used) at ``targets``. Gradients flow as the caller's context allows."""

    def decode_boxes(self, deltas: Tensor, targets: Any) -> Tensor:
        """``predict``'s box deltas -> boxes in input pixels, one per ``box_dim`` deltas: [B*A, D] (RetinaNet,
        on the anchors) or [R, D*K] (Faster R-CNN, on the RoIs); xyxy when D = 4, XYWHA (angle in degrees)
        when D = 5."""
