"""MGD (ds2d2.distill.mgd): the loss against a direct computation with the same random masks, the masks, a
zero, the config checks, gradients and the default levels in a tiny distiller, and 2 iterations through
train_net.py for each family (RetinaNet's config inheriting the teacher's neck and head)."""
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from torch import Tensor

from conftest import assert_step_leaves_teacher, losses_then_shared_step, random_batch, tiny_cfg, tiny_stages
from ds2d2.distill import DISTILL_TERM_REGISTRY, DistillStep
from ds2d2.distill.mgd import MGD, random_mask
from kd_baseline_support import checked_term, train_two_iterations

pytestmark = pytest.mark.usefixtures("single_torch_thread")
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}  # RetinaNet's levels
# The authors' (their hooks on neck.fpn_convs): Faster R-CNN's P6, a max-pool of P5, is not distilled.
DEFAULT_LEVELS = {"RetinaNet": ["p3", "p4", "p5", "p6", "p7"], "GeneralizedRCNN": ["p2", "p3", "p4", "p5"]}
SIZES = {"p3": 6, "p4": 5, "p5": 4, "p6": 3, "p7": 2}  # H = W per level
RATIO_MESSAGE = r"MODEL.DS2D2.MGD.MASK_RATIO must be a number in \[0, 1\)"


def mgd_term(opts=(), s_width: int = 3, t_width: int = 4) -> MGD:
    cfg = tiny_cfg("RetinaNet", ["MODEL.DS2D2.TERMS", "['MGD']"])
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    return checked_term(MGD, cfg, STRIDES, s_width, t_width)


def features(seed: int, channels: int) -> Dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f: torch.randn(2, channels, n, n, generator=generator) for f, n in SIZES.items()}


def expected_mgd(term: MGD, student: Dict[str, Tensor], teacher: Dict[str, Tensor], weight: float,
                 ratio: float) -> Tensor:
    """alpha * sum_l sum((G_l(A_l(S_l) * M_l) - T_l)^2) / B, the masks M_l drawn level after level from the
    global RNG as uniform [B, 1, H, W] draws kept where >= ratio."""
    total = torch.zeros((), dtype=torch.float64)
    for f in term.in_features:
        s = student[f]
        if term.align is not None:
            align = term.align[f]
            s = torch.einsum("oc,bchw->bohw", align.weight[:, :, 0, 0], s) + align.bias.view(1, -1, 1, 1)
        b, _, h, w = s.shape
        mask = (torch.rand(b, 1, h, w) >= ratio).float()
        first, _, second = term.generators[f]
        generated = F.conv2d(F.relu(F.conv2d(s * mask, first.weight, first.bias, padding=1)), second.weight,
                             second.bias, padding=1)
        total += ((generated.double() - teacher[f].double()) ** 2).sum() / b
    return weight * total


def test_mgd_is_registered():
    assert "MGD" in {name for name, _ in DISTILL_TERM_REGISTRY}


@pytest.mark.parametrize("s_width", [3, 4], ids=["align", "equal-widths"])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_mgd_is_the_generation_error_of_the_masked_student(s_width, ratio):
    term = mgd_term(["MODEL.DS2D2.MGD.WEIGHT", 0.3, "MODEL.DS2D2.MGD.MASK_RATIO", ratio], s_width=s_width)
    assert term.in_features == list(STRIDES)  # every level by default
    assert (term.align is None) == (s_width == 4)
    student, teacher = features(1, s_width), features(2, 4)
    torch.manual_seed(7)
    loss = term(DistillStep(None, [], student, teacher, {}))["loss_mgd"]
    torch.manual_seed(7)
    expected = expected_mgd(term, student, teacher, 0.3, ratio)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0.0)


def test_mgd_reads_its_levels():
    term = mgd_term(["MODEL.DS2D2.MGD.IN_FEATURES", ["p5", "p3"]])
    assert term.in_features == ["p5", "p3"] and sorted(term.generators) == sorted(term.align) == ["p3", "p5"]


def test_random_mask_zeroes_positions_with_the_global_rng():
    feature = torch.zeros(2, 5, 100, 100)
    torch.manual_seed(3)
    mask = random_mask(feature, 0.65)
    torch.manual_seed(3)
    assert torch.equal(mask, (torch.rand(2, 1, 100, 100) >= 0.65).float())  # [B, 1, H, W]: shared by channels
    assert abs(1 - mask.mean().item() - 0.65) < 0.02
    assert torch.equal(random_mask(feature, 0.0), torch.ones(2, 1, 100, 100))


def test_mgd_is_zero_when_the_generator_outputs_the_teacher():
    term = mgd_term(s_width=4)
    levels = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1)
    teacher = {f: levels.expand(2, 4, n, n) for f, n in SIZES.items()}  # constant per channel
    with torch.no_grad():
        for generator in term.generators.values():
            generator[2].weight.zero_()
            generator[2].bias.copy_(levels.flatten())
    assert term(DistillStep(None, [], features(1, 4), teacher, {}))["loss_mgd"] == 0


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DS2D2.MGD.WEIGHT", 0.0], "MODEL.DS2D2.MGD.WEIGHT must be a finite number > 0"),
        (["MODEL.DS2D2.MGD.MASK_RATIO", 1.0], RATIO_MESSAGE),
        (["MODEL.DS2D2.MGD.MASK_RATIO", -0.1], RATIO_MESSAGE),
        (["MODEL.DS2D2.MGD.MASK_RATIO", float("nan")], RATIO_MESSAGE),
        (["MODEL.DS2D2.MGD.IN_FEATURES", ["p3", "p3"]], "MODEL.DS2D2.MGD.IN_FEATURES must list distinct FPN"),
    ],
    ids=["zero-weight", "ratio-1", "negative-ratio", "nan-ratio", "repeated-level"],
)
def test_bad_settings_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        mgd_term(opts)


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_mgd_in_the_distiller_trains_only_the_student_and_its_generators(tmp_path, detector):
    torch.manual_seed(0)
    cfg = tiny_stages(tmp_path, detector)  # student FPN width 32, teacher 64: align convs
    cfg.merge_from_list(["MODEL.DS2D2.TERMS", "['MGD']", "MODEL.DS2D2.MGD.WEIGHT", 1e-3])
    model = build_model(cfg).train()
    batch = random_batch()
    # after it, the RNG is where the term drew its masks
    losses, detection, step = losses_then_shared_step(model, batch)
    assert set(losses) == set(detection) | {"loss_mgd"}
    term = model.terms["MGD"]
    assert term.in_features == DEFAULT_LEVELS[detector]
    expected = expected_mgd(term, step.student_feats, step.teacher_feats, 1e-3, 0.65)
    torch.testing.assert_close(losses["loss_mgd"].double(), expected, rtol=1e-5, atol=0.0)

    # the loss reaches the student's backbone + FPN and the term's convs only; the teacher stays as it was
    losses["loss_mgd"].backward(retain_graph=True)
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert all(n.startswith(("student.backbone.", "terms.MGD.")) for n in reached)
    helpers = {n for n, _ in model.named_parameters() if n.startswith("terms.MGD.")}
    assert helpers <= reached and any(n.startswith("student.backbone.") for n in reached)
    assert_step_leaves_teacher(model, losses, ("student.", "terms.MGD."))


@pytest.mark.parametrize("detector, config", [
    ("RetinaNet", "configs/synthetic/baselines/retinanet_R50_to_R18_mgd.yaml"),
    ("GeneralizedRCNN", "configs/synthetic/baselines/faster_rcnn_R50_to_R18_mgd.yaml"),
])
def test_train_net_runs_mgd_and_exports_the_student(small_dior_root, tmp_path, detector, config):
    # RetinaNet's config inherits the teacher's FPN and head: the teacher's FPN width (64), no align convs
    width = 64 if detector == "RetinaNet" else 32
    state = train_two_iterations(small_dior_root, tmp_path, config, detector, student_width=width, term="MGD")
    levels = DEFAULT_LEVELS[detector]
    convs = [f"generators.{f}.{i}" for f in levels for i in (0, 2)]
    convs += [f"align.{f}" for f in levels if width == 32]
    expected = {f"terms.MGD.{conv}.{p}" for conv in convs for p in ("weight", "bias")}
    assert {k for k in state if k.startswith("terms.")} == expected
