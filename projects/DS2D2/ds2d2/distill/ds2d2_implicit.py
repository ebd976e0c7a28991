"""DS2D2's implicit stream: prediction KD through two frozen "knowledge amplifiers" (docs/method.md,
"Implicit stream"): the teacher's own head on student and teacher features (l3, ``LOSS.IMPLICIT_FULL``), and
the stage-2 high-frequency head on their high-frequency parts (l4, ``LOSS.IMPLICIT_HIGH``). Both heads are of
the teacher's kind and run at the targets of the teacher's kind (``DistillStep.teacher_targets``: the
student's own when both are of one family; across families, docs/method.md "Mixed families"). The KD
formulas (``ImplicitKD``) are the authors': dense for a RetinaNet teacher, RoI for a Faster R-CNN one; for a
rotated teacher the same, with the rotated box KD of ``box_kd.py`` (docs/method.md "Rotated boxes
(extension)")."""
import copy
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from ..checkpoint import load_state_strictly, read_checkpoint
from ..families import AnchorTargets, DetectorFamily, HeadPredictions, RoITargets
from ..losses import dense_cls_kd, roi_cls_divisor, roi_cls_kd
from ..teacher import freeze
from ..wavelet import high_frequency, high_frequency_from_bands
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext
from .box_kd import DENSE_BOX_KD, ROI_BOX_KD


@dataclass
class ImplicitKD:
    """DS2D2's prediction KD between a head's outputs on student and on teacher features at one set of
    targets (keys ``MODEL.DS2D2.LOSS.{DENSE_BETA, ROI_TEMPERATURE, ROI_CLS_WEIGHT, ROI_CLS_REDUCTION}``).

    - Anchors (RetinaNet): quality-focal classification KD (exponent ``beta``) on every non-ignored anchor
      + GIoU between the decoded boxes on every anchor (ignored ones included, as the authors), weighted by
      sigmoid(max teacher logit); both over the positive anchors. Rotated RetinaNet: ProbIoU in place of
      GIoU (``box_kd.dense_rotated_box_kd``).
    - RoIs (Faster R-CNN): ``cls_weight`` * temperature KL on the class scores (reduced over the RoIs as
      ``cls_reduction`` says) + L1 on the teacher-argmax class's deltas weighted by its probability (5
      deltas for rotated RoI heads: ``losses.roi_box_kd`` with ``box_dim=5``).
    """

    beta: float
    temperature: float
    cls_weight: float
    cls_reduction: str

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "ImplicitKD":
        loss = cfg.MODEL.DS2D2.LOSS
        return cls(float(loss.DENSE_BETA), float(loss.ROI_TEMPERATURE), float(loss.ROI_CLS_WEIGHT),
                   loss.ROI_CLS_REDUCTION)

    def __call__(self, family: DetectorFamily, student: HeadPredictions, teacher: HeadPredictions,
                 targets) -> Tensor:
        """The KD loss (a scalar); ``teacher`` is a constant, gradients reach ``student`` only."""
        if isinstance(targets, AnchorTargets):
            return self.dense(family, student, teacher, targets)
        if isinstance(targets, RoITargets):
            return self.roi(family, student, teacher, targets)
        raise ValueError(
            f"DS2D2's implicit stream has no KD formula for {type(family).__name__}'s targets "
            f"({type(targets).__name__}): add one to ds2d2/distill/ds2d2_implicit.py, or leave "
            "MODEL.DS2D2.LOSS.IMPLICIT_FULL and IMPLICIT_HIGH at 0."
        )

    def dense(self, family: DetectorFamily, student: HeadPredictions, teacher: HeadPredictions,
              targets: AnchorTargets) -> Tensor:
        num_pos = targets.num_pos
        s_boxes = family.decode_boxes(student.box_deltas, targets)
        with torch.no_grad():
            t_boxes = family.decode_boxes(teacher.box_deltas, targets)
            box_weight = teacher.class_logits.float().sigmoid().amax(dim=1)
        cls = dense_cls_kd(student.class_logits, teacher.class_logits, targets.valid, num_pos, beta=self.beta)
        return cls + DENSE_BOX_KD[family.box_dim](s_boxes, t_boxes, box_weight, num_pos)

    def roi(self, family: DetectorFamily, student: HeadPredictions, teacher: HeadPredictions,
            targets: RoITargets) -> Tensor:
        s_scores, t_scores = student.class_logits, teacher.class_logits
        divisor = roi_cls_divisor(self.cls_reduction, s_scores.shape[0], targets.num_images)
        cls = roi_cls_kd(s_scores, t_scores, temperature=self.temperature, divisor=divisor)
        box = ROI_BOX_KD[family.box_dim](student.box_deltas, teacher.box_deltas, t_scores)
        return self.cls_weight * cls + box


@DISTILL_TERM_REGISTRY.register()
class DS2D2Implicit(DistillTerm):
    """``loss_ds2d2_im_full`` = l3 * KD(teacher head) and ``loss_ds2d2_im_high`` = l4 * KD(amplifier head)
    (a zero weight drops its key; l4 = 0 needs no amplifier file)."""

    @staticmethod
    def enabled(cfg: CfgNode) -> bool:
        return cfg.MODEL.DS2D2.LOSS.IMPLICIT_FULL > 0 or cfg.MODEL.DS2D2.LOSS.IMPLICIT_HIGH > 0

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        ds = cfg.MODEL.DS2D2
        self.full_weight, self.high_weight = float(ds.LOSS.IMPLICIT_FULL), float(ds.LOSS.IMPLICIT_HIGH)
        self.wave = ds.WAVELET
        self.kd = ImplicitKD.from_config(cfg)
        family = context.teacher_family
        self.levels = list(family.levels)
        mode = ds.IMPLICIT_INPUT
        widths_differ = context.student_width != context.teacher_width
        if mode == "raw" and widths_differ:
            raise ValueError(
                "MODEL.DS2D2.IMPLICIT_INPUT='raw' needs equal FPN widths; "
                f"student {context.student_width}, teacher {context.teacher_width}. Use 'adapted' or 'auto'."
            )
        self.adapted_input = mode == "adapted" or (mode == "auto" and widths_differ)
        self._shared = {"adapters": context.adapters() if self.adapted_input else None}  # the distiller's

        amplifier = None
        if self.high_weight > 0:
            amplifier = freeze(copy.deepcopy(family.head))
            key = "MODEL.DS2D2.AMPLIFIER_WEIGHTS"
            prefix = "detector." + family.head_prefix
            load_state_strictly(
                amplifier, read_checkpoint(ds.AMPLIFIER_WEIGHTS, key), key, ds.AMPLIFIER_WEIGHTS, prefix
            )
        self._frozen = {"amplifier": amplifier}  # see DistillTerm

    @property
    def amplifier_head(self) -> Optional[nn.Module]:
        return self._frozen["amplifier"]

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        adapters = self._shared["adapters"]
        student = step.adapted(adapters) if adapters is not None else step.student_feats
        family, targets = step.teacher_family, step.teacher_targets
        losses = {}
        if self.full_weight > 0:
            s_full = step.head_predictions(family.head, student)
            full = self.kd(family, s_full, step.teacher_predictions(), targets)
            losses["loss_ds2d2_im_full"] = self.full_weight * full
        if self.high_weight > 0:
            s_high_freq = {f: high_frequency(student[f], self.wave) for f in self.levels}
            with torch.no_grad():
                t_high_freq = {
                    f: high_frequency_from_bands(
                        step.teacher_bands(f, self.wave)[1], tuple(step.teacher_feats[f].shape[-2:])
                    )
                    for f in self.levels
                }
                t_high = step.head_predictions(self.amplifier_head, t_high_freq)
            s_high = step.head_predictions(self.amplifier_head, s_high_freq)
            losses["loss_ds2d2_im_high"] = self.high_weight * self.kd(family, s_high, t_high, targets)
        return losses
