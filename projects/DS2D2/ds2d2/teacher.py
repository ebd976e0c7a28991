"""The teacher: the config it was trained with, its classes checked against the student's, and frozen
detectors built from (config, weights) with strict loading (``checkpoint.load_state_strictly``).
"""
import logging
import os
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from .checkpoint import load_state_strictly, read_checkpoint
from .config import load_config
from .data.own import dataset_classes

logger = logging.getLogger(__name__)


RECORDED_CONFIG = "config.yaml"
"""What train_net.py (Detectron2's ``default_setup``) writes into OUTPUT_DIR: the run's final config."""


def _plain(value):
    """Tuples as lists, recursively: a dumped and reloaded config has lists where YAML files have tuples."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _flat(node: CfgNode, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for k, v in node.items():
        if isinstance(v, CfgNode):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = _plain(v)
    return flat


def _log_model_differences(recorded: CfgNode, recorded_path: str, config_file: str) -> None:
    """Warn about the MODEL keys on which MODEL.DS2D2.TEACHER_CONFIG disagrees with the recorded config."""
    if not config_file or not os.path.isfile(config_file):
        logger.info(f"MODEL.DS2D2.TEACHER_CONFIG {config_file!r} is not used (and no such file exists).")
        return
    ignored = {"MODEL.WEIGHTS", "MODEL.DEVICE"}
    try:
        theirs_cfg = load_config(config_file, register=False, key="MODEL.DS2D2.TEACHER_CONFIG")
        theirs = _flat(theirs_cfg.MODEL, "MODEL.")
    except (AssertionError, KeyError, OSError, ValueError) as e:
        logger.warning(f"MODEL.DS2D2.TEACHER_CONFIG '{config_file}' is not used, and does not load: {e}")
        return
    ours = _flat(recorded.MODEL, "MODEL.")
    differ = sorted(k for k in set(ours) | set(theirs) if k not in ignored and ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k} (recorded {ours.get(k)!r}, file {theirs.get(k)!r})" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        logger.warning(
            f"MODEL.DS2D2.TEACHER_CONFIG '{config_file}' differs from the teacher's recorded {recorded_path} "
            f"in {shown}{more}; the recorded config is used, as the weights were trained with it."
        )


def check_teacher_classes(teacher_cfg: CfgNode, student_cfg: CfgNode, source: str) -> None:
    """Raise ValueError when the teacher's training data (config from ``source``) and the student's have
    different class lists (as far as both are known: recorded DATASETS.OWN classes or registered metadata)."""
    for t_name, s_name in zip(teacher_cfg.DATASETS.TRAIN, student_cfg.DATASETS.TRAIN):
        t_list, s_list = dataset_classes(teacher_cfg, t_name), dataset_classes(student_cfg, s_name)
        if t_list is not None and s_list is not None and t_list != s_list:
            raise ValueError(
                f"The teacher ({source}) was trained on '{t_name}' with the classes {t_list}, the student's "
                f"'{s_name}' has {s_list}: different class lists; teacher and student need the same classes "
                "in the same order."
            )


def resolve_teacher_config(cfg: CfgNode) -> Tuple[CfgNode, str]:
    """(config, its file) to build the teacher of a DS2D2 config from, exactly as it was trained.

    That is the ``config.yaml`` its training run (train_net.py, whatever its command-line overrides) wrote
    next to ``MODEL.DS2D2.TEACHER_WEIGHTS``; without one (e.g. a Detectron2 .pkl), ``TEACHER_CONFIG``.
    One log line says which; the teacher's training classes must be the student's.
    """
    ds = cfg.MODEL.DS2D2
    recorded = os.path.join(os.path.dirname(ds.TEACHER_WEIGHTS), RECORDED_CONFIG)
    if ds.TEACHER_WEIGHTS and os.path.isfile(recorded):
        key = f"the teacher's recorded config ({RECORDED_CONFIG})"
        teacher_cfg = load_config(recorded, register=False, key=key)
        source = recorded
        logger.info(
            f"Teacher config: {recorded}, recorded next to MODEL.DS2D2.TEACHER_WEIGHTS by the run that "
            "trained it (MODEL.DS2D2.TEACHER_CONFIG is only used for weights without such a file)."
        )
        _log_model_differences(teacher_cfg, recorded, ds.TEACHER_CONFIG)
    else:
        teacher_cfg = load_config(ds.TEACHER_CONFIG, register=False, key="MODEL.DS2D2.TEACHER_CONFIG")
        source = ds.TEACHER_CONFIG
        logger.info(
            f"Teacher config: MODEL.DS2D2.TEACHER_CONFIG '{source}' (no {RECORDED_CONFIG} next to "
            f"MODEL.DS2D2.TEACHER_WEIGHTS '{ds.TEACHER_WEIGHTS}')."
        )
    check_teacher_classes(teacher_cfg, cfg, source)
    return teacher_cfg, source


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put ``model`` in eval mode (BN/dropout frozen); returns it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_frozen_detector(
    cfg: CfgNode, weights: str, key: str, device: Optional[torch.device] = None
) -> nn.Module:
    """``build_model(cfg)`` with ``weights`` loaded strictly, frozen and in eval mode."""
    cfg = cfg.clone()
    cfg.defrost()
    if device is not None:
        cfg.MODEL.DEVICE = str(device)
    model = build_model(cfg)
    load_state_strictly(model, read_checkpoint(weights, key), key, weights)
    return freeze(model)
