"""Checks of a whole config before anything is built (``check_config``), each error naming its key.

This module sits above the distillation terms (it asks their registry which names MODEL.DS2D2.TERMS may
hold) and below the meta-architectures, the trainer and the scripts that call it; ``config.py`` (keys,
value helpers, loading) sits below the terms. The terms read the values checked here.
"""
import difflib
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .config import AMPLIFIER_INITS, IMPLICIT_INPUTS, LOSS_KEYS, config_number, model_num_classes
from .distill import DISTILL_TERM_REGISTRY
from .losses import ROI_CLS_REDUCTIONS
from .wavelet import validate_wavelet

__all__ = ["check_config", "check_dataset_classes", "check_datasets_registered"]


def _one_of(value: object, allowed: Sequence, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {tuple(allowed)}, got {value!r}.")


def _check_ds2d2_keys(cfg: CfgNode) -> None:
    """The MODEL.DS2D2 keys of the amplifier (stage 2) and the distiller (stage 3)."""
    ds, arch = cfg.MODEL.DS2D2, cfg.MODEL.META_ARCHITECTURE
    validate_wavelet(ds.WAVELET, "MODEL.DS2D2.WAVELET")
    if arch == "DS2D2Amplifier":
        _one_of(ds.AMPLIFIER_INIT, AMPLIFIER_INITS, "MODEL.DS2D2.AMPLIFIER_INIT")
        return
    for key in LOSS_KEYS:
        config_number(ds.LOSS[key], f"MODEL.DS2D2.LOSS.{key}")
    _one_of(ds.IMPLICIT_INPUT, IMPLICIT_INPUTS, "MODEL.DS2D2.IMPLICIT_INPUT")
    _one_of(ds.LOSS.ROI_CLS_REDUCTION, sorted(ROI_CLS_REDUCTIONS), "MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION")
    names = list(ds.TERMS)
    known = sorted(name for name, _ in DISTILL_TERM_REGISTRY)
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(f"MODEL.DS2D2.TERMS must list distinct terms out of {known}; got {names}.")


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


def check_config(cfg: CfgNode, datasets: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Every check of a config that needs no model, each error naming its key: SOLVER.CHECKPOINT_MAX_TO_KEEP,
    the MODEL.DS2D2 keys of stages 2 and 3, and, for the ``DATASETS.<datasets>`` keys (none: skipped), that
    the datasets are registered and agree on their classes with each other and with the model's head.
    Called by the trainer, train_net.py --eval-only, run_pipeline.py and the DS2D2 meta-architectures."""
    keep = cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(
            f"SOLVER.CHECKPOINT_MAX_TO_KEEP must be an integer >= 0 (0 keeps every periodic checkpoint), "
            f"got {keep!r}"
        )
    if cfg.MODEL.META_ARCHITECTURE in ("DS2D2Amplifier", "DS2D2Distiller"):
        _check_ds2d2_keys(cfg)
    if datasets:
        check_datasets_registered(cfg, datasets)
        check_dataset_classes(cfg, datasets)
