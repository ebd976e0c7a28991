"""DS2D2Amplifier: the teacher's frozen trunk on high-frequency features, a trainable head, strict loading."""
import copy
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import random_batch, tiny_cfg
from ds2d2 import high_frequency
from ds2d2.engine import Trainer

DETECTORS = ["RetinaNet", "GeneralizedRCNN"]
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def amplifier_cfg(teacher_cfg: CfgNode, weights: str, init: str = "teacher") -> CfgNode:
    cfg = teacher_cfg.clone()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Amplifier", "MODEL.DS2D2.TEACHER_WEIGHTS", weights,
                         "MODEL.DS2D2.AMPLIFIER_INIT", init])
    return cfg


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """``teachers(detector)``: (config, weights path, built teacher) of a random tiny teacher."""
    cache: Dict[str, Tuple[CfgNode, str, nn.Module]] = {}

    def get(detector: str) -> Tuple[CfgNode, str, nn.Module]:
        if detector not in cache:
            torch.manual_seed(0)
            cfg = tiny_cfg(detector)
            teacher = build_model(cfg).eval()
            path = str(tmp_path_factory.mktemp(detector) / "teacher.pth")
            torch.save({"model": teacher.state_dict()}, path)
            cache[detector] = (cfg, path, teacher)
        cfg, path, teacher = cache[detector]
        return cfg.clone(), path, teacher

    return get


@pytest.fixture(scope="module")
def amplifiers(teachers):
    """``amplifiers(detector)``: (config, a fresh copy of the amplifier built on ``teachers(detector)``)."""
    cache: Dict[str, Tuple[CfgNode, nn.Module]] = {}

    def get(detector: str) -> Tuple[CfgNode, nn.Module]:
        if detector not in cache:
            cfg, path, _ = teachers(detector)
            cfg = amplifier_cfg(cfg, path)
            cache[detector] = (cfg, build_model(cfg))
        cfg, model = cache[detector]
        return cfg.clone(), copy.deepcopy(model)

    return get


def tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def head_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """The amplifier's parameters outside the (frozen) backbone, by the detector's names."""
    return {k: v for k, v in model.detector.named_parameters() if not k.startswith("backbone.")}


@pytest.mark.parametrize("detector", DETECTORS)
def test_trunk_is_the_teacher_backbone_and_the_head_starts_from_the_teachers(teachers, amplifiers, detector):
    _, _, teacher = teachers(detector)
    _, model = amplifiers(detector)
    trunk = model.detector.backbone.trunk.state_dict()
    expected = teacher.backbone.state_dict()
    assert trunk.keys() == expected.keys()
    assert all(torch.equal(trunk[k], expected[k]) for k in expected)
    # MODEL.DS2D2.AMPLIFIER_INIT "teacher" (default, the authors' load_from): every head tensor is the
    # teacher's
    teacher_params = dict(teacher.named_parameters())
    head = head_parameters(model)
    assert head and all(torch.equal(v, teacher_params[k]) for k, v in head.items())


@pytest.mark.parametrize("detector", DETECTORS)
def test_scratch_init_keeps_only_the_teacher_trunk(teachers, detector):
    cfg, path, teacher = teachers(detector)
    torch.manual_seed(1)  # a head initialised differently from the teacher's
    model = build_model(amplifier_cfg(cfg, path, init="scratch"))
    trunk = model.detector.backbone.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in teacher.backbone.state_dict().items())
    teacher_params = dict(teacher.named_parameters())
    assert any(not torch.equal(v, teacher_params[k]) for k, v in head_parameters(model).items())


def test_unknown_init_is_named(teachers):
    cfg, path, _ = teachers("RetinaNet")
    with pytest.raises(ValueError, match="MODEL.DS2D2.AMPLIFIER_INIT must be one of"):
        build_model(amplifier_cfg(cfg, path, init="imagenet"))


@pytest.mark.parametrize("detector", DETECTORS)
def test_backbone_gives_the_high_frequency_part_of_the_teacher_features(teachers, amplifiers, detector):
    _, _, teacher = teachers(detector)
    _, model = amplifiers(detector)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = {name: high_frequency(f) for name, f in teacher.backbone(x).items()}
        features = model.detector.backbone(x)
    assert features.keys() == expected.keys()
    assert all(torch.equal(features[name], expected[name]) for name in expected)
    assert model.detector.backbone.output_shape() == teacher.backbone.output_shape()


@pytest.mark.parametrize("detector", DETECTORS)
def test_training_step_changes_the_head_only(amplifiers, detector):
    cfg, model = amplifiers(detector)
    cfg.SOLVER.BASE_LR = 1e-3
    trunk = model.detector.backbone.trunk
    optimizer = Trainer.build_optimizer(cfg, model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in head_parameters(model).values()}
    assert not any(p.requires_grad for p in trunk.parameters())

    trunk_before = tensors(trunk)
    heads_before = {k: v.detach().clone() for k, v in head_parameters(model).items()}
    model.train()
    assert not any(m.training for m in trunk.modules())
    with EventStorage():
        losses = model(random_batch())
    assert losses and all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()

    assert not any(m.training for m in trunk.modules())
    trunk_after = trunk.state_dict()
    assert all(torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)  # parameters, BN buffers
    heads_after = head_parameters(model)
    moved = [k for k, v in heads_before.items() if not torch.equal(v, heads_after[k])]
    assert len(moved) > len(heads_before) // 2


@pytest.mark.parametrize("detector", DETECTORS)
def test_evaluation_returns_instances_like_a_detector(amplifiers, detector):
    _, model = amplifiers(detector)
    model.eval()
    batch = random_batch(size=64)
    batch[1]["height"], batch[1]["width"] = 80, 120  # outputs are rescaled to the requested size
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for inputs, output in zip(batch, outputs):
        instances = output["instances"]
        assert isinstance(instances, Instances)
        assert instances.image_size == (inputs["height"], inputs["width"])
        assert len(instances) > 0
        assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())
        assert ((instances.pred_classes >= 0) & (instances.pred_classes < 3)).all()


@pytest.mark.parametrize(
    "opts, problem",
    [(["MODEL.RESNETS.DEPTH", 34], "missing"), (["MODEL.FPN.OUT_CHANNELS", 64], "shape mismatch")],
    ids=["other-depth", "other-fpn-width"],
)
def test_refuses_teacher_weights_that_do_not_fit(teachers, opts, problem):
    cfg, path, _ = teachers("RetinaNet")
    cfg = amplifier_cfg(cfg, path)
    cfg.merge_from_list([str(v) for v in opts])
    expected = f"MODEL.DS2D2.TEACHER_WEIGHTS: weights in '.*teacher.pth'.*{problem}"
    with pytest.raises(ValueError, match=expected):
        build_model(cfg)


def test_refuses_missing_or_truncated_teacher_weights(teachers, tmp_path):
    cfg, path, _ = teachers("RetinaNet")
    with pytest.raises(FileNotFoundError, match="MODEL.DS2D2.TEACHER_WEIGHTS.*absent.pth"):
        build_model(amplifier_cfg(cfg, str(tmp_path / "absent.pth")))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(path).read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="MODEL.DS2D2.TEACHER_WEIGHTS.*truncated.pth"):
        build_model(amplifier_cfg(cfg, str(truncated)))


def test_refuses_an_unknown_wavelet(teachers):
    cfg, path, _ = teachers("RetinaNet")
    cfg = amplifier_cfg(cfg, path)
    cfg.MODEL.DS2D2.WAVELET = "no_such_wavelet"
    with pytest.raises(ValueError, match="no_such_wavelet"):
        build_model(cfg)
