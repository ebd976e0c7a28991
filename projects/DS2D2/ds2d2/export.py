"""Export the student of a DS2D2Distiller checkpoint as a plain Detectron2 checkpoint.

The distiller keeps its student under ``student.`` and its adapters under ``adapters.``; the teacher and the
amplifier head are never saved. The exported file holds only the student's tensors, prefix removed, and loads
into ``build_model(student_config(cfg))`` with no missing or unexpected keys (checked before writing).
"""
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import Tensor

from .checkpoint import atomic_write, load_state_strictly, read_checkpoint

STUDENT_PREFIX = "student."
AUTHOR = "ds2d2 export"


def student_config(cfg: CfgNode) -> CfgNode:
    """The plain student's config: the distiller's with MODEL.META_ARCHITECTURE = MODEL.DS2D2.DETECTOR."""
    if cfg.MODEL.META_ARCHITECTURE != "DS2D2Distiller":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: give the config of the distiller "
            "(stage 3, 'DS2D2Distiller') whose student you export."
        )
    student = cfg.clone()
    student.defrost()
    student.MODEL.META_ARCHITECTURE = cfg.MODEL.DS2D2.DETECTOR
    return student


def export_student_state(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The ``student.*`` tensors of a distiller state dict, prefix removed (adapters and the rest dropped)."""
    state = {k[len(STUDENT_PREFIX):]: v for k, v in state_dict.items() if k.startswith(STUDENT_PREFIX)}
    if not state:
        raise ValueError(
            f"the checkpoint has no '{STUDENT_PREFIX}*' tensors (it has e.g. {sorted(state_dict)[:4]}): "
            "it was not written for a DS2D2Distiller."
        )
    return state


def export_student(cfg: CfgNode, checkpoint_path: str, output_path: str) -> Dict[str, Tensor]:
    """Read the distiller checkpoint, check that its student fits ``student_config(cfg)``, then write
    ``{"model": student state, "__author__": AUTHOR}`` to ``output_path`` atomically; return the state."""
    checkpoint = read_checkpoint(checkpoint_path, "--checkpoint")
    try:
        state = export_student_state(checkpoint["model"])
    except ValueError as e:
        raise ValueError(f"{checkpoint_path}: {e}") from e
    plain_cfg = student_config(cfg)
    plain_cfg.MODEL.DEVICE = "cpu"
    load_state_strictly(build_model(plain_cfg), {"model": state}, "--checkpoint", checkpoint_path)
    exported = {"model": state, "__author__": AUTHOR}
    atomic_write(output_path, lambda f: torch.save(exported, f))  # a crash never leaves a half-written OUT
    return state
