"""DS2D2's implicit stream: prediction KD through two frozen "knowledge amplifiers" (docs/method.md,
"Implicit stream"): the teacher's own head on student and teacher features (l3, ``LOSS.IMPLICIT_FULL``), and
the stage-2 high-frequency head on their high-frequency parts (l4, ``LOSS.IMPLICIT_HIGH``). The KD itself
(dense or RoI) is the family's ``kd_loss`` at the targets of the student's own detection loss."""
import copy
from typing import Dict, Optional

from detectron2.config import CfgNode
from torch import Tensor, nn

from ..checkpoint import load_state_strictly, read_checkpoint
from ..teacher import freeze
from ..wavelet import high_frequency, high_frequency_from_bands
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext


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
        self.family = context.family
        self.head_features = context.family.head_in_features()
        mode = ds.IMPLICIT_INPUT
        widths_differ = context.student_width != context.teacher_width
        if mode == "raw" and widths_differ:
            raise ValueError(
                "MODEL.DS2D2.IMPLICIT_INPUT='raw' needs equal FPN widths; "
                f"student {context.student_width}, teacher {context.teacher_width}. Use 'adapted' or 'auto'."
            )
        self.adapted_input = mode == "adapted" or (mode == "auto" and widths_differ)
        self._shared = {  # owned by the distiller (adapters) and by the teacher (its head)
            "adapters": context.adapters() if self.adapted_input else None,
            "teacher_head": context.family.head_of(context.teacher),
        }

        amplifier = None
        if self.high_weight > 0:
            amplifier = freeze(copy.deepcopy(context.family.head_of(context.teacher)))
            key = "MODEL.DS2D2.AMPLIFIER_WEIGHTS"
            prefix = "detector." + context.family.head_prefix
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
        losses = {}
        if self.full_weight > 0:
            full = self.family.kd_loss(
                self._shared["teacher_head"],
                [student[f] for f in self.head_features],
                [step.teacher_feats[f] for f in self.head_features],
                step.targets,
            )
            losses["loss_ds2d2_im_full"] = self.full_weight * full
        if self.high_weight > 0:
            s_high_freq = [high_frequency(student[f], self.wave) for f in self.head_features]
            t_high_freq = [
                high_frequency_from_bands(
                    step.teacher_bands(f, self.wave)[1], tuple(step.teacher_feats[f].shape[-2:])
                )
                for f in self.head_features
            ]
            high_kd = self.family.kd_loss(self.amplifier_head, s_high_freq, t_high_freq, step.targets)
            losses["loss_ds2d2_im_high"] = self.high_weight * high_kd
        return losses
