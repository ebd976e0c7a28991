"""Build frozen models from (config file, weights) with strict, loud loading.

Detectron2's checkpointer loads non-strictly and only logs what did not match, which silently leaves a random
teacher when a path or a depth is wrong. Everything DS2D2 loads into a frozen model goes through
``load_state_strictly`` instead, which raises with the config key, the file and the offending tensor names.
"""
import os
from typing import Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint_file


def load_config_file(path: str, key: str) -> CfgNode:
    """A full Detectron2 + DS2D2 config read from ``path`` (named by config key ``key`` in errors)."""
    from .config import add_ds2d2_config

    if not path:
        raise ValueError(f"{key} is empty: set it to the teacher's YAML config file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{key}: config file '{path}' does not exist (paths are relative to {os.getcwd()})."
        )
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def read_checkpoint(path: str, key: str) -> Dict:
    """The checkpoint dict of a .pth (weights only) or Detectron2 .pkl (arrays only) file; errors name
    ``key``."""
    if not path:
        raise ValueError(f"{key} is empty: set it to a checkpoint file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: checkpoint '{path}' does not exist.")
    try:
        return read_checkpoint_file(path)
    except CheckpointError as e:
        raise RuntimeError(f"{key}: {e}") from e


def load_state_strictly(model: nn.Module, checkpoint: Dict, key: str, path: str, prefix: str = "") -> None:
    """Load the tensors of ``checkpoint['model']`` whose names start with ``prefix`` (prefix removed) into
    ``model``; every model tensor must be present with its shape. Tensors outside ``prefix`` are ignored."""
    state = checkpoint.get("model", checkpoint)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ckpt = dict(checkpoint, model=state)
    incompatible = DetectionCheckpointer(model)._load_model(ckpt)
    problems = []
    if incompatible.incorrect_shapes:
        problems.append(
            "shape mismatch: "
            + ", ".join(
                f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes[:8]
            )
        )
    missing = [k for k in incompatible.missing_keys if k not in {s[0] for s in incompatible.incorrect_shapes}]
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file, e.g. {missing[:6]}")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected tensors, e.g. {incompatible.unexpected_keys[:6]}"
        )
    if problems:
        where = f" (under prefix '{prefix}')" if prefix else ""
        raise ValueError(
            f"{key}: weights in '{path}'{where} do not fit the model built from its config: "
            + "; ".join(problems)
            + ". Check that the config (depth, number of classes, head) is the one the weights were "
            "trained with."
        )


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
