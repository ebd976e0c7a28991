"""DS2D2 stage 3: the distiller, a student trained with its detection losses plus distillation terms.

Parts:
- ``student``: a plain Detectron2 detector (``MODEL.DS2D2.DETECTOR``) built from this config. Inference runs
  it alone, and its weights export by dropping the ``student.`` prefix.
- ``terms``: the distillation terms of ``MODEL.DS2D2.TERMS`` (``ds2d2.distill``; DS2D2's explicit and implicit
  streams by default, or a baseline such as FitNet), each a module whose trainable helpers are saved with the
  student.
- ``adapters``: the shared 1x1 convs (no bias) mapping student FPN levels to the teacher's width, created
  when a term asks for them (DS2D2's streams, FitNet), else None.
- teacher: built from its own files, frozen, in eval mode and kept OUT of the module tree (a plain
  attribute), so it is invisible to the optimizer, to DDP and to ``state_dict()``; it follows ``.to()``
  through ``_apply``.
- ``student_family`` and ``teacher_family`` (``ds2d2.families``): descriptions of the two detectors (their
  losses with targets, their heads' predictions on given features). Both are RetinaNet or Faster R-CNN, of one
  kind or not (mixed pairs, docs/method.md "Mixed families"), and both of horizontal boxes or both of rotated
  ones (RotatedRetinaNet, Faster R-CNN with RROIHeads: docs/method.md "Rotated boxes (extension)"); the
  levels both FPNs have at one stride are the default distilled ones, logged at build.
- with ``MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD``, the student's FPN and heads start from the teacher's where
  shapes fit (``inherit.py``), before the trainer loads ``MODEL.WEIGHTS`` (the trunk).

The training step reads top to bottom in ``forward``: the shared work once (``shared_step``: student losses
with their matching/sampling and predictions, teacher trunk), then every term on it (the teacher's bands,
targets and predictions computed once on demand).
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..families import DetectorFamily, family_for
from ..checks import check_config
from ..config import LOSS_KEYS, model_num_classes
from ..distill import DISTILL_TERM_REGISTRY, DistillStep, TermContext
from ..teacher import build_frozen_detector, resolve_teacher_config
from .inherit import INHERIT_KEY, inherit_teacher_neck_head

logger = logging.getLogger(__name__)


def _check_teacher_matches(student_cfg: CfgNode, teacher_cfg: CfgNode, teacher_cfg_path: str) -> None:
    teacher_head, student_head = model_num_classes(teacher_cfg), model_num_classes(student_cfg)
    if teacher_head and student_head and teacher_head[1] != student_head[1]:
        raise ValueError(
            f"Teacher ({teacher_cfg_path}) predicts {teacher_head[1]} classes, "
            f"the student {student_head[1]}: "
            "they must match."
        )
    for fmt, key in ((teacher_cfg.INPUT.FORMAT, "teacher"), (student_cfg.INPUT.FORMAT, "student")):
        if fmt not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT of the {key} is {fmt!r}; the distiller supports 'RGB' and 'BGR'.")


def _check_same_box_kind(student: DetectorFamily, teacher: DetectorFamily, teacher_source: str) -> None:
    """A ValueError naming the keys when one detector predicts horizontal boxes and the other rotated ones:
    their heads, targets and box KD have no common box to compare."""
    if student.box_dim == teacher.box_dim:
        return
    kinds = {4: "horizontal", 5: "rotated"}
    raise ValueError(
        f"The student (MODEL.DS2D2.DETECTOR / MODEL.ROI_HEADS.NAME) is a {student.kind} of "
        f"{kinds[student.box_dim]} boxes, the teacher ({teacher_source}, MODEL.DS2D2.TEACHER_CONFIG) a "
        f"{teacher.kind} of {kinds[teacher.box_dim]} boxes: a distiller pairs detectors of one box kind. "
        "Distil a rotated student (RotatedRetinaNet, or GeneralizedRCNN with ROI_HEADS.NAME 'RROIHeads') "
        "from a rotated teacher, a horizontal one from a horizontal teacher."
    )


@META_ARCH_REGISTRY.register()
class DS2D2Distiller(nn.Module):
    """Student + the distillation terms of ``MODEL.DS2D2.TERMS`` from a frozen teacher."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        ds = cfg.MODEL.DS2D2
        check_config(cfg, datasets=())
        self.wave = ds.WAVELET
        self.loss_weights = {key: float(ds.LOSS[key]) for key in LOSS_KEYS}
        term_names = list(ds.TERMS)

        student_cfg = cfg.clone()
        student_cfg.defrost()
        student_cfg.MODEL.META_ARCHITECTURE = ds.DETECTOR
        teacher_cfg, teacher_source = resolve_teacher_config(cfg)  # the config it was trained with
        _check_teacher_matches(student_cfg, teacher_cfg, teacher_source)
        self.student = META_ARCH_REGISTRY.get(ds.DETECTOR)(student_cfg)
        self.student_family = family_for(self.student)

        device = torch.device(cfg.MODEL.DEVICE)
        teacher = build_frozen_detector(
            teacher_cfg, ds.TEACHER_WEIGHTS, "MODEL.DS2D2.TEACHER_WEIGHTS", device
        )
        # Plain attribute, not a submodule: out of parameters(), state_dict(), DDP and train()/eval().
        self._frozen = {"teacher": teacher}
        self._flip_teacher_channels = teacher_cfg.INPUT.FORMAT != student_cfg.INPUT.FORMAT
        s_shapes = self.student.backbone.output_shape()
        t_shapes = teacher.backbone.output_shape()
        self.teacher_family = self._teacher_family(teacher, s_shapes, t_shapes, teacher_source)
        if not isinstance(ds.INHERIT_TEACHER_NECK_HEAD, bool):
            raise ValueError(f"{INHERIT_KEY} must be True or False, got {ds.INHERIT_TEACHER_NECK_HEAD!r}.")
        if ds.INHERIT_TEACHER_NECK_HEAD:  # after the pair is checked (``_teacher_family``)
            inherit_teacher_neck_head(self.student, teacher)
        common = [f for f in s_shapes if f in t_shapes and s_shapes[f].stride == t_shapes[f].stride]
        self.in_features = list(ds.IN_FEATURES) or common
        bad = [f for f in self.in_features if f not in common]
        if bad or not self.in_features:
            raise ValueError(
                f"MODEL.DS2D2.IN_FEATURES {self.in_features} must be levels the student ({sorted(s_shapes)}) "
                f"and the teacher ({sorted(t_shapes)}) both have with the same stride ({common})."
            )
        widths = {s_shapes[f].channels for f in s_shapes}, {t_shapes[f].channels for f in t_shapes}
        if len(widths[0]) != 1 or len(widths[1]) != 1:
            raise ValueError("The distiller expects FPN backbones whose levels all have the same width.")
        s_width, t_width = widths[0].pop(), widths[1].pop()
        shared = ", ".join(f"{f} (stride {s_shapes[f].stride})" for f in common)
        logger.info(
            f"DS2D2Distiller: teacher {self.teacher_family.kind} ({', '.join(t_shapes)}, width {t_width}) -> "
            f"student {self.student_family.kind} ({', '.join(s_shapes)}, width {s_width}); levels both have "
            f"at one stride: {shared}; feature terms distil {self.in_features} by default "
            f"(MODEL.DS2D2.IN_FEATURES); the teacher's head runs on {self.teacher_family.levels}."
        )

        self.adapters: Optional[nn.ModuleDict] = None
        levels = sorted(set(self.in_features) | set(self.teacher_family.levels))

        def shared_adapters() -> nn.ModuleDict:
            if self.adapters is None:
                conv = lambda: nn.Conv2d(s_width, t_width, kernel_size=1, bias=False)  # noqa: E731
                shared = conv() if ds.SHARE_ADAPTER else None
                self.adapters = nn.ModuleDict({f: shared if shared is not None else conv() for f in levels})
            return self.adapters

        context = TermContext(
            cfg, self.student_family, teacher, s_shapes, t_shapes, self.in_features, s_width, t_width,
            shared_adapters, self.teacher_family,
        )
        self.terms = nn.ModuleDict()
        for name in term_names:
            term_class = DISTILL_TERM_REGISTRY.get(name)
            if term_class.enabled(cfg):
                self.terms[name] = term_class(cfg, context)
        self.to(device)

    def _teacher_family(
        self, teacher: nn.Module, s_shapes: Dict, t_shapes: Dict, source: str
    ) -> DetectorFamily:
        """The teacher's family, its head run on the levels the student has at the same stride: all of its
        head's when both are of one kind (else a ValueError), the shared ones across kinds."""
        own = family_for(teacher)
        _check_same_box_kind(self.student_family, own, source)
        readable = [f for f in own.levels if f in s_shapes and s_shapes[f].stride == t_shapes[f].stride]
        if readable == own.levels:
            return own
        if own.kind == self.student_family.kind:
            raise ValueError(
                f"The teacher's head ({source}) reads {own.levels}; the student must have each of them with "
                f"the same stride (it has {sorted(s_shapes)})."
            )
        if not readable:
            raise ValueError(
                f"The teacher's head ({source}) reads {own.levels}, none of which the student has at the "
                f"same stride ({sorted(s_shapes)}): they share no level to distil predictions on."
            )
        return family_for(teacher, readable)

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._frozen["teacher"]

    @property
    def device(self) -> torch.device:
        return self.student.device

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def teacher_features(
        self, batched_inputs: List[Dict], student_size: Tuple[int, int]
    ) -> Dict[str, Tensor]:
        """The frozen teacher's FPN features of the batch (no grad), normalised the teacher's way (its pixel
        mean/std and channel order) and padded like the student's batch of size ``student_size``."""
        t = self.teacher
        images = [x["image"].to(self.device) for x in batched_inputs]
        if self._flip_teacher_channels:
            images = [im.flip(0) for im in images]
        images = ImageList.from_tensors(
            [(im - t.pixel_mean) / t.pixel_std for im in images], t.backbone.size_divisibility
        )
        if tuple(images.tensor.shape[-2:]) != tuple(student_size):
            raise ValueError(
                f"Teacher and student pad the batch to different sizes ({tuple(images.tensor.shape[-2:])} vs "
                f"{tuple(student_size)}): give their backbones the same size divisibility."
            )
        with torch.no_grad():
            return t.backbone(images.tensor)

    def shared_step(self, batched_inputs: List[Dict]) -> Tuple[Dict[str, Tensor], DistillStep]:
        """The work every term shares, done once: the student's detection losses (its matching / sampling
        kept as targets, its head's predictions there) and both trunks' FPN features."""
        images = self.student.preprocess_image(batched_inputs)  # each model normalises its own input
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        s_feats = self.student.backbone(images.tensor)
        t_feats = self.teacher_features(batched_inputs, images.tensor.shape[-2:])
        losses, targets, predictions = self.student_family.detection_losses(images, s_feats, gt_instances)
        same_kind = self.teacher_family.kind == self.student_family.kind
        step = DistillStep(images, gt_instances, s_feats, t_feats, targets, predictions, self.teacher_family,
                           same_kind)
        return losses, step

    # ----------------------------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.student(batched_inputs)
        losses, step = self.shared_step(batched_inputs)
        for term in self.terms.values():
            losses.update(term(step))
        return losses
