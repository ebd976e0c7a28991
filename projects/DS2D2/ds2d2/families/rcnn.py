"""Faster R-CNN family (a GeneralizedRCNN with StandardROIHeads): the detector's losses with RoI sampling done
once, RoIs sampled from its own proposals for a given set of boxes, and its box head's per-RoI predictions on
given features."""
import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.modeling import GeneralizedRCNN, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from .base import HeadPredictions


@dataclass
class RoITargets:
    """The RoIs of one batch, sampled against the ground truth by a RoI head's sampler.

    ``rois``: per image, the sampled proposal boxes (input pixels; R rows in all): ``Boxes`` (xyxy), or
    ``RotatedBoxes`` (XYWHA) for rotated RoI heads. ``num_images``: B.
    When the student's own loss sampled them, ``pooled`` [R, C, S, S] holds the student features it pooled
    there from ``pooled_from`` (its levels, in pooler order) with a pooler of repr ``pooler``, reused by
    ``predict`` when asked for the same tensors with an equal pooler; otherwise all three are None.
    """

    rois: List[Boxes]
    num_images: int
    pooled: Optional[Tensor] = None
    pooled_from: Optional[List[Tensor]] = None
    pooler: Optional[str] = None


def pooler_for_levels(pooler: ROIPooler, all_levels: List[str], levels: List[str]) -> ROIPooler:
    """``pooler`` (built for ``all_levels``) restricted to ``levels``, consecutive ones among them: a RoI the
    full pooler assigns to a missing finer (coarser) level is pooled from the finest (coarsest) one kept."""
    index = [all_levels.index(f) for f in levels]
    if index != list(range(index[0], index[0] + len(index))):
        raise ValueError(f"A RoI pooler needs consecutive levels out of {all_levels}; got {levels}.")
    restricted = copy.deepcopy(pooler)
    restricted.level_poolers = nn.ModuleList(restricted.level_poolers[i] for i in index)
    restricted.min_level = pooler.min_level + index[0]
    restricted.max_level = restricted.min_level + len(index) - 1
    return restricted


class RCNNFamily:
    """A GeneralizedRCNN with StandardROIHeads (see ``DetectorFamily``). ``levels``: the box head's input
    levels, or consecutive ones of them (a teacher whose finest or coarsest levels the student lacks: its
    pooler then pools only from those)."""

    kind = "GeneralizedRCNN"
    head_prefix = "roi_heads."
    box_dim = 4  # box deltas per class (rotated_rcnn.py: 5)
    roi_heads_type = StandardROIHeads  # the one RoI head class the family reads (rotated_rcnn.py: RROIHeads)

    def __init__(self, detector: GeneralizedRCNN, levels: Optional[Sequence[str]] = None):
        rh = detector.roi_heads
        if type(rh) is not self.roi_heads_type or rh.mask_on or rh.keypoint_on:
            raise ValueError(
                f"The two-stage family {self.kind} needs MODEL.ROI_HEADS.NAME "
                f"'{self.roi_heads_type.__name__}' without mask or keypoint heads; got {type(rh).__name__} "
                f"(MASK_ON={rh.mask_on}, KEYPOINT_ON={rh.keypoint_on})."
            )
        self.detector = detector
        own = list(rh.box_in_features)
        self.levels = list(levels) if levels is not None else own
        if not self.levels or any(f not in own for f in self.levels):
            raise ValueError(f"The RoI head reads {own}; got levels {self.levels}.")
        if self.levels == own:
            self.pooler = rh.box_pooler
        else:
            self.pooler = pooler_for_levels(rh.box_pooler, own, self.levels)

    @property
    def num_classes(self) -> int:
        return self.detector.roi_heads.num_classes

    @property
    def head(self) -> nn.Module:
        return self.detector.roi_heads

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], RoITargets, HeadPredictions]:
        """RPN + box-head losses, the RoIs sampled for them (and the student features pooled there), and the
        box predictor's outputs on them.

        The detector's own RPN labels the anchors, so a ``DS2D2RPN`` trains with the config's matcher
        (``MODEL.RPN.LOW_QUALITY_MIN_IOU``), as the detector trained alone does.
        """
        d, rh = self.detector, self.detector.roi_heads
        proposals, losses = d.proposal_generator(images, features, gt_instances)
        sampled = rh.label_and_sample_proposals(proposals, gt_instances)
        rois = [p.proposal_boxes for p in sampled]
        feats = [features[f] for f in rh.box_in_features]
        pooled = rh.box_pooler(feats, rois)
        scores, deltas = rh.box_predictor(rh.box_head(pooled))
        losses.update(rh.box_predictor.losses((scores, deltas), sampled))
        targets = RoITargets(rois, len(gt_instances), pooled, feats, repr(rh.box_pooler))
        return losses, targets, HeadPredictions(scores, deltas)

    def kd_targets(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> RoITargets:
        """RoIs from the detector's own proposals (its RPN on its ``features``, in the detector's current
        mode: test-time top-k for a frozen teacher), sampled against ``gt_instances`` by its RoI head's
        sampler (ground-truth boxes added as proposals, ROI_HEADS.BATCH_SIZE_PER_IMAGE and
        POSITIVE_FRACTION as in its training)."""
        d = self.detector
        proposals, _ = d.proposal_generator(images, features, gt_instances if d.training else None)
        sampled = d.roi_heads.label_and_sample_proposals(proposals, gt_instances)
        return RoITargets([p.proposal_boxes for p in sampled], len(gt_instances))

    def predict(self, head: nn.Module, features: Dict[str, Tensor], targets: RoITargets) -> HeadPredictions:
        """A StandardROIHeads' (RROIHeads') box head and predictor on the ``levels`` of ``features`` pooled
        at the RoIs: [R, K+1] scores and [R, D*K] deltas (D = ``box_dim``). The student's pooled features of
        ``targets`` are reused when ``features`` are the very tensors they were pooled from with an equal
        pooler."""
        feats = [features[f] for f in self.levels]
        reuse = (
            targets.pooled is not None and len(feats) == len(targets.pooled_from)
            and all(a is b for a, b in zip(feats, targets.pooled_from))
            and repr(self.pooler) == targets.pooler
        )
        pooled = targets.pooled if reuse else self.pooler(feats, targets.rois)
        scores, deltas = head.box_predictor(head.box_head(pooled))
        return HeadPredictions(scores, deltas)

    def decode_boxes(self, deltas: Tensor, targets: RoITargets) -> Tensor:
        """[R, D*K] (or [R, D]) deltas -> boxes of the same shape on the RoIs, with the predictor's
        transform."""
        rois = type(targets.rois[0]).cat(targets.rois).tensor
        return self.detector.roi_heads.box_predictor.box2box_transform.apply_deltas(deltas, rois)
