"""Two-stage family (Faster R-CNN): detection losses with RoI sampling done once, and RoI-level KD through a
box head. Every stream works on the RoIs that the student's RoI head sampled for its own loss (the authors draw
a fresh sample per KD term: the same in expectation, docs/method.md)."""
from typing import Dict, List, Tuple

import torch
from detectron2.modeling import GeneralizedRCNN, StandardROIHeads
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from ..losses import roi_box_kd, roi_cls_divisor, roi_cls_kd


class RoIFamily:
    head_prefix = "roi_heads."  # where a GeneralizedRCNN keeps its RoI heads in a state dict

    def __init__(
        self, student: GeneralizedRCNN, temperature: float, cls_weight: float, cls_reduction: str
    ):
        rh = student.roi_heads
        if type(rh) is not StandardROIHeads or rh.mask_on or rh.keypoint_on:
            raise ValueError(
                "DS2D2's two-stage family needs MODEL.ROI_HEADS.NAME 'StandardROIHeads' without mask or "
                f"keypoint heads; got {type(rh).__name__} "
                f"(MASK_ON={rh.mask_on}, KEYPOINT_ON={rh.keypoint_on})."
            )
        self.student = student
        self.temperature = temperature
        self.cls_weight = cls_weight
        roi_cls_divisor(cls_reduction, 1, 1)  # an unknown reduction fails when the model is built
        self.cls_reduction = cls_reduction

    @property
    def num_classes(self) -> int:
        return self.student.roi_heads.num_classes

    @staticmethod
    def head_of(detector: GeneralizedRCNN) -> nn.Module:
        return detector.roi_heads

    def head_in_features(self) -> List[str]:
        return list(self.student.roi_heads.box_in_features)

    def detection_losses(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict]:
        """RPN + box-head losses of the student, plus the sampled RoIs (and their pooled student features).

        The student's own RPN labels the anchors, so the distiller trains with the config's matcher
        (``DS2D2RPN``: ``MODEL.RPN.LOW_QUALITY_MIN_IOU``), as the student trained alone does.
        """
        s = self.student
        rh = s.roi_heads
        proposals, losses = s.proposal_generator(images, features, gt_instances)
        sampled = rh.label_and_sample_proposals(proposals, gt_instances)
        rois = [p.proposal_boxes for p in sampled]
        feats = [features[f] for f in rh.box_in_features]
        pooled = rh.box_pooler(feats, rois)
        losses.update(rh.box_predictor.losses(rh.box_predictor(rh.box_head(pooled)), sampled))
        return losses, {
            "rois": rois,
            "num_images": len(gt_instances),
            "student_feats": feats,
            "student_pooled": pooled,
            "student_pooler": repr(rh.box_pooler),
        }

    def kd_loss(
        self, head: nn.Module, student_feats: List[Tensor], teacher_feats: List[Tensor], targets: Dict
    ) -> Tensor:
        """Temperature KL on the class scores (reduced over the sampled RoIs as ``cls_reduction`` says) +
        weighted L1 on the teacher-argmax class's deltas.

        ``head`` is a frozen StandardROIHeads. When ``student_feats`` are the very tensors the student pooled
        for its own loss and the poolers agree, those pooled RoI features are reused instead of pooled again.
        """
        rois = targets["rois"]
        same_feats = len(student_feats) == len(targets["student_feats"]) and all(
            a is b for a, b in zip(student_feats, targets["student_feats"])
        )
        if same_feats and repr(head.box_pooler) == targets["student_pooler"]:
            s_pooled = targets["student_pooled"]
        else:
            s_pooled = head.box_pooler(student_feats, rois)
        s_scores, s_deltas = head.box_predictor(head.box_head(s_pooled))
        with torch.no_grad():
            t_scores, t_deltas = head.box_predictor(head.box_head(head.box_pooler(teacher_feats, rois)))
        divisor = roi_cls_divisor(self.cls_reduction, s_scores.shape[0], targets["num_images"])
        cls = roi_cls_kd(s_scores, t_scores, temperature=self.temperature, divisor=divisor)
        return self.cls_weight * cls + roi_box_kd(s_deltas, t_deltas, t_scores)
