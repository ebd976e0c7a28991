"""Export the student of a DS2D2Distiller checkpoint as a plain Detectron2 checkpoint.

The distiller keeps its student under ``student.`` and its adapters under ``adapters.``; the teacher and the
amplifier head are never saved. The exported file holds only the student's tensors, prefix removed, and loads
into ``build_model(student_config(cfg))`` with no missing or unexpected keys (checked before writing).
"""
import os
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import Tensor

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


def check_student_state(cfg: CfgNode, state: Dict[str, Tensor]) -> None:
    """Raise ValueError unless ``state`` loads into the plain student of ``cfg`` with no missing,
    unexpected or mis-shaped tensors."""
    plain_cfg = student_config(cfg)
    plain_cfg.MODEL.DEVICE = "cpu"
    expected = build_model(plain_cfg).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(names)} {what}, e.g. {names[:6]}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if names
    ]
    if problems:
        raise ValueError(
            f"the student weights do not fit the {plain_cfg.MODEL.META_ARCHITECTURE} built from the config: "
            + "; ".join(problems)
            + ". Is the config the one the checkpoint was trained with?"
        )


def read_weights_only(path: str) -> Dict:
    """A .pth checkpoint dict read by weights-only unpickling (no arbitrary code runs), or a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, non-tensor pickled objects, ...
        raise RuntimeError(
            f"cannot read checkpoint '{path}' with weights-only loading ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"checkpoint '{path}' has no 'model' state dict; expected one from train_net.py.")
    return checkpoint


def export_student(cfg: CfgNode, checkpoint_path: str, output_path: str) -> Dict[str, Tensor]:
    """Read the distiller checkpoint, check that its student fits ``student_config(cfg)``, then write
    ``{"model": student state, "__author__": AUTHOR}`` to ``output_path`` atomically; return the state."""
    checkpoint = read_weights_only(checkpoint_path)
    try:
        state = export_student_state(checkpoint["model"])
        check_student_state(cfg, state)
    except ValueError as e:
        raise ValueError(f"{checkpoint_path}: {e}") from e
    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    temporary = output_path + ".tmp"
    torch.save({"model": state, "__author__": AUTHOR}, temporary)
    os.replace(temporary, output_path)  # a crash never leaves a half-written OUT
    return state
