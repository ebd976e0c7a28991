"""DS2D2 stage 2: the high-frequency amplifier.

A detector of the teacher's kind (``MODEL.DS2D2.DETECTOR``) whose backbone is the teacher's trained backbone +
FPN, frozen, with each FPN level replaced by its high-frequency part HF(F) = resize(LH + HL + HH). Only the
heads learn, with the detector's normal losses; stage 3 keeps the trained head. With
``MODEL.DS2D2.AMPLIFIER_INIT: teacher`` (the default, as the authors) the heads start from the teacher's
trained heads; with ``scratch`` they start fresh. It trains and evaluates like any detector, rotated ones
included (a RotatedRetinaNet, or a GeneralizedRCNN with RROIHeads: the heads then learn the rotated boxes).
"""
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from torch import Tensor, nn

from ..checkpoint import load_state_strictly, read_checkpoint
from ..checks import check_config
from ..teacher import freeze
from ..wavelet import high_frequency


class HighFrequencyBackbone(Backbone):
    """Wraps a frozen backbone: same levels, strides and channels, each output replaced by its HF features."""

    def __init__(self, trunk: Backbone, wave: str):
        super().__init__()
        self.trunk = freeze(trunk)
        self.wave = wave

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            return {name: high_frequency(f, self.wave) for name, f in self.trunk(x).items()}

    def output_shape(self):
        return self.trunk.output_shape()

    @property
    def size_divisibility(self) -> int:
        return self.trunk.size_divisibility

    def train(self, mode: bool = True) -> "HighFrequencyBackbone":
        super().train(mode)
        self.trunk.eval()  # frozen BN statistics, whatever the trainer does
        return self


@META_ARCH_REGISTRY.register()
class DS2D2Amplifier(nn.Module):
    """``MODEL.DS2D2.DETECTOR`` on the teacher's frozen HF features (teacher from
    ``MODEL.DS2D2.TEACHER_WEIGHTS``)."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        ds = cfg.MODEL.DS2D2
        check_config(cfg, datasets=())
        detector_cfg = cfg.clone()
        detector_cfg.defrost()
        detector_cfg.MODEL.META_ARCHITECTURE = ds.DETECTOR
        self.detector = META_ARCH_REGISTRY.get(ds.DETECTOR)(detector_cfg)
        key = "MODEL.DS2D2.TEACHER_WEIGHTS"
        whole_teacher = ds.AMPLIFIER_INIT == "teacher"
        load_state_strictly(
            self.detector if whole_teacher else self.detector.backbone,
            read_checkpoint(ds.TEACHER_WEIGHTS, key),
            key,
            ds.TEACHER_WEIGHTS,
            prefix="" if whole_teacher else "backbone.",
        )
        self.detector.backbone = HighFrequencyBackbone(self.detector.backbone, ds.WAVELET)

    @property
    def device(self) -> torch.device:
        return self.detector.device

    def forward(self, batched_inputs):
        return self.detector(batched_inputs)
