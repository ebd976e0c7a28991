"""DS2D2 stage 3: the distiller.

Parts:
- ``student``: a plain Detectron2 detector (``MODEL.DS2D2.DETECTOR``) built from this config; the only trained
  model besides ``adapters``. Inference runs it alone, and its weights export by dropping the ``student.``
  prefix.
- ``adapters``: 1x1 convs (no bias) mapping student FPN levels to the teacher's width (explicit stream).
- teacher and high-frequency amplifier head: built from their own files, frozen, in eval mode and kept OUT of
  the module tree (plain attributes), so they are invisible to the optimizer, to DDP and to ``state_dict()``;
  they follow ``.to()`` through ``_apply``.
- a family adapter (``ds2d2.amplifiers``) that knows how RetinaNet or Faster R-CNN compute their losses once
  and how their heads produce predictions to compare.

The training step reads top to bottom in ``forward``: student losses (matching/sampling once), teacher trunk
once, each teacher level's DWT once and reused by both streams, DISW once for all levels.
"""
import copy
import math
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from ..amplifiers import family_for
from ..losses import explicit_loss_from_bands
from ..teacher import build_frozen_detector, freeze, load_config_file, load_state_strictly, read_checkpoint
from ..wavelet import dwt, high_frequency, high_frequency_from_bands, validate_wavelet

LOSS_KEYS = ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")


def _num_classes(cfg: CfgNode) -> int:
    return (
        cfg.MODEL.RETINANET.NUM_CLASSES
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    )


def check_loss_weights(cfg: CfgNode) -> Dict[str, float]:
    """The four stream weights, each a finite number >= 0, or a ValueError naming the key."""
    weights = {}
    for key in LOSS_KEYS:
        value = cfg.MODEL.DS2D2.LOSS[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"MODEL.DS2D2.LOSS.{key} must be a finite number >= 0, got {value!r}.")
        weights[key] = float(value)
    return weights


def _check_teacher_matches(student_cfg: CfgNode, teacher_cfg: CfgNode, teacher_cfg_path: str) -> None:
    if teacher_cfg.MODEL.META_ARCHITECTURE != student_cfg.MODEL.META_ARCHITECTURE:
        raise ValueError(
            f"MODEL.DS2D2.TEACHER_CONFIG '{teacher_cfg_path}' builds a "
            f"{teacher_cfg.MODEL.META_ARCHITECTURE}, but "
            f"MODEL.DS2D2.DETECTOR is {student_cfg.MODEL.META_ARCHITECTURE}: "
            "teacher and student must be the same kind."
        )
    t_classes, s_classes = _num_classes(teacher_cfg), _num_classes(student_cfg)
    if t_classes != s_classes:
        raise ValueError(
            f"Teacher ({teacher_cfg_path}) predicts {t_classes} classes, the student {s_classes}: "
            "they must match."
        )
    for t_name, s_name in zip(teacher_cfg.DATASETS.TRAIN, student_cfg.DATASETS.TRAIN):
        t_list = MetadataCatalog.get(t_name).get("thing_classes", None)
        s_list = MetadataCatalog.get(s_name).get("thing_classes", None)
        if t_list is not None and s_list is not None and list(t_list) != list(s_list):
            raise ValueError(
                f"Teacher dataset '{t_name}' and student dataset '{s_name}' have different class lists: "
                f"{list(t_list)} vs {list(s_list)}."
            )
    for fmt, key in ((teacher_cfg.INPUT.FORMAT, "teacher"), (student_cfg.INPUT.FORMAT, "student")):
        if fmt not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT of the {key} is {fmt!r}; the distiller supports 'RGB' and 'BGR'.")


@META_ARCH_REGISTRY.register()
class DS2D2Distiller(nn.Module):
    """Student + explicit (wavelet bands, DISW) and implicit (amplifier heads) distillation from a frozen
    teacher."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        ds = cfg.MODEL.DS2D2
        self.wave = validate_wavelet(ds.WAVELET, "MODEL.DS2D2.WAVELET")
        self.loss_weights = check_loss_weights(cfg)

        student_cfg = cfg.clone()
        student_cfg.defrost()
        student_cfg.MODEL.META_ARCHITECTURE = ds.DETECTOR
        teacher_cfg = load_config_file(ds.TEACHER_CONFIG, "MODEL.DS2D2.TEACHER_CONFIG")
        _check_teacher_matches(student_cfg, teacher_cfg, ds.TEACHER_CONFIG)
        self.student = META_ARCH_REGISTRY.get(ds.DETECTOR)(student_cfg)
        self.family = family_for(self.student, ds.LOSS)

        device = torch.device(cfg.MODEL.DEVICE)
        teacher = build_frozen_detector(
            teacher_cfg, ds.TEACHER_WEIGHTS, "MODEL.DS2D2.TEACHER_WEIGHTS", device
        )
        amplifier = None
        if self.loss_weights["IMPLICIT_HIGH"] > 0:
            amplifier = freeze(copy.deepcopy(self.family.head_of(teacher)))
            key = "MODEL.DS2D2.AMPLIFIER_WEIGHTS"
            prefix = "detector." + self.family.head_prefix
            load_state_strictly(
                amplifier, read_checkpoint(ds.AMPLIFIER_WEIGHTS, key), key, ds.AMPLIFIER_WEIGHTS, prefix
            )
        # Plain attribute, not a submodule: out of parameters(), state_dict(), DDP and train()/eval().
        self._frozen = {"teacher": teacher, "amplifier": amplifier}
        self._flip_teacher_channels = teacher_cfg.INPUT.FORMAT != student_cfg.INPUT.FORMAT

        s_shapes = self.student.backbone.output_shape()
        t_shapes = teacher.backbone.output_shape()
        self.in_features = list(ds.IN_FEATURES) or list(s_shapes)
        for f in set(self.in_features) | set(self.family.head_in_features()):
            if f not in s_shapes or f not in t_shapes or s_shapes[f].stride != t_shapes[f].stride:
                raise ValueError(
                    f"Feature '{f}' (MODEL.DS2D2.IN_FEATURES / head inputs) must exist with the same stride "
                    f"in the student ({sorted(s_shapes)}) and the teacher ({sorted(t_shapes)})."
                )
        widths = {s_shapes[f].channels for f in s_shapes}, {t_shapes[f].channels for f in t_shapes}
        if len(widths[0]) != 1 or len(widths[1]) != 1:
            raise ValueError("DS2D2 expects FPN backbones whose levels all have the same width.")
        s_width, t_width = widths[0].pop(), widths[1].pop()
        mode = ds.IMPLICIT_INPUT
        if mode not in ("raw", "adapted", "auto"):
            raise ValueError(f"MODEL.DS2D2.IMPLICIT_INPUT must be 'raw', 'adapted' or 'auto', got {mode!r}.")
        if mode == "raw" and s_width != t_width:
            raise ValueError(
                "MODEL.DS2D2.IMPLICIT_INPUT='raw' needs equal FPN widths; "
                f"student {s_width}, teacher {t_width}. "
                "Use 'adapted' or 'auto'."
            )
        self.implicit_adapted = mode == "adapted" or (mode == "auto" and s_width != t_width)
        needs_adapter = (
            self.implicit_adapted
            or self.loss_weights["EXPLICIT_LOW"] > 0
            or self.loss_weights["EXPLICIT_HIGH"] > 0
        )
        self.adapters: Optional[nn.ModuleDict] = None
        if needs_adapter:
            conv = lambda: nn.Conv2d(s_width, t_width, kernel_size=1, bias=False)  # noqa: E731
            shared = conv() if ds.SHARE_ADAPTER else None
            levels = sorted(set(self.in_features) | set(self.family.head_in_features()))
            self.adapters = nn.ModuleDict({f: shared if shared is not None else conv() for f in levels})
        self.to(device)

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._frozen["teacher"]

    @property
    def amplifier_head(self) -> Optional[nn.Module]:
        return self._frozen["amplifier"]

    @property
    def device(self) -> torch.device:
        return self.student.device

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for module in self._frozen.values():
            if module is not None:
                module._apply(fn, *args, **kwargs)
        return self

    def _teacher_images(self, batched_inputs: List[Dict], student_size) -> ImageList:
        """The batch normalised the teacher's way (its pixel mean/std and channel order), padded like the
        student's."""
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
        return images

    # ----------------------------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.student(batched_inputs)
        w = self.loss_weights
        images = self.student.preprocess_image(batched_inputs)  # each model normalises its own input
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        s_feats = self.student.backbone(images.tensor)
        with torch.no_grad():
            t_feats = self.teacher.backbone(
                self._teacher_images(batched_inputs, images.tensor.shape[-2:]).tensor
            )
        # matching/sampling once
        losses, targets = self.family.detection_losses(images, s_feats, gt_instances)

        head_features = self.family.head_in_features()
        explicit_on = w["EXPLICIT_LOW"] > 0 or w["EXPLICIT_HIGH"] > 0
        band_levels = (set(self.in_features) if explicit_on else set()) | (
            set(head_features) if w["IMPLICIT_HIGH"] > 0 else set()
        )
        with torch.no_grad():
            t_bands = {f: dwt(t_feats[f], self.wave) for f in band_levels}  # once per level, reused below
        adapted = (
            {f: self.adapters[f](s_feats[f]) for f in self.adapters} if self.adapters is not None else {}
        )

        if explicit_on:
            boxes = [g.gt_boxes.tensor for g in gt_instances]
            size = tuple(images.tensor.shape[-2:])
            low, high = explicit_loss_from_bands(
                [dwt(adapted[f], self.wave) for f in self.in_features],
                [t_bands[f] for f in self.in_features],  # teacher bands, shared with the implicit stream
                boxes,
                size,
            )
            if w["EXPLICIT_LOW"] > 0:
                losses["loss_ds2d2_ex_low"] = w["EXPLICIT_LOW"] * low
            if w["EXPLICIT_HIGH"] > 0:
                losses["loss_ds2d2_ex_high"] = w["EXPLICIT_HIGH"] * high

        implicit_in = adapted if self.implicit_adapted else s_feats
        if w["IMPLICIT_FULL"] > 0:
            full = self.family.kd_loss(
                self.family.head_of(self.teacher),
                [implicit_in[f] for f in head_features],
                [t_feats[f] for f in head_features],
                targets,
            )
            losses["loss_ds2d2_im_full"] = w["IMPLICIT_FULL"] * full
        if w["IMPLICIT_HIGH"] > 0:
            s_high_freq = [high_frequency(implicit_in[f], self.wave) for f in head_features]
            with torch.no_grad():
                t_high_freq = [
                    high_frequency_from_bands(t_bands[f][1], tuple(t_feats[f].shape[-2:]))
                    for f in head_features
                ]
            high_kd = self.family.kd_loss(self.amplifier_head, s_high_freq, t_high_freq, targets)
            losses["loss_ds2d2_im_high"] = w["IMPLICIT_HIGH"] * high_kd
        return losses
