"""The distillation framework: one training step's shared work, and the interface of a distillation term.

Parts:
- ``DistillStep``: what the distiller computes once per training step and every term reads: the student's
  preprocessed images and FPN features, its detection targets and its head's predictions there (both from its
  own detection loss), the frozen teacher's FPN features, and, on demand and once per step: the teacher's
  wavelet bands (per level and wavelet), the targets of the teacher's kind (``teacher_targets``: the
  student's own when both are of one kind), the teacher's head predictions on its features there
  (``teacher_predictions``), and any head of the teacher's kind on given features (``head_predictions``).
- ``TermContext``: what a term may use when it is built: the config, the student's and the teacher's
  detector families (``ds2d2.families``), the frozen teacher, the FPN shapes, the levels both have, and the
  shared student->teacher adapter (``adapters()``, created on first request and owned by the distiller, so
  terms that ask for it share one set of 1x1 convs).
- ``DistillTerm``: a loss module. ``forward(step)`` returns its weighted losses, each named ``loss_*`` and
  logged on its own. A term's trainable helpers (generators, context blocks) are submodules, so they are
  optimised and checkpointed with the student; frozen modules (amplifier heads, the teacher's) are kept out of
  the module tree as plain attributes, as the teacher is. Config values are checked before anything is built
  (``ds2d2.checks.check_config``); a term reads them, and refuses by key only what depends on the models.
- ``DISTILL_TERM_REGISTRY``: the terms by name; ``MODEL.DS2D2.TERMS`` lists those a distiller uses.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..families import DetectorFamily, HeadPredictions
from ..wavelet import dwt


DISTILL_TERM_REGISTRY = Registry("DISTILL_TERM")
DISTILL_TERM_REGISTRY.__doc__ = """Distillation terms: ``cls(cfg, context)`` -> a ``DistillTerm``."""


@dataclass
class DistillStep:
    """One training step's shared tensors (see the module docstring)."""

    images: ImageList  # the student's normalised, padded batch
    gt_instances: List[Instances]
    student_feats: Dict[str, Tensor]  # [B, C_s, H_l, W_l] per FPN level
    teacher_feats: Dict[str, Tensor]  # [B, C_t, H_l, W_l] per FPN level, no grad
    targets: Any  # the student family's (AnchorTargets / RoITargets) from the student's own detection loss
    student_predictions: Optional[HeadPredictions] = None  # the student's head at ``targets``, from its loss
    teacher_family: Optional[DetectorFamily] = None
    same_kind: bool = True  # teacher and student of one family: ``teacher_targets`` is ``targets``
    _bands: Dict[Tuple[str, str], Tuple[Tensor, Tensor]] = field(default_factory=dict)
    _adapted: Dict[int, Dict[str, Tensor]] = field(default_factory=dict)
    _teacher: Dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H_in, W_in) of the padded batch fed to both backbones."""
        return tuple(self.images.tensor.shape[-2:])

    @property
    def gt_boxes(self) -> List[Tensor]:
        """Per image the ground-truth boxes in input pixels, as the data holds them: [N_i, 4] xyxy, or
        [N_i, 5] XYWHA (angle in degrees) for rotated detectors, passed unchanged to DISW and FGD's masks."""
        return [g.gt_boxes.tensor for g in self.gt_instances]

    def teacher_bands(self, level: str, wave: str) -> Tuple[Tensor, Tensor]:
        """(LL [B, C, h, w], high [B, C, 3, h, w]) of the teacher's ``level``, computed once per step."""
        key = (level, wave)
        if key not in self._bands:
            with torch.no_grad():
                self._bands[key] = dwt(self.teacher_feats[level], wave)
        return self._bands[key]

    def adapted(self, adapters: nn.ModuleDict) -> Dict[str, Tensor]:
        """The student features of every level ``adapters`` has, through them (computed once per step)."""
        key = id(adapters)
        if key not in self._adapted:
            self._adapted[key] = {f: adapters[f](self.student_feats[f]) for f in adapters}
        return self._adapted[key]

    @property
    def teacher_targets(self) -> Any:
        """The targets of the teacher's kind (computed once per step): the student's own ``targets`` when both
        are of one family, else the teacher family's ``kd_targets`` (its matcher / its own proposals) for
        the ground truth, on the teacher's features."""
        if self.same_kind:
            return self.targets
        if "targets" not in self._teacher:
            with torch.no_grad():
                self._teacher["targets"] = self.teacher_family.kd_targets(
                    self.images, self.teacher_feats, self.gt_instances
                )
        return self._teacher["targets"]

    def teacher_predictions(self) -> HeadPredictions:
        """The teacher's own head on its features at ``teacher_targets`` (no grad, computed once per step)."""
        if "predictions" not in self._teacher:
            family = self.teacher_family
            with torch.no_grad():
                self._teacher["predictions"] = family.predict(
                    family.head, self.teacher_feats, self.teacher_targets
                )
        return self._teacher["predictions"]

    def head_predictions(self, head: nn.Module, features: Dict[str, Tensor]) -> HeadPredictions:
        """``head``, of the teacher's kind (the teacher's own, an amplifier), on ``features`` (level ->
        [B, C_t, H_l, W_l]) at ``teacher_targets``; gradients reach ``features`` unless the caller turns
        them off."""
        return self.teacher_family.predict(head, features, self.teacher_targets)


@dataclass
class TermContext:
    """What a term may use when it is built (see the module docstring)."""

    cfg: CfgNode
    student_family: Optional[DetectorFamily]  # None: a term built without models (tests)
    teacher: Optional[nn.Module]  # frozen, eval mode, out of the module tree
    student_shapes: Dict[str, ShapeSpec]
    teacher_shapes: Dict[str, ShapeSpec]
    in_features: List[str]  # MODEL.DS2D2.IN_FEATURES, or every level both have (``common_levels``)
    student_width: int
    teacher_width: int
    adapters: Callable[[], nn.ModuleDict]  # the shared 1x1 adapters, created on first call
    teacher_family: Optional[DetectorFamily] = None  # its ``levels``: those of the student's it can read

    @property
    def common_levels(self) -> List[str]:
        """The FPN levels present in the student and the teacher with the same stride, finest first."""
        s, t = self.student_shapes, self.teacher_shapes
        return sorted((f for f in s if f in t and s[f].stride == t[f].stride), key=lambda f: s[f].stride)

    @property
    def same_kind(self) -> bool:
        """Teacher and student are of one detector family."""
        return self.teacher_family is None or self.teacher_family.kind == self.student_family.kind


class DistillTerm(nn.Module):
    """A distillation loss (see the module docstring). Subclasses register with ``DISTILL_TERM_REGISTRY`` and
    implement ``enabled`` (False: the distiller does not build it, e.g. all its weights are 0) and
    ``forward``. Frozen modules a term owns go in ``self._frozen`` (a dict): out of parameters(),
    state_dict(), DDP and train()/eval(), but they follow ``.to()``."""

    def __init__(self):
        super().__init__()
        self._frozen: Dict[str, nn.Module] = {}

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for module in self._frozen.values():
            if module is not None:
                module._apply(fn, *args, **kwargs)
        return self

    @staticmethod
    def enabled(cfg: CfgNode) -> bool:
        return True

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        raise NotImplementedError


def select_levels(requested: List[str], key: str, context: TermContext, default: Optional[int]) -> List[str]:
    """The FPN levels a term distils: ``requested``, or (empty) the first ``default`` of the levels both
    models have at one stride (``context.common_levels``; None: all of them). Each must exist in the student
    and the teacher with one stride, else a ValueError naming ``key``."""
    s_shapes, t_shapes = context.student_shapes, context.teacher_shapes
    levels = list(requested) or context.common_levels[:default]
    bad = [f for f in levels
           if f not in s_shapes or f not in t_shapes or s_shapes[f].stride != t_shapes[f].stride]
    if bad or not levels or len(set(levels)) != len(levels):
        raise ValueError(
            f"{key} must list distinct FPN levels present with the same stride in the student "
            f"({sorted(s_shapes)}) and the teacher ({sorted(t_shapes)}); got {levels}."
        )
    return levels
