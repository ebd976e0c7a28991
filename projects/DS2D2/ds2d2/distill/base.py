"""The distillation framework: one training step's shared work, and the interface of a distillation term.

Parts:
- ``DistillStep``: what the distiller computes once per training step and every term reads: the student's
  preprocessed images and FPN features, its detection targets (anchor labels / sampled RoIs, from the family's
  own loss), the frozen teacher's FPN features, and, on demand, the teacher's wavelet bands (computed once per
  level and wavelet, cached for the other terms).
- ``TermContext``: what a term may use when it is built: the config, the detector family, the frozen teacher,
  the FPN shapes, and the shared student->teacher adapter (``adapters()``, created on first request and owned
  by the distiller, so terms that ask for it share one set of 1x1 convs).
- ``DistillTerm``: a loss module. ``forward(step)`` returns its weighted losses, each named ``loss_*`` and
  logged on its own. A term's trainable helpers (generators, context blocks) are submodules, so they are
  optimised and checkpointed with the student; frozen modules (amplifier heads, the teacher's) are kept out of
  the module tree as plain attributes, as the teacher is.
- ``DISTILL_TERM_REGISTRY``: the terms by name; ``MODEL.DS2D2.TERMS`` lists those a distiller uses.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..amplifiers import DetectorFamily
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
    targets: Dict  # the family's (anchor labels or sampled RoIs) from the student's own detection loss
    _bands: Dict[Tuple[str, str], Tuple[Tensor, Tensor]] = field(default_factory=dict)
    _adapted: Dict[int, Dict[str, Tensor]] = field(default_factory=dict)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H_in, W_in) of the padded batch fed to both backbones."""
        return tuple(self.images.tensor.shape[-2:])

    @property
    def gt_boxes(self) -> List[Tensor]:
        """Per image [N_i, 4] ground-truth boxes, xyxy in input pixels."""
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


@dataclass
class TermContext:
    """What a term may use when it is built (see the module docstring)."""

    cfg: CfgNode
    family: DetectorFamily
    teacher: nn.Module  # frozen, eval mode, out of the module tree
    student_shapes: Dict[str, ShapeSpec]
    teacher_shapes: Dict[str, ShapeSpec]
    in_features: List[str]  # MODEL.DS2D2.IN_FEATURES, or every student level
    student_width: int
    teacher_width: int
    adapters: Callable[[], nn.ModuleDict]  # the shared 1x1 adapters, created on first call


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
    """The FPN levels a term distils: ``requested``, or (empty) the student's first ``default`` levels by
    stride (None: all of them). Each must exist in the student and the teacher with one stride, else a
    ValueError naming ``key``."""
    s_shapes, t_shapes = context.student_shapes, context.teacher_shapes
    levels = list(requested) or sorted(s_shapes, key=lambda f: s_shapes[f].stride)[:default]
    bad = [f for f in levels
           if f not in s_shapes or f not in t_shapes or s_shapes[f].stride != t_shapes[f].stride]
    if bad or not levels or len(set(levels)) != len(levels):
        raise ValueError(
            f"{key} must list distinct FPN levels present with the same stride in the student "
            f"({sorted(s_shapes)}) and the teacher ({sorted(t_shapes)}); got {levels}."
        )
    return levels
