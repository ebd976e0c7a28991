"""The trainer's optimizer: Detectron2's SGD, plus gradient clipping over the whole model.

Detectron2 v0.6's ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` "norm" clips each parameter tensor's gradient on its
own (``clip_grad_norm_`` called per tensor), and "value" each element. MMDetection's
``grad_clip=dict(max_norm=35, norm_type=2)`` (FGD's and MGD's official configs) calls ``clip_grad_norm_``
once over every parameter: the norm of all gradients together is brought down to ``max_norm``, every
gradient scaled by the same factor. ``CLIP_TYPE: "full_model"`` (the name Detectron2's DETR project gives it)
is that one: ``CLIP_VALUE`` is max_norm and ``NORM_TYPE`` the norm's p. Clipping runs inside
``optimizer.step``: after DDP's all-reduce and, with AMP, after the gradient scaler has unscaled them.
"""
from typing import Callable, Iterable, Optional

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_detectron2_optimizer
from detectron2.solver import get_default_optimizer_params
from torch import nn

from .config import config_number

FULL_MODEL = "full_model"  # SOLVER.CLIP_GRADIENTS.CLIP_TYPE
CLIP_TYPES = ("value", "norm", FULL_MODEL)  # Detectron2's two and ds2d2's


def check_clip_gradients(cfg: CfgNode) -> None:
    """When SOLVER.CLIP_GRADIENTS.ENABLED: CLIP_TYPE one of ``CLIP_TYPES``, CLIP_VALUE a finite number > 0 and
    NORM_TYPE a number > 0 (inf: the max norm); a ValueError naming the key otherwise."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not isinstance(clip.ENABLED, bool):
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.ENABLED must be True or False, got {clip.ENABLED!r}.")
    if not clip.ENABLED:
        return
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {CLIP_TYPES}, got {clip.CLIP_TYPE!r}."
        )
    config_number(clip.CLIP_VALUE, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", strict=True)
    norm = clip.NORM_TYPE
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.NORM_TYPE must be a number > 0 (the p of the L-p norm, .inf for the "
            f"largest value), got {norm!r}."
        )


class FullModelClippedSGD(torch.optim.SGD):
    """SGD whose ``step`` first clips the gradients of all its parameters together to the ``max_norm``
    (their ``norm_type``-norm as one vector), as ``torch.nn.utils.clip_grad_norm_`` over the whole model."""

    def __init__(self, params: Iterable, max_norm: float, norm_type: float, **sgd_options) -> None:
        super().__init__(params, **sgd_options)
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        return super().step(closure)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Detectron2's ``build_optimizer`` (SGD, its parameter groups and clipping types), with
    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` "full_model" added (see the module docstring)."""
    check_clip_gradients(cfg)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return build_detectron2_optimizer(cfg, model)
    solver = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    return FullModelClippedSGD(
        params, clip.CLIP_VALUE, clip.NORM_TYPE,
        lr=solver.BASE_LR,
        momentum=solver.MOMENTUM,
        nesterov=solver.NESTEROV,
        weight_decay=solver.WEIGHT_DECAY,
    )
