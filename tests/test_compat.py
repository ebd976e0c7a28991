"""Every private detectron2 name ds2d2.compat relies on is still there and still means what compat assumes.
A detectron2 upgrade that moves one fails here, with the name in the message."""
import importlib
import inspect

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.utils import comm
from torch import nn

from ds2d2 import compat


def uses(function, text: str) -> bool:
    return text in inspect.getsource(function)


@pytest.mark.parametrize("trainer_class", [SimpleTrainer, AMPTrainer])
def test_trainers_write_metrics_through_the_method_compat_overrides(trainer_class):
    assert uses(trainer_class.run_step, "self._write_metrics("), (
        f"detectron2 {trainer_class.__name__}.run_step no longer calls self._write_metrics: "
        "ds2d2.compat.with_metrics_writer (non-finite loss checks) must follow"
    )
    calls = []
    checked = compat.with_metrics_writer(trainer_class, lambda *args: calls.append(args))
    assert issubclass(checked, trainer_class)
    checked._write_metrics(None, {"loss": torch.tensor(1.0)}, 0.5)
    assert calls == [({"loss": torch.tensor(1.0)}, 0.5, "")]


def test_default_trainer_keeps_its_last_evaluation_where_compat_reads_it():
    assert uses(DefaultTrainer.build_hooks, "self._last_eval_results ="), (
        "detectron2 DefaultTrainer no longer stores _last_eval_results: "
        "ds2d2.compat.last_eval_results must follow"
    )

    class Trainer:
        _last_eval_results = {"bbox": {"AP": 1.0}}

    assert compat.last_eval_results(Trainer()) == {"bbox": {"AP": 1.0}}
    assert compat.last_eval_results(object()) is None


def test_comm_local_process_group_is_settable():
    assert hasattr(comm, "_LOCAL_PROCESS_GROUP") and uses(comm.get_local_rank, "_LOCAL_PROCESS_GROUP"), (
        "detectron2.utils.comm no longer uses _LOCAL_PROCESS_GROUP: "
        "ds2d2.compat.set_local_process_group must follow"
    )
    before = comm._LOCAL_PROCESS_GROUP
    try:
        compat.set_local_process_group("group")
        assert comm._LOCAL_PROCESS_GROUP == "group"
    finally:
        comm._LOCAL_PROCESS_GROUP = before


def test_cfg_values_decode_like_merge_from_list():
    assert hasattr(CfgNode, "_decode_cfg_value"), "yacs CfgNode._decode_cfg_value is gone: see ds2d2.compat"
    assert compat.decode_cfg_value("(1, 2)") == (1, 2)
    assert compat.decode_cfg_value("voc") == "voc"


def test_checkpoint_load_reports_missing_unexpected_and_mis_shaped_tensors():
    assert hasattr(DetectionCheckpointer, "_load_model"), "DetectionCheckpointer._load_model is gone (compat)"
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 5).numpy(), "0.bias": torch.ones(3).numpy(), "extra": torch.zeros(1)}
    report = compat.load_state_with_report(model, {"model": state})
    assert [k for k, _, _ in report.incorrect_shapes] == ["0.weight"]
    assert set(report.missing_keys) >= {"1.weight", "1.bias"} and report.unexpected_keys == ["extra"]
    assert torch.equal(model[0].bias, torch.ones(3))  # NumPy arrays (.pkl files) are converted and loaded


def test_checkpointers_read_files_through_the_hook_compat_overrides(tmp_path):
    from fvcore.common.checkpoint import Checkpointer

    assert uses(Checkpointer.load, "self._load_file("), (
        "fvcore Checkpointer.load no longer reads files through self._load_file: "
        "ds2d2.compat.with_file_reader (safe checkpoint reading) must follow"
    )
    seen = []
    state = {"weight": torch.full((1, 2), 3.0), "bias": torch.full((1,), -1.0)}

    def read(checkpointer, filename):
        seen.append(filename)
        return {"model": state}

    reading = compat.with_file_reader(DetectionCheckpointer, read, "Reading")
    model = nn.Linear(2, 1)
    (tmp_path / "w.pth").write_bytes(b"")  # only the reader's dict is loaded: the file is never parsed
    reading(model).load(str(tmp_path / "w.pth"))
    assert reading.__name__ == "Reading" and seen == [str(tmp_path / "w.pth")]
    assert torch.equal(model.weight, state["weight"]) and torch.equal(model.bias, state["bias"])


def test_default_trainer_steps_and_checkpoints_through_the_trainer_compat_sets():
    assert uses(DefaultTrainer.run_step, "self._trainer.run_step()"), (
        "detectron2 DefaultTrainer.run_step no longer steps through self._trainer: "
        "ds2d2.compat.set_step_trainer must follow"
    )
    assert "getattr(self._trainer, x)" in inspect.getsource(inspect.getmodule(DefaultTrainer)), (
        "detectron2 DefaultTrainer's model/data_loader/optimizer no longer read self._trainer: "
        "ds2d2.compat.set_step_trainer must follow"
    )

    class Holder:
        pass

    holder, inner = Holder(), object()
    compat.set_step_trainer(holder, inner)
    assert compat.step_trainer(holder) is inner


# Every detectron2 name compat.install_rotated_ops replaces, spelled out here so that the table in compat and
# this test must agree, and an upgrade that moves or renames one fails below, naming it.
PATCHED_ROTATED_NAMES = {
    ("detectron2.layers.rotated_boxes", "pairwise_iou_rotated"): "pairwise_iou_rotated",
    ("detectron2.structures.rotated_boxes", "pairwise_iou_rotated"): "pairwise_iou_rotated",
    ("detectron2.layers.nms", "nms_rotated"): "nms_rotated",
    ("detectron2.layers", "nms_rotated"): "nms_rotated",
    ("detectron2.layers.nms", "batched_nms_rotated"): "batched_nms_rotated",
    ("detectron2.layers", "batched_nms_rotated"): "batched_nms_rotated",
    ("detectron2.modeling.proposal_generator.rrpn", "batched_nms_rotated"): "batched_nms_rotated",
    ("detectron2.modeling.roi_heads.rotated_fast_rcnn", "batched_nms_rotated"): "batched_nms_rotated",
    ("detectron2.layers.roi_align_rotated", "roi_align_rotated"): "roi_align_rotated",
    ("detectron2.layers", "roi_align_rotated"): "roi_align_rotated",
}
# Where detectron2 calls them through those names (source text of the calling function).
ROTATED_CALLERS = [
    ("detectron2.structures.rotated_boxes", "pairwise_iou", "pairwise_iou_rotated("),
    ("detectron2.modeling.proposal_generator.rrpn", "find_top_rrpn_proposals", "batched_nms_rotated("),
    ("detectron2.modeling.proposal_generator.rrpn", "RRPN.label_and_sample_anchors",
     "pairwise_iou_rotated)("),
    ("detectron2.modeling.roi_heads.rotated_fast_rcnn", "fast_rcnn_inference_single_image_rotated",
     "batched_nms_rotated("),
    ("detectron2.modeling.roi_heads.rotated_fast_rcnn", "RROIHeads.label_and_sample_proposals",
     "pairwise_iou_rotated("),
    ("detectron2.layers.roi_align_rotated", "ROIAlignRotated.forward", "roi_align_rotated("),
    ("detectron2.modeling.poolers", "ROIPooler.__init__", "ROIAlignRotated("),
]


def test_rotated_ops_table_names_every_patched_attribute():
    table = {place: name for name, places in compat.ROTATED_OPS.items() for place in places}
    assert table == PATCHED_ROTATED_NAMES


@pytest.mark.parametrize("place", sorted(PATCHED_ROTATED_NAMES), ids=".".join)
def test_each_patched_rotated_attribute_exists_and_is_ours_on_a_pure_python_install(place):
    from ds2d2 import rotated

    module_name, attribute = place
    module = importlib.import_module(module_name)
    assert hasattr(module, attribute), (
        f"detectron2 {module_name}.{attribute} is gone: ds2d2.compat.ROTATED_OPS (install_rotated_ops) "
        "must follow"
    )
    ours = getattr(rotated, PATCHED_ROTATED_NAMES[place])
    if compat.detectron2_has_compiled_ops():
        assert getattr(module, attribute) is not ours, "an official detectron2 build keeps its compiled ops"
    else:
        assert getattr(module, attribute) is ours, f"import ds2d2 did not install {module_name}.{attribute}"


@pytest.mark.parametrize("module_name, function, call", ROTATED_CALLERS, ids=[c[1] for c in ROTATED_CALLERS])
def test_detectron2_calls_the_rotated_ops_through_the_patched_names(module_name, function, call):
    target = importlib.import_module(module_name)
    for part in function.split("."):
        target = getattr(target, part)
    assert uses(target, call), (
        f"detectron2 {module_name}.{function} no longer calls {call[:-1]}: the rotated ops it reaches "
        "must be added to ds2d2.compat.ROTATED_OPS"
    )


def test_install_rotated_ops_is_a_no_op_with_compiled_ops(monkeypatch):
    nms_module = importlib.import_module("detectron2.layers.nms")  # detectron2.layers.nms is a function
    monkeypatch.setattr(compat, "detectron2_has_compiled_ops", lambda: True)
    monkeypatch.setattr(nms_module, "nms_rotated", "compiled")
    assert compat.install_rotated_ops() is False and nms_module.nms_rotated == "compiled"
