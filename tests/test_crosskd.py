"""CrossKD (ds2d2.distill.crosskd): the RetinaNet cross head against a hand-written forward of the same
layers, both families' losses against direct computations, zero KD between equal models, the config checks
and the default configs, gradients (student trunk and head only; teacher untouched by an optimizer step), and
2 iterations through train_net.py for each family."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from conftest import REPO, load_script, random_batch, tiny_stages
from ds2d2 import add_ds2d2_config
from ds2d2.config import load_config
from ds2d2.distill import DISTILL_TERM_REGISTRY, DistillStep
from ds2d2.distill.crosskd import CrossKD, align_statistics

pytestmark = pytest.mark.usefixtures("single_torch_thread")
TERMS = ["MODEL.DS2D2.TERMS", "['CrossKD']"]
TWO_CONVS = ["MODEL.RETINANET.NUM_CONVS", 2]
EPS = 1e-5  # align_statistics' variance epsilon


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """``stages(detector, teacher_width=32)``: a tiny distiller config (student FPN width 32, 2-conv RetinaNet
    heads, CrossKD only) on a random tiny teacher (2-conv RetinaNet heads) written once per setting."""
    cache: Dict[Tuple[str, int], CfgNode] = {}

    def get(detector: str, teacher_width: int = 32) -> CfgNode:
        key = (detector, teacher_width)
        if key not in cache:
            convs = TWO_CONVS if detector == "RetinaNet" else []
            torch.manual_seed(100 + len(cache))
            cache[key] = tiny_stages(
                tmp_path_factory.mktemp(detector), detector,
                ["MODEL.FPN.OUT_CHANNELS", teacher_width, *convs], [*convs, *TERMS],
            )
        return cache[key].clone()

    return get


def distiller(cfg: CfgNode, opts: Sequence = ()) -> nn.Module:
    cfg.merge_from_list(list(opts))
    torch.manual_seed(1)  # not the teacher's seed: other initial weights
    return build_model(cfg).train()


def lively_heads(model: nn.Module) -> None:
    """Random student and teacher head weights with O(1) outputs (Detectron2 starts its predictors near 0)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for family in (model.student_family, model.teacher_family):
            for p in family.head.parameters():
                scale = p[0].numel() ** -0.5 if p.dim() > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def step_of(model: nn.Module, seed: int = 0) -> Tuple[Dict[str, Tensor], DistillStep]:
    with EventStorage():
        torch.manual_seed(seed)
        return model.shared_step(random_batch(seed=seed))


# ---- hand-written references ----------------------------------------------------------------------------
def conv(x: Tensor, layer: nn.Conv2d) -> Tensor:
    return F.conv2d(x, layer.weight, layer.bias, padding=1)


def standardise_like(s: Tensor, t: Tensor) -> Tensor:
    """Loop over images and channels: (s - mean) / sqrt(var + eps) * sqrt(var_t + eps) + mean_t (biased
    variances)."""
    out = torch.empty_like(s)
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            x, y = s[b, c].double(), t[b, c].double()
            x_var, y_var = ((x - x.mean()) ** 2).mean(), ((y - y.mean()) ** 2).mean()
            out[b, c] = ((x - x.mean()) / math.sqrt(x_var + EPS) * math.sqrt(y_var + EPS) + y.mean()).float()
    return out


def hand_cross_head(student, teacher, s_feat: Tensor, t_feat: Tensor, n: int, subnet: str, predictor: str):
    """The cross head of one level, written out: student convs 1..n (ReLU between them, none after the n-th),
    standardised to the teacher's conv-n output, ReLU (n > 0), teacher convs n+1.. with ReLU, predictor."""
    s_convs = [m for m in getattr(student.head, subnet) if isinstance(m, nn.Conv2d)]
    t_convs = [m for m in getattr(teacher.head, subnet) if isinstance(m, nn.Conv2d)]
    s, t = s_feat, t_feat
    for i in range(n):
        s, t = conv(s, s_convs[i]), conv(t, t_convs[i])
        if i < n - 1:
            s, t = s.relu(), t.relu()
    x = standardise_like(s, t)
    x = x.relu() if n > 0 else x
    for layer in t_convs[n:]:
        x = conv(x, layer).relu()
    return conv(x, getattr(teacher.head, predictor))


def per_anchor(levels: List[Tensor], dim: int) -> Tensor:
    """[B, A*dim, H, W] per level -> [B * sum(H*W*A), dim], image-major (H, W, A order in each level)."""
    rows = [x.view(x.shape[0], -1, dim, *x.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(x.shape[0], -1, dim)
            for x in levels]
    return torch.cat(rows, dim=1).reshape(-1, dim)


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Box2BoxTransform with weights (1, 1, 1, 1) and Detectron2's clamp of dw, dh at log(1000 / 16)."""
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    dx, dy, dw, dh = deltas.unbind(1)
    dw, dh = dw.clamp(max=math.log(1000 / 16)), dh.clamp(max=math.log(1000 / 16))
    px, py, pw, ph = dx * w + cx, dy * h + cy, dw.exp() * w, dh.exp() * h
    return torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], dim=1)


def giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalized IoU of matching rows, union and hull clamped at ``eps`` (degenerate boxes) as in losses."""
    inter = ((torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
             * (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0))
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    hull = ((torch.max(a[:, 2], b[:, 2]) - torch.min(a[:, 0], b[:, 0]))
            * (torch.max(a[:, 3], b[:, 3]) - torch.min(a[:, 1], b[:, 1])))
    return inter / union.clamp(min=eps) - (hull - union) / hull.clamp(min=eps)


# ---- tests ----------------------------------------------------------------------------------------------
def test_crosskd_is_registered_with_the_authors_defaults():
    assert "CrossKD" in {name for name, _ in DISTILL_TERM_REGISTRY}
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    ck = cfg.MODEL.DS2D2.CROSSKD
    assert (ck.CLS_WEIGHT, ck.BOX_WEIGHT, ck.CROSS_LAYER, ck.ROI_CLS_REDUCTION) == (1.0, 1.0, -1, "mean")


@pytest.mark.parametrize("path", [
    f"configs/{d}/baselines/{det}_R101_to_R18_crosskd.yaml" for d in ("DIOR", "DOTA")
    for det in ("retinanet", "faster_rcnn")
] + [f"configs/synthetic/baselines/{det}_R50_to_R18_crosskd.yaml" for det in ("retinanet", "faster_rcnn")])
def test_configs_run_crosskd_alone_with_the_authors_weights(path):
    cfg = load_config(str(REPO / path), register=False)
    ck = cfg.MODEL.DS2D2.CROSSKD
    assert list(cfg.MODEL.DS2D2.TERMS) == ["CrossKD"]
    assert (ck.CLS_WEIGHT, ck.BOX_WEIGHT) == ((1.0, 1.0) if "retinanet" in path else (0.5, 1.0))
    assert (ck.CROSS_LAYER, ck.ROI_CLS_REDUCTION) == (-1, "mean")
    assert cfg.OUTPUT_DIR == "output/" + path[len("configs/"):-len(".yaml")]


def test_align_statistics_is_the_per_image_and_channel_standardisation():
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=generator) * 3 + 1
    t = torch.randn(2, 3, 4, 5, generator=generator) * 0.5 - 2
    torch.testing.assert_close(align_statistics(s, t), standardise_like(s, t))
    torch.testing.assert_close(align_statistics(t, t), t)  # equal statistics: unchanged
    single = torch.randn(2, 3, 1, 1, generator=generator, requires_grad=True)  # 1 x 1 level: no NaN
    align_statistics(single, t[:, :, :1, :1]).sum().backward()
    assert torch.isfinite(single.grad).all()


@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_retinanet_cross_head_is_the_hand_written_forward(stages, layer):
    model = distiller(stages("RetinaNet"), ["MODEL.DS2D2.CROSSKD.CROSS_LAYER", layer])
    term = model.terms["CrossKD"]
    assert term.cross_layer == (1 if layer == -1 else layer)  # -1: NUM_CONVS - 1
    lively_heads(model)
    _, step = step_of(model)
    c_logits, c_deltas, t_logits, t_deltas = term.predictions(step)
    levels = model.student_family.levels
    s_feats, t_feats = [step.student_feats[f] for f in levels], [step.teacher_feats[f] for f in levels]
    with torch.no_grad():
        expected = [
            per_anchor([hand_cross_head(model.student, model.teacher, s, t, term.cross_layer, subnet, pred)
                        for s, t in zip(s_feats, t_feats)], dim)
            for subnet, pred, dim in (("cls_subnet", "cls_score", 3), ("bbox_subnet", "bbox_pred", 4))
        ]
        t_cls, t_box = model.teacher.head(t_feats)
    assert c_logits.std() > 0.1 and (c_logits - t_logits).abs().max() > 0.1  # a test with teeth
    torch.testing.assert_close(c_logits, expected[0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(c_deltas, expected[1], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(t_logits, per_anchor(t_cls, 3), rtol=0, atol=0)
    torch.testing.assert_close(t_deltas, per_anchor(t_box, 4), rtol=0, atol=0)


def test_retinanet_losses_are_the_direct_computation(stages):
    model = distiller(stages("RetinaNet"), ["MODEL.DS2D2.CROSSKD.CLS_WEIGHT", 0.7,
                                            "MODEL.DS2D2.CROSSKD.BOX_WEIGHT", 1.3])
    term = model.terms["CrossKD"]
    lively_heads(model)
    _, step = step_of(model)
    losses = term(step)
    with torch.no_grad():
        s, s_deltas, t, t_deltas = term.predictions(step)
    labels = step.targets.gt_labels.flatten()  # class, 3 (background) or -1 (ignored)
    valid = labels >= 0
    num_pos = int((valid & (labels != 3)).sum())
    assert num_pos > 0 and (~valid).any()
    p = t.sigmoid()
    bce = -(p * F.logsigmoid(s) + (1 - p) * F.logsigmoid(-s))
    cls = (bce * (s.sigmoid() - p).abs())[valid].sum() / num_pos
    anchors = step.targets.anchors.repeat(2, 1)
    weight = t.sigmoid().max(dim=1).values * valid
    box = (weight * (1 - giou(decode(s_deltas, anchors), decode(t_deltas, anchors)))).sum() / num_pos
    torch.testing.assert_close(losses["loss_crosskd_cls"], 0.7 * cls, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["loss_crosskd_box"], 1.3 * box, rtol=1e-5, atol=1e-7)


def hand_roi_head(heads, pooled: Tensor) -> Tuple[Tensor, Tensor]:
    box_head, predictor = heads.box_head, heads.box_predictor
    x = F.linear(pooled.flatten(1), box_head.fc1.weight, box_head.fc1.bias).relu()
    x = F.linear(x, box_head.fc2.weight, box_head.fc2.bias).relu()
    return (F.linear(x, predictor.cls_score.weight, predictor.cls_score.bias),
            F.linear(x, predictor.bbox_pred.weight, predictor.bbox_pred.bias))


@pytest.mark.parametrize("reduction,teacher_width", [("mean", 32), ("sum_per_2_images", 64)])
def test_faster_rcnn_losses_are_the_teacher_head_on_student_features(stages, reduction, teacher_width):
    opts = ["MODEL.DS2D2.CROSSKD.ROI_CLS_REDUCTION", reduction, "MODEL.DS2D2.CROSSKD.CLS_WEIGHT", 0.5]
    model = distiller(stages("GeneralizedRCNN", teacher_width), opts)
    assert (model.adapters is not None) == (teacher_width != 32)  # widths differ: the shared 1x1 adapters
    term = model.terms["CrossKD"]
    lively_heads(model)
    _, step = step_of(model)
    losses = term(step)
    heads, levels, rois = model.teacher.roi_heads, model.student_family.levels, step.targets.rois
    with torch.no_grad():
        student = [step.student_feats[f] for f in levels]
        if model.adapters is not None:
            student = [model.adapters[f](x) for f, x in zip(levels, student)]
        s, s_deltas = hand_roi_head(heads, heads.box_pooler(student, rois))
        t, t_deltas = hand_roi_head(heads, heads.box_pooler([step.teacher_feats[f] for f in levels], rois))
    torch.testing.assert_close(term.predictions(step)[0], s, rtol=1e-4, atol=1e-6)
    num_rois, num_classes = s.shape[0], 3
    log_pt, log_ps = F.log_softmax(t / 3, dim=1), F.log_softmax(s / 3, dim=1)
    divisor = num_rois if reduction == "mean" else 2 / 2  # 2 images: the sum per 2 images is the sum
    cls = (log_pt.exp() * (log_pt - log_ps)).sum() * 9 / divisor
    prob, best = F.softmax(t, dim=1)[:, :num_classes].max(dim=1)
    rows = torch.arange(num_rois)
    l1 = (s_deltas.view(num_rois, num_classes, 4)[rows, best]
          - t_deltas.view(num_rois, num_classes, 4)[rows, best]).abs().sum(dim=1)
    box = (l1 * prob).sum() / (4 * prob.sum())
    torch.testing.assert_close(losses["loss_crosskd_cls"], 0.5 * cls, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["loss_crosskd_box"], box, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_equal_student_and_teacher_give_zero_kd(stages, detector):
    model = distiller(stages(detector))
    model.student.load_state_dict(model.teacher.state_dict())  # same architecture: the teacher's weights
    model.student.eval()  # frozen BN statistics, as the teacher's: same features
    _, step = step_of(model)
    assert all(torch.equal(step.student_feats[f], step.teacher_feats[f]) for f in step.student_feats)
    losses = model.terms["CrossKD"](step)
    assert set(losses) == {"loss_crosskd_cls", "loss_crosskd_box"}
    for value in losses.values():
        assert abs(float(value)) < 1e-6


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_gradients_reach_the_student_trunk_and_head_only(stages, detector):
    teacher_width = 64 if detector == "GeneralizedRCNN" else 32  # Faster R-CNN: through the adapters
    model = distiller(stages(detector, teacher_width))
    before = copy.deepcopy(model.teacher.state_dict())
    with EventStorage():
        losses = model(random_batch())
    sum(v for k, v in losses.items() if k.startswith("loss_crosskd_")).backward(retain_graph=True)
    assert all(p.grad is None for p in model.teacher.parameters())
    student = model.student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    if detector == "RetinaNet":  # each subnet's first conv, not the layers that the teacher's replace
        for subnet in (student.head.cls_subnet, student.head.bbox_subnet):
            assert subnet[0].weight.grad.abs().sum() > 0 and subnet[2].weight.grad is None
        assert student.head.cls_score.weight.grad is None and student.head.bbox_pred.weight.grad is None
        assert all(k.startswith("student.") for k in model.state_dict())
    else:  # the student's own RoI head is not in the cross path; the shared adapters are
        assert all(p.grad is None for p in student.roi_heads.parameters())
        assert model.adapters["p2"].weight.grad.abs().sum() > 0
        assert all(k.startswith(("student.", "adapters.")) for k in model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    sum(losses.values()).backward()
    optimizer.step()
    after = model.teacher.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("detector,teacher_width,opts,match", [
    ("RetinaNet", 32, ["MODEL.DS2D2.CROSSKD.CLS_WEIGHT", -1.0], "CROSSKD.CLS_WEIGHT must be a finite"),
    ("RetinaNet", 32, ["MODEL.DS2D2.CROSSKD.BOX_WEIGHT", math.nan], "CROSSKD.BOX_WEIGHT must be a finite"),
    ("RetinaNet", 32, ["MODEL.DS2D2.CROSSKD.CROSS_LAYER", 3], r"CROSS_LAYER must be -1 .* \[0, 2\]"),
    ("RetinaNet", 64, [], "MODEL.FPN.OUT_CHANNELS must be the same"),
    ("RetinaNet", 32, ["MODEL.RETINANET.NUM_CONVS", 1], "MODEL.RETINANET.NUM_CONVS"),
    ("RetinaNet", 32, ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]"],
     "MODEL.ANCHOR_GENERATOR must be the same"),
    ("GeneralizedRCNN", 32, ["MODEL.DS2D2.CROSSKD.CROSS_LAYER", 1], "applies to RetinaNet heads only"),
    ("GeneralizedRCNN", 32, ["MODEL.DS2D2.CROSSKD.ROI_CLS_REDUCTION", "median"],
     "MODEL.DS2D2.CROSSKD.ROI_CLS_REDUCTION must be one of"),
], ids=["cls-weight", "box-weight", "cross-layer", "width", "num-convs", "anchors", "rcnn-layer",
        "reduction"])
def test_bad_settings_are_named(stages, detector, teacher_width, opts, match):
    with pytest.raises(ValueError, match=match):
        distiller(stages(detector, teacher_width), opts)


def test_the_term_owns_no_module_of_the_student_or_teacher(stages):
    model = distiller(stages("RetinaNet"))
    term = model.terms["CrossKD"]
    assert isinstance(term, CrossKD) and not list(term.parameters()) and not term.state_dict()


def export_tool():
    tool = load_script(REPO / "tools" / "export_student.py", "export_student_tool")
    return tool


@pytest.mark.slow
@pytest.mark.parametrize("student_config", [
    "configs/synthetic/retinanet_R18_student.yaml", "configs/synthetic/faster_rcnn_R18_student.yaml"
])
def test_two_iterations_through_train_net(tmp_path: Path, student_config: str):
    """A random teacher shaped as the synthetic R-18 student (FPN width 64, 2-conv RetinaNet heads: crossing
    after conv 1), 64 px inputs; the checkpoint holds the student only; tools/export_student.py exports it."""
    from ds2d2.data.synthetic import write_synthetic_dior

    write_synthetic_dior(tmp_path / "datasets" / "synthetic_dior", num_images=8, seed=0, image_size=64)
    teacher_cfg = load_config(str(REPO / student_config), register=False)
    teacher_cfg.DATASETS.TRAIN, teacher_cfg.DATASETS.TEST = (), ()
    (tmp_path / "teacher.yaml").write_text(teacher_cfg.dump())
    torch.save({"model": build_model(teacher_cfg).state_dict()}, tmp_path / "teacher.pth")
    config = student_config.replace("configs/synthetic/", "configs/synthetic/baselines/").replace(
        "_R18_student.yaml", "_R50_to_R18_crosskd.yaml")
    out = tmp_path / "out"
    opts = [
        "MODEL.DS2D2.TEACHER_CONFIG", tmp_path / "teacher.yaml", "MODEL.DS2D2.TEACHER_WEIGHTS",
        tmp_path / "teacher.pth", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64, "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", "()", "OUTPUT_DIR", out,
    ]
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / config)]
    command += [str(v) for v in opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert all(math.isfinite(metrics[-1][k]) for k in ("loss_crosskd_cls", "loss_crosskd_box"))
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith("student.") for k in state), sorted(state)  # no teacher, no term tensor
    exported = tmp_path / "student.pth"
    argv = ["--config-file", str(out / "config.yaml"), "--checkpoint", str(out / "model_final.pth")]
    assert export_tool().main([*argv, "--output", str(exported)]) == 0
    student = torch.load(exported, weights_only=True)["model"]
    assert student.keys() == {k[len("student."):] for k in state}
