"""The one module that uses detectron2 (v0.6) names outside its public API.

Each function names the private attribute it relies on and why no public one serves. ``tests/test_compat.py``
checks every one against the installed detectron2, so an upgrade that moves one fails there, with a
message naming it, instead of silently inside a training run. (Installing detectron2 is
``tools/install_detectron2.py``'s job.) The one patch of detectron2 is ``install_rotated_ops``: on a
pure-Python install (no compiled ``_C``) it points Detectron2's rotated IoU / NMS / RoIAlign at ds2d2.rotated.
"""
from typing import Callable, Dict, Optional, Type

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, SimpleTrainer
from fvcore.common.checkpoint import Checkpointer
from detectron2.utils import comm
from torch import nn


def load_state_with_report(model: nn.Module, checkpoint: Dict):
    """Load ``checkpoint['model']`` into ``model`` the way Detectron2's checkpointer does (NumPy arrays of
    .pkl files converted, mis-shaped tensors skipped) and return its report (``missing_keys``,
    ``unexpected_keys``, ``incorrect_shapes``). Private: ``DetectionCheckpointer._load_model``; the public
    ``load()`` takes a path and only logs the report."""
    return DetectionCheckpointer(model)._load_model(checkpoint)


def with_metrics_writer(trainer_class: Type[SimpleTrainer], write: Callable) -> Type[SimpleTrainer]:
    """A subclass of ``trainer_class`` (SimpleTrainer / AMPTrainer) whose per-step metric writing is
    ``write(loss_dict, data_time, prefix)``. Private: ``_write_metrics``, the method ``run_step`` calls after
    ``backward`` and before ``optimizer.step`` (the public ``write_metrics`` is a static method it does not
    dispatch through)."""

    def _write_metrics(self, loss_dict, data_time, prefix=""):
        write(loss_dict, data_time, prefix)

    return type(f"Checked{trainer_class.__name__}", (trainer_class,), {"_write_metrics": _write_metrics})


def with_file_reader(
    checkpointer_class: Type[Checkpointer], read: Callable, name: str
) -> Type[Checkpointer]:
    """A subclass ``name`` of ``checkpointer_class`` whose ``load()`` reads each file with
    ``read(checkpointer, filename)`` instead of the class's own reader. Private: fvcore's
    ``Checkpointer._load_file``, the hook ``load()`` calls per file (its docstring invites subclasses to
    override it for other formats; there is no public one)."""

    def _load_file(self, filename: str) -> Dict:
        return read(self, filename)

    checked = type(name, (checkpointer_class,), {"_load_file": _load_file})
    checked.__module__ = checkpointer_class.__module__
    return checked


def set_step_trainer(trainer: DefaultTrainer, step_trainer: SimpleTrainer) -> None:
    """Make ``step_trainer`` (a SimpleTrainer / AMPTrainer) the one a DefaultTrainer runs each step with and
    checkpoints the optimizer through. Private: ``DefaultTrainer._trainer``, which ``run_step`` and the
    ``model`` / ``data_loader`` / ``optimizer`` properties read; ds2d2 builds its own (DDP options,
    non-finite loss checks) and DefaultTrainer has no setter."""
    trainer._trainer = step_trainer


def step_trainer(trainer: DefaultTrainer) -> SimpleTrainer:
    """The SimpleTrainer / AMPTrainer a DefaultTrainer steps with (see ``set_step_trainer``)."""
    return trainer._trainer


def last_eval_results(trainer) -> Optional[Dict]:
    """The results of the evaluation a DefaultTrainer ran after its last iteration, or None. Private:
    ``_last_eval_results``, where DefaultTrainer's evaluation hook keeps them (there is no accessor)."""
    return getattr(trainer, "_last_eval_results", None)


def set_local_process_group(group: "torch.distributed.ProcessGroup") -> None:
    """Make ``group`` the machine-local process group that ``comm.get_local_rank`` / ``get_local_size``
    use. Private: ``comm._LOCAL_PROCESS_GROUP`` (v0.6 has no ``create_local_process_group``)."""
    comm._LOCAL_PROCESS_GROUP = group


def decode_cfg_value(value):
    """A command-line config value parsed as ``merge_from_list`` parses it (a literal, else the string).
    Private: yacs' ``CfgNode._decode_cfg_value``."""
    return CfgNode._decode_cfg_value(value)


# Detectron2 names (module, attribute) that reach its compiled rotated ops, each replaced by ds2d2.rotated's
# pure-PyTorch op of the same signature. Modules that imported a function by name hold their own reference, so
# each such module is listed; ROIAlignRotated.forward calls its module's ``roi_align_rotated``.
ROTATED_OPS = {
    "pairwise_iou_rotated": [
        ("detectron2.layers.rotated_boxes", "pairwise_iou_rotated"),
        ("detectron2.structures.rotated_boxes", "pairwise_iou_rotated"),  # RotatedBoxes' pairwise_iou
    ],
    "nms_rotated": [
        ("detectron2.layers.nms", "nms_rotated"),
        ("detectron2.layers", "nms_rotated"),
    ],
    "batched_nms_rotated": [
        ("detectron2.layers.nms", "batched_nms_rotated"),
        ("detectron2.layers", "batched_nms_rotated"),
        ("detectron2.modeling.proposal_generator.rrpn", "batched_nms_rotated"),
        ("detectron2.modeling.roi_heads.rotated_fast_rcnn", "batched_nms_rotated"),
    ],
    "roi_align_rotated": [
        ("detectron2.layers.roi_align_rotated", "roi_align_rotated"),  # what ROIAlignRotated.forward calls
        ("detectron2.layers", "roi_align_rotated"),
    ],
}


def detectron2_has_compiled_ops() -> bool:
    """False when tools/install_detectron2.py installed detectron2 as pure Python (``_C`` is its stub)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_DS2D2_STUB", False)


def install_rotated_ops() -> bool:
    """Make Detectron2's rotated IoU (``pairwise_iou_rotated``, ``RotatedBoxes`` ``pairwise_iou``), NMS
    (``nms_rotated``, ``batched_nms_rotated``) and ``ROIAlignRotated`` run on ds2d2.rotated's pure-PyTorch
    ops, everywhere Detectron2 calls them (the names in ``ROTATED_OPS``), when its compiled ``_C`` is the
    stub of a pure-Python install. A no-op (returning False) with an official build, which keeps its
    compiled ops. Idempotent; ``import ds2d2`` calls it. Private: the module attributes listed in
    ``ROTATED_OPS``."""
    if detectron2_has_compiled_ops():
        return False
    import importlib

    from . import rotated

    for name, places in ROTATED_OPS.items():
        for module, attribute in places:
            setattr(importlib.import_module(module), attribute, getattr(rotated, name))
    return True
