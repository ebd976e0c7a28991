"""PKD (ds2d2.distill.pkd): the loss against a direct computation of 1 - the Pearson correlation of each
channel, its zeros, its config checks, gradients in a tiny distiller, and 2 iterations through train_net.py
for each family."""
from typing import Dict

import pytest
import torch
from detectron2.modeling import build_model
from torch import Tensor

from conftest import assert_step_leaves_teacher, losses_then_shared_step, random_batch, tiny_cfg, tiny_stages
from ds2d2.distill import DISTILL_TERM_REGISTRY, DistillStep
from ds2d2.distill.pkd import PKD
from kd_baseline_support import checked_term, train_two_iterations

pytestmark = pytest.mark.usefixtures("single_torch_thread")
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}  # RetinaNet's levels
SIZES = {"p3": 6, "p4": 5, "p5": 4, "p6": 3, "p7": 2}  # H = W per level


def pkd_term(opts=(), s_width: int = 4, t_width: int = 4) -> PKD:
    cfg = tiny_cfg("RetinaNet", ["MODEL.DS2D2.TERMS", "['PKD']"])
    cfg.merge_from_list(list(opts))
    return checked_term(PKD, cfg, STRIDES, s_width, t_width)


def features(seed: int, channels: int = 4) -> Dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f: torch.randn(2, channels, n, n, generator=generator) * (1 + seed) for f, n in SIZES.items()}


def run(term: PKD, student: Dict[str, Tensor], teacher: Dict[str, Tensor]) -> Tensor:
    return term(DistillStep(None, [], student, teacher, {}))["loss_pkd"]


def one_minus_pearson(student: Tensor, teacher: Tensor) -> Tensor:
    """mean over channels c of 1 - r_c, r_c the Pearson correlation of S[:, c] and T[:, c] over (B, H, W)."""
    total = 0.0
    for c in range(student.shape[1]):
        x, y = student[:, c].flatten().double(), teacher[:, c].flatten().double()
        x, y = x - x.mean(), y - y.mean()
        total += 1 - float((x * y).sum() / ((x * x).sum() * (y * y).sum()).sqrt())
    return torch.tensor(total / student.shape[1], dtype=torch.float64)


def test_pkd_is_registered():
    assert "PKD" in {name for name, _ in DISTILL_TERM_REGISTRY}


def test_pkd_is_one_minus_the_mean_pearson_correlation_of_the_first_four_levels():
    term = pkd_term(["MODEL.DS2D2.PKD.WEIGHT", 0.7])
    assert term.in_features == ["p3", "p4", "p5", "p6"]
    teacher = features(0)
    student = {f: 0.5 * t + features(1)[f] for f, t in teacher.items()}  # correlated, other scales
    expected = 0.7 * sum(one_minus_pearson(student[f], teacher[f]) for f in ["p3", "p4", "p5", "p6"])
    torch.testing.assert_close(run(term, student, teacher).double(), expected, rtol=1e-5, atol=0.0)


def test_pkd_reads_its_levels():
    term = pkd_term(["MODEL.DS2D2.PKD.IN_FEATURES", ["p7", "p4"], "MODEL.DS2D2.PKD.WEIGHT", 1.0])
    student, teacher = features(1), features(0)
    expected = sum(one_minus_pearson(student[f], teacher[f]) for f in ("p7", "p4"))
    torch.testing.assert_close(run(term, student, teacher).double(), expected, rtol=1e-5, atol=0.0)


def test_pkd_ignores_the_scale_and_offset_of_each_channel():
    term = pkd_term(["MODEL.DS2D2.PKD.WEIGHT", 1.0])
    teacher = features(0)
    scale, offset = torch.tensor([0.01, 3.0, 50.0, 1.0]).view(1, 4, 1, 1), torch.arange(4.0).view(1, 4, 1, 1)
    assert run(term, teacher, teacher) == 0
    assert abs(run(term, {f: t * scale + offset for f, t in teacher.items()}, teacher)) < 1e-5
    # anti-correlated on every channel: 1 - (-1) = 2 per level
    torch.testing.assert_close(run(term, {f: -t for f, t in teacher.items()}, teacher), torch.tensor(8.0))


@pytest.mark.parametrize(
    "opts, s_width, message",
    [
        ([], 8, r"MODEL.FPN.OUT_CHANNELS \(8\) must equal the teacher's \(4\)"),
        (["MODEL.DS2D2.PKD.WEIGHT", 0.0], 4, "MODEL.DS2D2.PKD.WEIGHT must be a finite number > 0"),
        (["MODEL.DS2D2.PKD.WEIGHT", float("nan")], 4, "MODEL.DS2D2.PKD.WEIGHT must be a finite number > 0"),
        (["MODEL.DS2D2.PKD.IN_FEATURES", ["p2"]], 4, "MODEL.DS2D2.PKD.IN_FEATURES must list distinct FPN"),
    ],
    ids=["widths", "zero-weight", "nan-weight", "unknown-level"],
)
def test_bad_settings_are_named(opts, s_width, message):
    with pytest.raises(ValueError, match=message):
        pkd_term(opts, s_width=s_width)


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_pkd_in_the_distiller_trains_only_the_student(tmp_path, detector):
    torch.manual_seed(0)
    cfg = tiny_stages(tmp_path, detector, student_opts=["MODEL.FPN.OUT_CHANNELS", 64])  # the teacher's width
    cfg.merge_from_list(["MODEL.DS2D2.TERMS", "['PKD']", "MODEL.DS2D2.PKD.WEIGHT", 0.3])
    model = build_model(cfg).train()
    batch = random_batch()
    losses, detection, step = losses_then_shared_step(model, batch)
    assert set(losses) == set(detection) | {"loss_pkd"}
    levels = model.terms["PKD"].in_features
    assert levels == (["p3", "p4", "p5", "p6"] if detector == "RetinaNet" else ["p2", "p3", "p4", "p5"])
    expected = 0.3 * sum(one_minus_pearson(step.student_feats[f], step.teacher_feats[f]) for f in levels)
    torch.testing.assert_close(losses["loss_pkd"].double(), expected, rtol=1e-5, atol=0.0)

    # the loss reaches the student's backbone + FPN only; an optimizer step leaves the teacher as it was
    losses["loss_pkd"].backward(retain_graph=True)
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert reached and all(n.startswith("student.backbone.") for n in reached)
    assert_step_leaves_teacher(model, losses, ("student.",))


@pytest.mark.parametrize("detector, config", [
    ("RetinaNet", "configs/synthetic/baselines/retinanet_R50_to_R18_pkd.yaml"),
    ("GeneralizedRCNN", "configs/synthetic/baselines/faster_rcnn_R50_to_R18_pkd.yaml"),
])
def test_train_net_runs_pkd_and_exports_the_student(small_dior_root, tmp_path, detector, config):
    state = train_two_iterations(small_dior_root, tmp_path, config, detector, student_width=64, term="PKD")
    assert all(k.startswith("student.") for k in state)  # PKD has no trainable helper
