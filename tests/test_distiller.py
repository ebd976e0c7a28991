"""DS2D2Distiller: what trains, what stays frozen, what is saved, how bad configs fail (tiny models)."""
import copy
import math
import pickle
from pathlib import Path
from typing import Dict

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import assert_same_outputs, random_batch, tiny_cfg, tiny_stages
from ds2d2.engine import Trainer

DETECTORS = ["RetinaNet", "GeneralizedRCNN"]
TERMS = {
    "EXPLICIT_LOW": "loss_ds2d2_ex_low",
    "EXPLICIT_HIGH": "loss_ds2d2_ex_high",
    "IMPLICIT_FULL": "loss_ds2d2_im_full",
    "IMPLICIT_HIGH": "loss_ds2d2_im_high",
}
# The student's first trainable weight (MODEL.BACKBONE.FREEZE_AT is 2).
DEEP_STUDENT_WEIGHT = "backbone.bottom_up.res3.0.conv1.weight"
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """``stages(detector)``: a fresh copy of the distiller config of that detector's tiny three stages."""
    cache: Dict[str, CfgNode] = {}

    def get(detector: str) -> CfgNode:
        if detector not in cache:
            torch.manual_seed(0)
            cache[detector] = tiny_stages(tmp_path_factory.mktemp(detector), detector)
        return cache[detector].clone()

    return get


@pytest.fixture(scope="module")
def distiller(stages):
    """``distiller(detector)``: a fresh copy of the distiller built from ``stages(detector)``."""
    cache: Dict[str, nn.Module] = {}

    def get(detector: str) -> nn.Module:
        if detector not in cache:
            cache[detector] = build(stages(detector))
        return copy.deepcopy(cache[detector])

    return get


def amplifier_head(model: nn.Module):
    """The frozen high-frequency amplifier head of a distiller's DS2D2 implicit term, or None."""
    term = model.terms["DS2D2Implicit"] if "DS2D2Implicit" in model.terms else None
    return term.amplifier_head if term is not None else None


def build(cfg: CfgNode, opts=()) -> nn.Module:
    cfg.merge_from_list([str(v) for v in opts])
    torch.manual_seed(0)
    return build_model(cfg)


def frozen_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Copies of every teacher and amplifier-head tensor (parameters and buffers)."""
    state = {f"teacher.{k}": v.clone() for k, v in model.teacher.state_dict().items()}
    if amplifier_head(model) is not None:
        state.update({f"amplifier.{k}": v.clone() for k, v in amplifier_head(model).state_dict().items()})
    return state


def train_step(model: nn.Module, cfg: CfgNode) -> Dict[str, torch.Tensor]:
    """One SGD step of the optimizer that ds2d2's Trainer builds; returns the losses."""
    optimizer = Trainer.build_optimizer(cfg, model)
    model.train()
    with EventStorage():
        losses = model(random_batch())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def trained_ids(model: nn.Module) -> set:
    """Ids of the student's and adapters' trainable parameters."""
    return {id(p) for p in [*model.student.parameters(), *model.adapters.parameters()] if p.requires_grad}


# ----------------------------------------------------------------------------------------------------------
# Training step
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", DETECTORS)
def test_training_step_moves_the_student_only(stages, distiller, detector):
    cfg = stages(detector)
    cfg.SOLVER.BASE_LR = 1e-6
    model = distiller(detector)
    frozen_before = frozen_state(model)
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapters.state_dict().items()}

    model.train()
    assert model.student.training
    for part in (model.teacher, amplifier_head(model)):
        assert not any(m.training for m in part.modules())
    losses = train_step(model, cfg)

    assert set(TERMS.values()) <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    assert not any(m.training for m in model.teacher.modules())
    assert not any(m.training for m in amplifier_head(model).modules())
    frozen_after = frozen_state(model)
    assert frozen_after.keys() == frozen_before.keys()
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    student_after = model.student.state_dict()
    moved = {k for k in student_before if not torch.equal(student_before[k], student_after[k])}
    assert DEEP_STUDENT_WEIGHT in moved
    assert any(k.startswith("backbone.fpn_output") for k in moved)
    assert any(k.startswith(("head.", "roi_heads.")) for k in moved)
    assert any(not torch.equal(v, model.adapters.state_dict()[k]) for k, v in adapter_before.items())


@pytest.mark.parametrize("detector", DETECTORS)
def test_frozen_parts_are_out_of_parameters_checkpoints_and_optimizer(stages, distiller, detector, tmp_path):
    cfg = stages(detector)
    model = distiller(detector)
    frozen_ids = {id(p) for part in (model.teacher, amplifier_head(model)) for p in part.parameters()}
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(p.requires_grad for p in amplifier_head(model).parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained_ids(model)
    assert not frozen_ids & {id(p) for p in model.parameters()}

    keys = list(model.state_dict())
    assert keys and all(k.startswith(("student.", "adapters.")) for k in keys)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert sorted(saved) == sorted(keys)

    optimizer = Trainer.build_optimizer(cfg, model)
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert set(in_optimizer) == trained_ids(model)


def test_frozen_parts_follow_to(distiller):
    model = distiller("RetinaNet").to(torch.float64)
    for part in (model.student, model.teacher, amplifier_head(model)):
        assert {p.dtype for p in part.parameters()} == {torch.float64}


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_ds2d2_term_alone_reaches_the_student_backbone(distiller, detector):
    model = distiller(detector)
    model.train()
    with EventStorage():
        losses = model(random_batch())
    deep = model.student.get_parameter(DEEP_STUDENT_WEIGHT)
    for name in TERMS.values():
        (grad,) = torch.autograd.grad(losses[name], [deep], retain_graph=True, allow_unused=True)
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", list(TERMS))
def test_zero_weight_removes_its_term(stages, key):
    model = build(stages("RetinaNet"), [f"MODEL.DS2D2.LOSS.{key}", 0.0])
    model.train()
    with EventStorage():
        losses = model(random_batch())
    assert TERMS[key] not in losses
    assert {v for k, v in TERMS.items() if k != key} <= set(losses)


def test_zero_high_frequency_weight_needs_no_amplifier_file(stages, tmp_path):
    opts = ["MODEL.DS2D2.LOSS.IMPLICIT_HIGH", 0.0, "MODEL.DS2D2.AMPLIFIER_WEIGHTS", tmp_path / "absent.pth"]
    assert amplifier_head(build(stages("RetinaNet"), opts)) is None


def test_no_adapter_when_explicit_terms_are_off_and_implicit_input_is_raw(stages):
    opts = ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.DS2D2.IMPLICIT_INPUT", "raw"]
    opts += ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", 0.0, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", 0.0]
    model = build(stages("RetinaNet"), opts)
    assert model.adapters is None
    assert all(k.startswith("student.") for k in model.state_dict())
    model.train()
    with EventStorage():
        losses = model(random_batch())
    assert {"loss_ds2d2_im_full", "loss_ds2d2_im_high"} <= set(losses)
    assert not {"loss_ds2d2_ex_low", "loss_ds2d2_ex_high"} & set(losses)


# ----------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", DETECTORS)
def test_eval_returns_what_the_student_alone_returns(stages, distiller, detector):
    cfg = stages(detector)
    cfg.SOLVER.BASE_LR = 1e-6
    model = distiller(detector)
    train_step(model, cfg)  # student weights and BN statistics no longer at their initial values
    student_cfg = cfg.clone()
    student_cfg.MODEL.META_ARCHITECTURE = detector
    plain = build_model(student_cfg)
    plain.load_state_dict(model.student.state_dict(), strict=True)

    calls = []
    model.teacher.backbone.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    plain.eval()
    batch = random_batch(seed=3)
    with torch.no_grad():
        assert_same_outputs(model(batch), plain(batch))
    assert not calls


# ----------------------------------------------------------------------------------------------------------
# Teacher/student differences
# ----------------------------------------------------------------------------------------------------------
def test_different_fpn_widths_train_through_adapters(stages, distiller):
    cfg = stages("RetinaNet")
    cfg.SOLVER.BASE_LR = 1e-6
    model = distiller("RetinaNet")
    assert cfg.MODEL.DS2D2.IMPLICIT_INPUT == "auto" and model.terms["DS2D2Implicit"].adapted_input
    assert {tuple(p.shape) for p in model.adapters.parameters()} == {(64, 32, 1, 1)}
    losses = train_step(model, cfg)
    assert all(torch.isfinite(v) for v in losses.values())

    with pytest.raises(ValueError, match="MODEL.DS2D2.IMPLICIT_INPUT"):
        build(stages("RetinaNet"), ["MODEL.DS2D2.IMPLICIT_INPUT", "raw"])


def test_teacher_receives_its_own_channel_order_and_normalisation(tmp_path):
    teacher_opts = ["INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", [103.5, 116.3, 123.7]]
    teacher_opts += ["MODEL.PIXEL_STD", [57.4, 57.1, 58.4]]
    student_opts = ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", [10.0, 20.0, 30.0]]
    student_opts += ["MODEL.PIXEL_STD", [2.0, 3.0, 4.0]]
    torch.manual_seed(0)
    model = build(tiny_stages(tmp_path, "RetinaNet", teacher_opts, student_opts))
    seen = []
    model.teacher.backbone.register_forward_hook(lambda module, args, out: seen.append(out))
    batch = random_batch()
    model.train()
    with EventStorage():
        model(batch)
    inside = seen.pop()

    teacher = model.teacher
    bgr = [{"image": x["image"].flip(0)} for x in batch]
    with torch.no_grad():
        alone = teacher.backbone(teacher.preprocess_image(bgr).tensor)
        student_normalised = teacher.backbone(model.student.preprocess_image(batch).tensor)
    assert inside.keys() == alone.keys()
    assert all(torch.equal(inside[f], alone[f]) for f in alone)
    assert not torch.allclose(inside["p3"], student_normalised["p3"])


# ----------------------------------------------------------------------------------------------------------
# Bad configs fail at build time, naming the key or file
# ----------------------------------------------------------------------------------------------------------
def write_teacher_yaml(cfg: CfgNode, folder: Path, opts) -> str:
    """A copy of the teacher's YAML with ``opts`` applied."""
    teacher = tiny_cfg(cfg.MODEL.DS2D2.DETECTOR)
    teacher.merge_from_file(cfg.MODEL.DS2D2.TEACHER_CONFIG)
    teacher.merge_from_list([str(v) for v in opts])
    path = folder / "other_teacher.yaml"
    path.write_text(teacher.dump())
    return str(path)


def truncated_copy(path: str, folder: Path) -> str:
    data = Path(path).read_bytes()
    copy = folder / f"truncated_{Path(path).name}"
    copy.write_bytes(data[: len(data) // 2])
    return str(copy)


@pytest.mark.parametrize("key", ["TEACHER_CONFIG", "TEACHER_WEIGHTS", "AMPLIFIER_WEIGHTS"])
def test_missing_file_is_named(stages, tmp_path, key):
    absent = str(tmp_path / f"absent_{key.lower()}")
    with pytest.raises(FileNotFoundError, match=f"MODEL.DS2D2.{key}.*absent_{key.lower()}"):
        build(stages("RetinaNet"), [f"MODEL.DS2D2.{key}", absent])


@pytest.mark.parametrize("key", ["TEACHER_WEIGHTS", "AMPLIFIER_WEIGHTS"])
def test_truncated_checkpoint_is_named(stages, tmp_path, key):
    cfg = stages("RetinaNet")
    bad = truncated_copy(cfg.MODEL.DS2D2[key], tmp_path)
    with pytest.raises(RuntimeError, match=f"MODEL.DS2D2.{key}.*truncated_"):
        build(cfg, [f"MODEL.DS2D2.{key}", bad])


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_teacher_pkl_is_read_without_running_code(stages, tmp_path, capsys):
    cfg = stages("RetinaNet")
    state = torch.load(cfg.MODEL.DS2D2.TEACHER_WEIGHTS, map_location="cpu", weights_only=True)["model"]
    arrays = tmp_path / "teacher.pkl"  # Detectron2 model-zoo format: numpy arrays, loads like the .pth
    arrays.write_bytes(
        pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"})
    )
    build(cfg, ["MODEL.DS2D2.TEACHER_WEIGHTS", str(arrays)])
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"model": {}, "extra": _RunsCode()}))
    with pytest.raises(
        RuntimeError, match="MODEL.DS2D2.TEACHER_WEIGHTS: Checkpoint '.*hostile.pkl' refers to"
    ):
        build(cfg, ["MODEL.DS2D2.TEACHER_WEIGHTS", str(hostile)])
    assert "unpickling ran code" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "teacher_opts, problem",
    [(["MODEL.RESNETS.DEPTH", 34], "missing"), (["MODEL.FPN.OUT_CHANNELS", 32], "shape mismatch")],
    ids=["other-depth", "other-fpn-width"],
)
def test_teacher_weights_that_do_not_fit_are_refused(stages, tmp_path, teacher_opts, problem):
    cfg = stages("RetinaNet")
    cfg.MODEL.DS2D2.TEACHER_CONFIG = write_teacher_yaml(cfg, tmp_path, teacher_opts)
    expected = f"MODEL.DS2D2.TEACHER_WEIGHTS: weights in '.*teacher.pth'.*{problem}"
    with pytest.raises(ValueError, match=expected):
        build(cfg)


def test_amplifier_weights_of_another_model_are_refused(stages):
    cfg = stages("RetinaNet")
    cfg.MODEL.DS2D2.AMPLIFIER_WEIGHTS = cfg.MODEL.DS2D2.TEACHER_WEIGHTS  # a detector, not an amplifier
    with pytest.raises(ValueError, match="MODEL.DS2D2.AMPLIFIER_WEIGHTS.*teacher.pth.*missing"):
        build(cfg)


def test_class_count_mismatch_is_refused(stages, tmp_path):
    cfg = stages("RetinaNet")
    cfg.MODEL.DS2D2.TEACHER_CONFIG = write_teacher_yaml(cfg, tmp_path, ["MODEL.RETINANET.NUM_CLASSES", 5])
    with pytest.raises(ValueError, match="other_teacher.yaml.*5 classes.*student 3"):
        build(cfg)


def test_class_list_mismatch_is_refused(stages, tmp_path):
    MetadataCatalog.get("ds2d2_test_teacher_data").thing_classes = ["ship", "plane", "car"]
    MetadataCatalog.get("ds2d2_test_student_data").thing_classes = ["ship", "plane", "truck"]
    cfg = stages("RetinaNet")
    opts = ["DATASETS.TRAIN", ("ds2d2_test_teacher_data",)]
    cfg.MODEL.DS2D2.TEACHER_CONFIG = write_teacher_yaml(cfg, tmp_path, opts)
    cfg.DATASETS.TRAIN = ("ds2d2_test_student_data",)
    with pytest.raises(ValueError, match="different class lists"):
        build(cfg)


def test_unknown_wavelet_is_named(stages):
    with pytest.raises(ValueError, match="MODEL.DS2D2.WAVELET.*no_such_wavelet"):
        build(stages("RetinaNet"), ["MODEL.DS2D2.WAVELET", "no_such_wavelet"])


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "1.0", True], ids=repr)
def test_bad_loss_weight_is_named(stages, value):
    cfg = stages("RetinaNet")
    cfg.MODEL.DS2D2.LOSS.IMPLICIT_FULL = value  # set directly: yacs would refuse some of these types on merge
    with pytest.raises(ValueError, match="MODEL.DS2D2.LOSS.IMPLICIT_FULL must be a finite number >= 0"):
        build(cfg)
