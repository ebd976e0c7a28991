"""Checks of a whole config before anything is built (``check_config``), each error naming its key.

This module sits above the distillation terms (it asks their registry which names MODEL.DS2D2.TERMS may
hold) and below the meta-architectures, the trainer and the scripts that call it; ``config.py`` (keys,
value helpers, loading) sits below the terms. The terms read the values checked here.
"""
import difflib
import math
from typing import List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ds2d2_onnx.image_io import check_max_pixels

from .config import (
    AMPLIFIER_INITS,
    IMPLICIT_INPUTS,
    config_number,
    detector_architecture,
    model_num_classes,
)
from .distill import DISTILL_TERM_REGISTRY
from .losses import ROI_CLS_REDUCTIONS
from .rpn import MIN_IOU_KEY, low_quality_min_iou
from .solver import check_clip_gradients
from .wavelet import validate_wavelet

__all__ = [
    "check_config",
    "check_dataset_classes",
    "check_datasets_registered",
    "check_train_datasets_have_boxes",
]

# The weights of each term, under MODEL.DS2D2: with all of its weights 0, a term adds no loss.
TERM_WEIGHTS = {
    "DS2D2Explicit": ("LOSS.EXPLICIT_LOW", "LOSS.EXPLICIT_HIGH"),
    "DS2D2Implicit": ("LOSS.IMPLICIT_FULL", "LOSS.IMPLICIT_HIGH"),
    "FitNet": ("FITNET.WEIGHT",),
    "CrossKD": ("CROSSKD.CLS_WEIGHT", "CROSSKD.BOX_WEIGHT"),
    "FGD": ("FGD.ALPHA", "FGD.BETA", "FGD.GAMMA", "FGD.LAMBDA"),
    "PKD": ("PKD.WEIGHT",),
    "MGD": ("MGD.WEIGHT",),
}
# Keys under MODEL.DS2D2 that are finite numbers >= 0: every term's weights (checked whether or not the term
# is in TERMS: a negative weight is a mistake anywhere) and the RoI classification weight. A term with one
# weight has no other switch: while it is listed in TERMS, that weight must be > 0 (leave the term out of
# TERMS to turn it off).
NON_NEGATIVE_KEYS = (*(key for keys in TERM_WEIGHTS.values() for key in keys), "LOSS.ROI_CLS_WEIGHT")
# Keys under MODEL.DS2D2 that are finite numbers > 0: exponents and temperatures.
POSITIVE_KEYS = ("LOSS.DENSE_BETA", "LOSS.ROI_TEMPERATURE", "FGD.TEMPERATURE")


def _value(cfg: CfgNode, key: str) -> object:
    node = cfg.MODEL.DS2D2
    for part in key.split("."):
        node = node[part]
    return node


def _one_of(value: object, allowed: Sequence, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {tuple(allowed)}, got {value!r}.")


def _check_terms(cfg: CfgNode) -> List[str]:
    """MODEL.DS2D2.TERMS (distinct registered names, at least one), returned."""
    names = list(cfg.MODEL.DS2D2.TERMS)
    known = sorted(name for name, _ in DISTILL_TERM_REGISTRY)
    if not names:
        raise ValueError(
            f"MODEL.DS2D2.TERMS is empty: the distiller would train the student without distillation while "
            f"building a teacher. List terms out of {known}, or train the student alone "
            "(MODEL.META_ARCHITECTURE = MODEL.DS2D2.DETECTOR)."
        )
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(f"MODEL.DS2D2.TERMS must list distinct terms out of {known}; got {names}.")
    return names


def _weights_text(cfg: CfgNode, names: Sequence[str]) -> str:
    """"MODEL.DS2D2.<key> <value>" for each weight of the terms ``names``, comma-separated."""
    keys = [key for name in names for key in TERM_WEIGHTS[name]]
    return ", ".join(f"MODEL.DS2D2.{key} {_value(cfg, key)!r}" for key in keys)


def _check_terms_distil(cfg: CfgNode, names: Sequence[str]) -> None:
    """At least one of the terms ``names`` (MODEL.DS2D2.TERMS, weights checked) adds a loss: its class is
    ``enabled(cfg)`` and one of its weights is > 0. A term whose class turns itself off with its weights
    (``enabled``: DS2D2's two streams, FGD) is not built, so it may be listed at 0 beside others (an
    ablation); one built whatever its weights (CrossKD) would add a zero loss, so is refused at 0."""
    enabled = {name: DISTILL_TERM_REGISTRY.get(name).enabled(cfg) for name in names}
    silent = [n for n in names if not (enabled[n] and any(_value(cfg, k) > 0 for k in TERM_WEIGHTS[n]))]
    if len(silent) == len(names):
        raise ValueError(
            f"No term of MODEL.DS2D2.TERMS {list(names)} distils anything, its weights are all 0 "
            f"({_weights_text(cfg, names)}): the distiller would train the student without distillation "
            "while building a teacher. Set a weight > 0, or train the student alone "
            "(MODEL.META_ARCHITECTURE = MODEL.DS2D2.DETECTOR)."
        )
    built = [n for n in silent if enabled[n]]
    if built:
        raise ValueError(
            f"MODEL.DS2D2.TERMS lists {built[0]}, whose weights are all 0 ({_weights_text(cfg, built[:1])}): "
            f"the distiller would still build it and add a zero loss. Set one > 0, or remove {built[0]} from "
            "MODEL.DS2D2.TERMS."
        )


def _check_distiller_keys(cfg: CfgNode) -> None:
    """The MODEL.DS2D2 keys of the distiller (stage 3), each error naming its key."""
    ds = cfg.MODEL.DS2D2
    names = _check_terms(cfg)
    positive = {keys[0] for name, keys in TERM_WEIGHTS.items() if name in names and len(keys) == 1}
    for key in NON_NEGATIVE_KEYS:
        config_number(_value(cfg, key), f"MODEL.DS2D2.{key}", strict=key in positive)
    for key in POSITIVE_KEYS:
        config_number(_value(cfg, key), f"MODEL.DS2D2.{key}", strict=True)
    _check_terms_distil(cfg, names)
    ratio = ds.MGD.MASK_RATIO
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 <= ratio < 1:
        raise ValueError(f"MODEL.DS2D2.MGD.MASK_RATIO must be a number in [0, 1), got {ratio!r}.")
    _one_of(ds.IMPLICIT_INPUT, IMPLICIT_INPUTS, "MODEL.DS2D2.IMPLICIT_INPUT")
    _one_of(ds.LOSS.ROI_CLS_REDUCTION, sorted(ROI_CLS_REDUCTIONS), "MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION")


def check_datasets_registered(cfg: CfgNode, keys: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Raise ValueError naming the key and the name of any ``DATASETS.<key>`` entry that is not registered."""
    registered = DatasetCatalog.list()
    for key in keys:
        for name in cfg.DATASETS[key]:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise ValueError(
                    f"DATASETS.{key}: dataset '{name}' is not registered{hint}. Declare it under "
                    "DATASETS.OWN (docs/own_data.md), register it first (ds2d2.data.register_voc_detection, "
                    "register_coco_detection, register_dota) or fix the name."
                )


def check_dataset_classes(cfg: CfgNode, keys: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Raise ValueError when the (registered) datasets of ``DATASETS.<keys>`` have different class lists, or
    when the model predicts another number of classes than they have; both named."""
    first = None
    for key in keys:
        for name in cfg.DATASETS[key]:
            classes = MetadataCatalog.get(name).get("thing_classes", None)
            if classes is None:
                continue
            if first is None:
                first = (key, name, list(classes))
            elif list(classes) != first[2]:
                raise ValueError(
                    f"DATASETS.{key}: dataset '{name}' has the classes {list(classes)}, but "
                    f"DATASETS.{first[0]} '{first[1]}' has {first[2]}: a model trained on one cannot be "
                    "evaluated on the other. Give them the same class list in the same order "
                    "(DATASETS.OWN.<name>.CLASSES)."
                )
    head = model_num_classes(cfg)
    if first is not None and head is not None and head[1] != len(first[2]):
        raise ValueError(
            f"{head[0]} is {head[1]}, but dataset '{first[1]}' (DATASETS.{first[0]}) has {len(first[2])} "
            f"classes {first[2]}: set {head[0]} {len(first[2])}."
        )


def check_train_datasets_have_boxes(dataset_names: Sequence[str]) -> None:
    """ValueError naming the JSON files when every dataset of ``dataset_names`` (DATASETS.TRAIN, registered)
    is a COCO file whose 'annotations' list is empty (metadata ``num_annotations`` 0): nothing to train on
    (Detectron2 would stop with a bare "No valid data found" assertion). One such file beside a dataset with
    boxes passes: its images are filtered out (DATALOADER.FILTER_EMPTY_ANNOTATIONS) or train as background."""
    metas = {name: MetadataCatalog.get(name) for name in dataset_names}
    if not metas or any(meta.get("num_annotations", None) != 0 for meta in metas.values()):
        return
    empty = "; ".join(
        f"dataset {name!r} comes from {meta.json_file}, whose 'annotations' list is empty"
        for name, meta in metas.items()
    )
    raise ValueError(
        f"DATASETS.TRAIN: {empty}: nothing to train on (an images-only COCO file can be used in "
        "DATASETS.TEST, or in DATASETS.TRAIN beside a dataset with boxes)."
    )


def _check_rpn_min_iou(cfg: CfgNode) -> None:
    """MODEL.RPN.LOW_QUALITY_MIN_IOU in [0, 1], and only set (non-zero) for the RPN that reads it."""
    value = low_quality_min_iou(cfg)
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if value > 0 and name != "DS2D2RPN" and detector_architecture(cfg) == "GeneralizedRCNN":
        raise ValueError(
            f"{MIN_IOU_KEY} is {value:g}, but MODEL.PROPOSAL_GENERATOR.NAME is {name!r}, which ignores it: "
            f"set MODEL.PROPOSAL_GENERATOR.NAME DS2D2RPN (Detectron2's RPN with that rule), or "
            f"{MIN_IOU_KEY} 0."
        )


def _check_inherit_keys(cfg: CfgNode) -> None:
    """MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD a bool, and the deprecated MODEL.DS2D2.FGD one False: it is kept
    only so that configs recorded before its renaming load."""
    value = cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD
    if not isinstance(value, bool):
        raise ValueError(f"MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD must be True or False, got {value!r}.")
    old = cfg.MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD
    if old is not False:
        raise ValueError(
            f"MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD is deprecated (only False is accepted, and "
            f"ignored), got {old!r}: inheriting the teacher's neck and head is a distiller option for every "
            "method now. Set MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD True instead, and "
            "MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD False (or remove it)."
        )


def _check_max_pixels(cfg: CfgNode) -> None:
    """INPUT.MAX_PIXELS, the image size limit of the data mappers, an integer >= 1 (pixels)."""
    check_max_pixels(cfg.INPUT.MAX_PIXELS)


def check_config(cfg: CfgNode, datasets: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Every check of a config that needs no model, each error naming its key: SOLVER.CHECKPOINT_MAX_TO_KEEP,
    SOLVER.CLIP_GRADIENTS, INPUT.MAX_PIXELS, MODEL.RPN.LOW_QUALITY_MIN_IOU and INHERIT_TEACHER_NECK_HEAD (the
    deprecated FGD key False); for stages 2 and 3 MODEL.DS2D2.WAVELET; for stage 2 AMPLIFIER_INIT; for stage 3
    the loss weights (>= 0), exponents and temperatures (> 0), MGD.MASK_RATIO, IMPLICIT_INPUT, the RoI
    reductions and TERMS (a listed term distils: ``_check_terms_distil``); and, for the
    ``DATASETS.<datasets>`` keys (none: skipped), that the datasets are registered and agree on their classes
    with each other and with the model's head, and that some TRAIN dataset has boxes.
    Called by the trainer, train_net.py --eval-only, run_pipeline.py and the DS2D2 meta-architectures, before
    they build anything."""
    keep = cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(
            f"SOLVER.CHECKPOINT_MAX_TO_KEEP must be an integer >= 0 (0 keeps every periodic checkpoint), "
            f"got {keep!r}"
        )
    _check_rpn_min_iou(cfg)
    _check_inherit_keys(cfg)
    _check_max_pixels(cfg)
    check_clip_gradients(cfg)
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in ("DS2D2Amplifier", "DS2D2Distiller"):
        validate_wavelet(cfg.MODEL.DS2D2.WAVELET, "MODEL.DS2D2.WAVELET")
    if arch == "DS2D2Amplifier":
        _one_of(cfg.MODEL.DS2D2.AMPLIFIER_INIT, AMPLIFIER_INITS, "MODEL.DS2D2.AMPLIFIER_INIT")
    elif arch == "DS2D2Distiller":
        _check_distiller_keys(cfg)
    if datasets:
        check_datasets_registered(cfg, datasets)
        check_dataset_classes(cfg, datasets)
    if "TRAIN" in datasets:
        check_train_datasets_have_boxes(cfg.DATASETS.TRAIN)
