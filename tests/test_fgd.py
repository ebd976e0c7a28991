"""FGD (ds2d2.distill.fgd): masks (boxes at the border included) and attentions against loops, each loss
part against a direct computation, zero for identical features, config checks, gradients and the default
levels in a tiny distiller, and 2 iterations through train_net.py (the teacher's neck and head inherited,
checkpoint without teacher tensors, student export) for each family."""
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from conftest import random_batch, tiny_stages
from ds2d2 import add_ds2d2_config
from ds2d2.distill import DISTILL_TERM_REGISTRY, DistillStep
from ds2d2.distill.fgd import FGD, fgd_attention, focal_masks
from ds2d2.meta_arch.inherit import INHERIT_KEY
from kd_baseline_support import checked_term, train_two_iterations

pytestmark = pytest.mark.usefixtures("single_torch_thread")
KEYS = {"loss_fgd_fea", "loss_fgd_att", "loss_fgd_global"}
STRIDES = {"p3": 8, "p4": 16}
INPUT = (64, 96)  # (H_in, W_in) of the standalone steps: p3 is 8 x 12, p4 4 x 6
WEIGHTS = ["MODEL.DS2D2.FGD.ALPHA", 0.3, "MODEL.DS2D2.FGD.BETA", 0.2, "MODEL.DS2D2.FGD.GAMMA", 0.1,
           "MODEL.DS2D2.FGD.LAMBDA", 0.05]


# ---- direct computations, independent of ds2d2.distill.fgd -------------------------------------------------
def loop_masks(boxes: Sequence[Tensor], image_size, map_size) -> Tuple[Tensor, Tensor]:
    """[B, 1, h, w] float64 foreground (max over covering boxes of 1 / the area of the box's unclamped cell
    span, as the authors' code) and background (1/N_bg) masks."""
    (in_h, in_w), (h, w) = image_size, map_size
    fg = torch.zeros(len(boxes), 1, h, w, dtype=torch.float64)
    bg = torch.zeros_like(fg)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes.tolist():
            c0, c1 = math.floor(x0 * w / in_w), math.ceil(x1 * w / in_w)
            r0, r1 = math.floor(y0 * h / in_h), math.ceil(y1 * h / in_h)
            area = (c1 - c0 + 1) * (r1 - r0 + 1)
            for r in range(max(0, r0), min(h - 1, r1) + 1):
                for c in range(max(0, c0), min(w - 1, c1) + 1):
                    fg[i, 0, r, c] = max(fg[i, 0, r, c].item(), 1.0 / area)
        free = [(r, c) for r in range(h) for c in range(w) if fg[i, 0, r, c] == 0]
        for r, c in free:
            bg[i, 0, r, c] = 1.0 / len(free)
    return fg, bg


def loop_attention(x: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Spatial [B, 1, H, W] and channel [B, C, 1, 1] attentions, float64, by loops over the elements."""
    b, c, h, w = x.shape
    values = x.tolist()
    spatial = torch.zeros(b, 1, h, w, dtype=torch.float64)
    channel = torch.zeros(b, c, 1, 1, dtype=torch.float64)
    for i in range(b):
        cells = [[sum(abs(values[i][k][r][q]) for k in range(c)) / c for q in range(w)] for r in range(h)]
        total = sum(math.exp(v / temperature) for row in cells for v in row)
        for r in range(h):
            for q in range(w):
                spatial[i, 0, r, q] = h * w * math.exp(cells[r][q] / temperature) / total
        chans = [sum(abs(v) for row in values[i][k] for v in row) / (h * w) for k in range(c)]
        total = sum(math.exp(v / temperature) for v in chans)
        for k in range(c):
            channel[i, k, 0, 0] = c * math.exp(chans[k] / temperature) / total
    return spatial, channel


def direct_global_block(block: nn.Module, x: Tensor) -> Tensor:
    """GCNet block of ``x`` [B, C, H, W] (float64) from ``block``'s parameters, one image at a time."""
    p = {k: v.detach().double() for k, v in block.state_dict().items()}
    b, c = x.shape[:2]
    out = x.clone()
    for i in range(b):
        logits = torch.einsum("c,chw->hw", p["attention.weight"].view(c), x[i]) + p["attention.bias"]
        weights = logits.exp() / logits.exp().sum()
        context = (x[i] * weights).sum(dim=(1, 2))  # [C]
        hidden = p["transform.0.weight"].flatten(1) @ context + p["transform.0.bias"]
        hidden = (hidden - hidden.mean()) / torch.sqrt(hidden.var(unbiased=False) + 1e-5)
        hidden = (hidden * p["transform.1.weight"].flatten() + p["transform.1.bias"].flatten()).clamp(min=0)
        out[i] += (p["transform.3.weight"].flatten(1) @ hidden + p["transform.3.bias"])[:, None, None]
    return out


# ---- a standalone term and step (no detector) --------------------------------------------------------------
def fgd_cfg(opts: Sequence = ()) -> CfgNode:
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def standalone(opts: Sequence = (), s_width: int = 4, t_width: int = 6) -> FGD:
    """The FGD term on levels p3, p4 of widths ``s_width`` (student) and ``t_width`` (teacher)."""
    return checked_term(FGD, fgd_cfg(opts), STRIDES, s_width, t_width)


def boxes_of_three_images() -> List[Tensor]:
    """Nested boxes, a box past the border, one starting past the right edge (covers nothing); an image
    without boxes; an image covered entirely (no background)."""
    return [
        torch.tensor([[3.2, 5.1, 20.7, 30.0], [10.0, 10.0, 14.0, 13.0], [50.0, 40.0, 120.0, 70.0],
                      [96.5, 10.0, 110.0, 20.0]]),
        torch.zeros(0, 4),
        torch.tensor([[0.0, 0.0, 96.0, 64.0]]),
    ]


def standalone_step(s_width: int, t_width: int, seed: int = 0, same: bool = False) -> DistillStep:
    generator = torch.Generator().manual_seed(seed)
    boxes = boxes_of_three_images()
    b = len(boxes)
    teacher = {f: torch.randn(b, t_width, INPUT[0] // s, INPUT[1] // s, generator=generator)
               for f, s in STRIDES.items()}
    student = ({f: t.clone().requires_grad_() for f, t in teacher.items()} if same else
               {f: torch.randn(b, s_width, *t.shape[-2:], generator=generator).requires_grad_()
                for f, t in teacher.items()})
    instances = []
    for image_boxes in boxes:
        instance = Instances(INPUT)
        instance.gt_boxes = Boxes(image_boxes)
        instances.append(instance)
    return DistillStep(ImageList(torch.zeros(b, 3, *INPUT), [INPUT] * b), instances, student, teacher, {})


def test_fgd_is_registered():
    assert "FGD" in {name for name, _ in DISTILL_TERM_REGISTRY}


@pytest.mark.parametrize("map_size", [(8, 12), (5, 7)])
def test_masks_match_a_loop(map_size):
    boxes = boxes_of_three_images()
    fg, bg = focal_masks(boxes, INPUT, map_size)
    expected_fg, expected_bg = loop_masks(boxes, INPUT, map_size)
    assert fg.shape == bg.shape == (3, 1, *map_size) and fg.dtype == torch.float32
    torch.testing.assert_close(fg.double(), expected_fg, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(bg.double(), expected_bg, rtol=1e-6, atol=0.0)
    assert bg[1].sum().item() == pytest.approx(1.0) and bg[2].sum() == 0 and fg[1].sum() == 0


@pytest.mark.parametrize("map_size", [(8, 12), (5, 7), (1, 1)])
def test_boxes_at_the_border_weigh_by_their_unclamped_span(map_size):
    """Boxes touching the right / bottom border (or past it): their span runs one cell past the grid."""
    boxes = [torch.tensor([[80.0, 40.0, 96.0, 64.0], [0.0, 0.0, 96.0, 64.0]]),
             torch.tensor([[50.0, 3.0, 96.0, 17.0], [90.0, 60.0, 100.0, 70.0]])]
    fg, _ = focal_masks(boxes, INPUT, map_size)
    expected, _ = loop_masks(boxes, INPUT, map_size)
    torch.testing.assert_close(fg.double(), expected, rtol=1e-6, atol=0.0)


def test_a_box_reaching_the_corner_has_the_authors_cell_weight():
    """On the 8 x 12 grid of a 64 x 96 input, [80, 40, 96, 64] spans columns 10..12 and rows 5..8: area 12
    (the authors' ceil), though it covers only the 2 x 3 cells inside the grid (its mask sums to 1/2)."""
    fg, bg = focal_masks([torch.tensor([[80.0, 40.0, 96.0, 64.0]])], INPUT, (8, 12))
    assert torch.all(fg[0, 0, 5:, 10:] == 1 / 12) and fg.sum().item() == pytest.approx(0.5)
    assert bg[0, 0, 5:, 10:].sum() == 0 and bg.sum().item() == pytest.approx(1.0)


def test_attentions_match_a_loop():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    spatial, channel = fgd_attention(x, 0.5)
    expected_spatial, expected_channel = loop_attention(x, 0.5)
    torch.testing.assert_close(spatial.double(), expected_spatial, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(channel.double(), expected_channel, rtol=1e-5, atol=0.0)


def test_each_loss_part_matches_a_direct_computation():
    torch.manual_seed(0)
    term = standalone([*WEIGHTS, "MODEL.DS2D2.FGD.TEMPERATURE", 0.7])
    with torch.no_grad():  # the last convs start at zero: make every block do something
        for p in [*term.gc_s.parameters(), *term.gc_t.parameters()]:
            p.normal_(0.0, 0.5)
    step = standalone_step(s_width=4, t_width=6)
    losses = term(step)
    assert set(losses) == KEYS

    expected = dict.fromkeys(KEYS, 0.0)
    for f in STRIDES:
        t = step.teacher_feats[f].double()
        conv = term.align[f]
        weight, bias = conv.weight.detach().double().flatten(1), conv.bias.detach().double()
        s = torch.einsum("oc,bchw->bohw", weight, step.student_feats[f].detach().double())
        s = s + bias[None, :, None, None]
        fg, bg = loop_masks(step.gt_boxes, INPUT, t.shape[-2:])
        t_spatial, t_channel = loop_attention(t, 0.7)
        s_spatial, s_channel = loop_attention(s.detach(), 0.7)
        weighted = t_spatial * t_channel * (t - s) ** 2
        expected["loss_fgd_fea"] += (0.3 * (fg * weighted).sum() + 0.2 * (bg * weighted).sum()).item() / 3
        att = (t_spatial - s_spatial).abs().sum() + (t_channel - s_channel).abs().sum()
        expected["loss_fgd_att"] += 0.1 * att.item() / 3
        relation = direct_global_block(term.gc_t[f], t) - direct_global_block(term.gc_s[f], s)
        expected["loss_fgd_global"] += 0.05 * (relation ** 2).sum().item() / 3
    for key in KEYS:
        torch.testing.assert_close(losses[key].double(), torch.tensor(expected[key], dtype=torch.float64),
                                   rtol=1e-5, atol=0.0, msg=key)


def test_identical_features_give_zero_with_the_identity_align():
    term = standalone(WEIGHTS, s_width=6, t_width=6)
    assert all(isinstance(m, nn.Identity) for m in term.align.values())
    losses = term(standalone_step(s_width=6, t_width=6, same=True))
    assert losses["loss_fgd_fea"].item() == 0.0 and losses["loss_fgd_att"].item() == 0.0
    assert losses["loss_fgd_global"].item() == 0.0  # both context blocks start as the identity


@pytest.mark.parametrize(
    "zeroed, keys",
    [(["GAMMA", "LAMBDA"], {"loss_fgd_fea"}), (["ALPHA", "BETA"], {"loss_fgd_att", "loss_fgd_global"})],
)
def test_a_zero_weight_drops_its_part(zeroed, keys):
    term = standalone([*WEIGHTS, *[v for k in zeroed for v in (f"MODEL.DS2D2.FGD.{k}", 0.0)]])
    assert set(term(standalone_step(4, 6))) == keys
    assert bool(len(term.gc_s)) == ("loss_fgd_global" in keys)


def test_all_zero_weights_disable_the_term():
    zero = [v for k in ("ALPHA", "BETA", "GAMMA", "LAMBDA") for v in (f"MODEL.DS2D2.FGD.{k}", 0.0)]
    assert FGD.enabled(fgd_cfg()) and not FGD.enabled(fgd_cfg(zero))


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DS2D2.FGD.ALPHA", -1.0], "MODEL.DS2D2.FGD.ALPHA must be a finite number >= 0"),
        (["MODEL.DS2D2.FGD.LAMBDA", float("nan")], "MODEL.DS2D2.FGD.LAMBDA must be a finite number >= 0"),
        (["MODEL.DS2D2.FGD.TEMPERATURE", 0.0], "MODEL.DS2D2.FGD.TEMPERATURE must be a finite number > 0"),
        (["MODEL.DS2D2.FGD.IN_FEATURES", "['p3', 'p9']"], r"MODEL.DS2D2.FGD.IN_FEATURES must list .*'p9'"),
        (["MODEL.DS2D2.FGD.IN_FEATURES", "['p3', 'p3']"], r"MODEL.DS2D2.FGD.IN_FEATURES must list distinct"),
    ],
)
def test_bad_settings_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        standalone(opts)


def test_in_features_selects_the_levels():
    term = standalone(["MODEL.DS2D2.FGD.IN_FEATURES", "['p4']"])
    assert list(term.align) == list(term.gc_s) == ["p4"]


# ---- in a tiny distiller -----------------------------------------------------------------------------------
def distiller(folder: Path, detector: str, opts: Sequence, teacher_opts: Sequence = ()) -> nn.Module:
    torch.manual_seed(0)
    cfg = tiny_stages(folder, detector, teacher_opts=teacher_opts)
    cfg.merge_from_list(["MODEL.DS2D2.TERMS", "['FGD']", *[str(v) for v in opts]])
    return build_model(cfg).train()


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_gradients_reach_only_the_student_and_the_terms_helpers(tmp_path, detector):
    model = distiller(tmp_path, detector, WEIGHTS)  # teacher FPN width 64, student 32: an align conv
    term = model.terms["FGD"]
    assert list(term.align) == term.in_features and isinstance(term.align[term.in_features[0]], nn.Conv2d)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with EventStorage():
        losses = model(random_batch())
    assert KEYS <= set(losses) and all(torch.isfinite(losses[k]) for k in KEYS)
    sum(losses[k] for k in KEYS).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in term.parameters())  # every helper is used (DDP needs no unused)
    assert all(term.gc_t[f].transform[-1].weight.grad.abs().sum() > 0 for f in term.in_features)
    assert model.student.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    optimizer.step()
    teacher_after = model.teacher.state_dict()
    assert all(torch.equal(teacher_after[k], v) for k, v in teacher_before.items())
    assert all(k.startswith(("student.", "terms.FGD.")) for k in model.state_dict())


@pytest.mark.parametrize("detector, levels", [
    ("RetinaNet", ["p3", "p4", "p5", "p6", "p7"]), ("GeneralizedRCNN", ["p2", "p3", "p4", "p5"]),
])
def test_default_levels_are_the_fpn_convs_outputs(tmp_path, detector, levels):
    """As the authors' hooks on neck.fpn_convs: Faster R-CNN's P6, a max-pool of P5, is not distilled."""
    model = distiller(tmp_path, detector, WEIGHTS)
    assert list(model.student.backbone.output_shape()) == sorted({*levels, "p6"})
    assert model.terms["FGD"].in_features == levels


# ---- through train_net.py ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "detector, config",
    [("RetinaNet", "configs/synthetic/baselines/retinanet_R50_to_R18_fgd.yaml"),
     ("GeneralizedRCNN", "configs/synthetic/baselines/faster_rcnn_R50_to_R18_fgd.yaml")],
)
def test_train_net_runs_fgd_and_exports_the_student(small_dior_root, tmp_path, detector, config):
    # the teacher at the student's FPN width (32): the inheritance has weights to take, no align conv
    state = train_two_iterations(small_dior_root, tmp_path, config, detector, student_width=32, term="FGD",
                                 teacher_width=32, log_has=f"{INHERIT_KEY}: the student inherits")
    assert any(k.startswith("terms.FGD.gc_t.") for k in state) and not any(".align." in k for k in state)
