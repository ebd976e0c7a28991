"""SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" (ds2d2.solver): one norm over every gradient, as MMDetection's
grad_clip=dict(max_norm=35, norm_type=2) in FGD's and MGD's official configs, against a direct computation;
Detectron2's own "norm" (each tensor on its own) differs; the trainer builds it."""
import itertools
import os

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from conftest import random_batch, tiny_stages
from ds2d2 import add_ds2d2_config
from ds2d2.engine import Trainer
from ds2d2.solver import FullModelClippedSGD, build_optimizer

LR = 0.1


def solver_cfg(clip_type: str, clip_value: float = 35.0, enabled: bool = True):
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_list([
        "SOLVER.BASE_LR", LR, "SOLVER.MOMENTUM", 0.9, "SOLVER.WEIGHT_DECAY", 0.0,
        "SOLVER.CLIP_GRADIENTS.ENABLED", enabled, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value, "SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0,
    ])
    return cfg


def model_with_gradients() -> nn.Module:
    """Two tensors whose gradients have norms 30 and 40 (50 together): under 35 each, over 35 together."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    model.weight.grad = torch.full_like(model.weight, 30.0 / 12 ** 0.5)  # 12 elements
    model.bias.grad = torch.full_like(model.bias, 40.0 / 3 ** 0.5)  # 3 elements
    return model


def step(cfg) -> dict:
    model = model_with_gradients()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    optimizer = build_optimizer(cfg, model)
    optimizer.step()
    return {k: (before[k] - v.detach()) / (LR * grads[k]) for k, v in model.named_parameters()}


def test_full_model_scales_every_gradient_by_one_factor():
    factors = step(solver_cfg("full_model"))
    total = (30.0 ** 2 + 40.0 ** 2) ** 0.5  # 50: the norm of all gradients as one vector
    for name, factor in factors.items():  # the first SGD step moves by lr * g * (35 / 50)
        expected = torch.full_like(factor, 35.0 / total)
        torch.testing.assert_close(factor, expected, rtol=1e-5, atol=0.0, msg=name)


def test_detectron2_norm_clips_each_tensor_on_its_own():
    factors = step(solver_cfg("norm"))  # each tensor's norm (30, 40) against 35
    torch.testing.assert_close(factors["weight"], torch.ones_like(factors["weight"]), rtol=1e-5, atol=0.0)
    expected = torch.full_like(factors["bias"], 35.0 / 40.0)
    torch.testing.assert_close(factors["bias"], expected, rtol=1e-5, atol=0.0)


def test_other_settings_keep_detectron2s_optimizer():
    assert type(build_optimizer(solver_cfg("full_model", enabled=False), nn.Linear(2, 2))) is torch.optim.SGD
    assert not isinstance(build_optimizer(solver_cfg("norm"), nn.Linear(2, 2)), FullModelClippedSGD)


def test_a_bad_max_norm_is_named():
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a finite number > 0"):
        build_optimizer(solver_cfg("full_model", clip_value=0.0), nn.Linear(2, 2))


class RandomBatchTrainer(Trainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return (random_batch(seed=i) for i in itertools.count())


def test_the_trainer_builds_the_full_model_clipping(tmp_path):
    cfg = tiny_stages(tmp_path, "RetinaNet", student_opts=["MODEL.DS2D2.TERMS", "['MGD']"])
    cfg.merge_from_list([
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 35.0, "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    os.makedirs(cfg.OUTPUT_DIR)
    optimizer = RandomBatchTrainer(cfg).optimizer
    assert isinstance(optimizer, FullModelClippedSGD) and optimizer.max_norm == 35.0
