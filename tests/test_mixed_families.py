"""Distillation across detector families (docs/method.md, "Mixed families"): a RetinaNet teacher into a Faster
R-CNN student and the other way round, on tiny random models. The distiller builds and logs the levels both
FPNs have; every term runs (gradients reach the student and the terms' helpers only) or is refused by key;
DS2D2's implicit stream runs the teacher's kind of head on the teacher's own targets, against the authors'
formulas written independently in test_parity.py; the mixed-pair configs; 2 iterations through train_net.py
with a checkpoint free of teacher tensors and a student that loads as a plain Detectron2 model and exports
to ONNX."""
import logging
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from conftest import REPO, assert_terms_train_student_only, load_script, random_batch, tiny_stages
from ds2d2.config import load_config
from ds2d2.distill import DistillStep
from ds2d2.export import student_config
from ds2d2.families import AnchorTargets, RoITargets
from ds2d2_onnx import OnnxDetector
from kd_baseline_support import train_two_iterations
from test_parity import REDUCE, authors_dense_kd, authors_roi_box, roi_kl

pytestmark = pytest.mark.usefixtures("single_torch_thread")
PAIRS = [("GeneralizedRCNN", "RetinaNet"), ("RetinaNet", "GeneralizedRCNN")]  # (student, teacher)
PAIR_IDS = ["retinanet-to-rcnn", "rcnn-to-retinanet"]
SHARED = ["p3", "p4", "p5", "p6"]  # Faster R-CNN P2-P6 and RetinaNet P3-P7 at the same strides
TEACHER_HEAD_LEVELS = {"RetinaNet": SHARED, "GeneralizedRCNN": ["p3", "p4", "p5"]}
ONLY_IMPLICIT = ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", 0.0, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", 0.0]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """``stages(student, teacher, student_width)``: a tiny mixed distiller config (every DS2D2 weight 1) on a
    random tiny teacher (FPN width 64) and its amplifier, written once per setting."""
    cache = {}

    def get(student: str, teacher: str, student_width: int = 32):
        key = (student, teacher, student_width)
        if key not in cache:
            torch.manual_seed(len(cache))
            cache[key] = tiny_stages(tmp_path_factory.mktemp(student), student, teacher_detector=teacher,
                                     student_opts=["MODEL.FPN.OUT_CHANNELS", student_width])
        return cache[key].clone()

    return get


def distiller(cfg, opts=()) -> nn.Module:
    cfg.merge_from_list(list(opts))
    torch.manual_seed(1)
    return build_model(cfg).train()


@pytest.mark.parametrize("student, teacher", PAIRS, ids=PAIR_IDS)
def test_mixed_pair_builds_on_the_levels_both_have_and_logs_them(stages, caplog, student, teacher):
    with caplog.at_level(logging.INFO, logger="ds2d2.meta_arch.distiller"):
        model = distiller(stages(student, teacher))
    assert (model.student_family.kind, model.teacher_family.kind) == (student, teacher)
    assert model.in_features == SHARED
    assert model.teacher_family.levels == TEACHER_HEAD_LEVELS[teacher]
    assert "levels both have at one stride: p3 (stride 8), p4 (stride 16), p5 (stride 32), p6 (stride 64)" \
        in caplog.text


TERM_OPTS = {
    "DS2D2": [],
    "FitNet": ["MODEL.DS2D2.TERMS", "['FitNet']"],
    "FGD": ["MODEL.DS2D2.TERMS", "['FGD']", "MODEL.DS2D2.FGD.ALPHA", 1e-3, "MODEL.DS2D2.FGD.BETA", 1e-3,
            "MODEL.DS2D2.FGD.GAMMA", 1e-3, "MODEL.DS2D2.FGD.LAMBDA", 1e-3],
    "PKD": ["MODEL.DS2D2.TERMS", "['PKD']"],
    "MGD": ["MODEL.DS2D2.TERMS", "['MGD']", "MODEL.DS2D2.MGD.WEIGHT", 1e-3],
}
TERM_LOSSES = {
    "DS2D2": {"loss_ds2d2_ex_low", "loss_ds2d2_ex_high", "loss_ds2d2_im_full", "loss_ds2d2_im_high"},
    "FitNet": {"loss_fitnet"}, "FGD": {"loss_fgd_fea", "loss_fgd_att", "loss_fgd_global"},
    "PKD": {"loss_pkd"}, "MGD": {"loss_mgd"},
}


@pytest.mark.parametrize("method", list(TERM_OPTS))
@pytest.mark.parametrize("student, teacher", PAIRS, ids=PAIR_IDS)
def test_every_feature_and_ds2d2_term_trains_the_student_only(stages, student, teacher, method):
    width = 64 if method == "PKD" else 32  # PKD needs the teacher's width; the others adapt
    model = distiller(stages(student, teacher, width), TERM_OPTS[method])
    assert_terms_train_student_only(model, random_batch(), TERM_LOSSES[method])


@pytest.mark.parametrize("student, teacher", PAIRS, ids=PAIR_IDS)
def test_crosskd_and_pkd_at_other_widths_are_refused_by_key(stages, student, teacher):
    with pytest.raises(ValueError, match=r"MODEL.DS2D2.TERMS lists CrossKD.*teacher is a " + teacher):
        distiller(stages(student, teacher), ["MODEL.DS2D2.TERMS", "['CrossKD']"])
    with pytest.raises(ValueError, match=r"MODEL.FPN.OUT_CHANNELS \(32\) must equal the teacher's \(64\)"):
        distiller(stages(student, teacher), TERM_OPTS["PKD"])


# ---- DS2D2's implicit stream across families ---------------------------------------------------------------
def hand_dense(head, feats: List[Tensor], num_classes: int):
    """A RetinaNet head run level by level on ``feats``, flattened per image in the anchors' order: [B, N, K]
    logits and [B, N, 4] deltas, float64."""
    def flatten(levels, k):
        return torch.cat([x.view(x.shape[0], -1, k, *x.shape[-2:]).permute(0, 3, 4, 1, 2)
                          .reshape(x.shape[0], -1, k) for x in levels], dim=1).double()

    logits = [head.cls_score(head.cls_subnet(x)) for x in feats]
    deltas = [head.bbox_pred(head.bbox_subnet(x)) for x in feats]
    return flatten(logits, num_classes), flatten(deltas, 4)


def expected_implicit_full(model: nn.Module, step: DistillStep, cfg) -> float:
    """The teacher's head on the student's and on the teacher's features at the teacher's targets, through
    the authors' KD (test_parity.py), on the levels both have."""
    teacher, levels = model.teacher, model.teacher_family.levels
    s_feats = [step.student_feats[f] for f in levels]  # equal widths: the raw student features
    t_feats = [step.teacher_feats[f] for f in levels]
    targets = step.teacher_targets
    with torch.no_grad():
        if model.teacher_family.kind == "RetinaNet":
            k = teacher.num_classes
            s_logits, s_deltas = hand_dense(teacher.head, s_feats, k)
            t_logits, t_deltas = hand_dense(teacher.head, t_feats, k)
            anchors = Boxes.cat(teacher.anchor_generator(t_feats)).tensor.double()
            labels = targets.gt_labels
            cls, box, _ = authors_dense_kd(s_logits, t_logits, s_deltas, t_deltas, anchors, labels, k)
            return cls + box
        own = teacher.roi_heads.box_pooler
        box_cfg = cfg.MODEL.ROI_BOX_HEAD
        # the teacher's pooler on P3-P5 only, built independently
        scales = [1 / 2 ** int(f[1:]) for f in levels]
        pooler = ROIPooler(own.output_size, scales, box_cfg.POOLER_SAMPLING_RATIO, box_cfg.POOLER_TYPE)
        heads = teacher.roi_heads
        s_scores, s_deltas = heads.box_predictor(heads.box_head(pooler(s_feats, targets.rois)))
        t_scores, t_deltas = heads.box_predictor(heads.box_head(pooler(t_feats, targets.rois)))
    kl = roi_kl(s_scores.double(), t_scores.double())
    starts = np.cumsum([0] + [len(r) for r in targets.rois])
    per_image = [kl[a:b] for a, b in zip(starts, starts[1:])]
    cls = REDUCE[cfg.MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION](per_image)
    return cfg.MODEL.DS2D2.LOSS.ROI_CLS_WEIGHT * cls + authors_roi_box(s_deltas.double(), t_deltas.double(),
                                                                       t_scores.double())


def assert_teachers_own_targets(model: nn.Module, step: DistillStep) -> None:
    """The targets are of the teacher's kind: its anchors labelled by its matcher, or RoIs out of its own
    proposals and the ground truth."""
    teacher, targets = model.teacher, step.teacher_targets
    t_feats = [step.teacher_feats[f] for f in model.teacher_family.levels]
    with torch.no_grad():
        if model.teacher_family.kind == "RetinaNet":
            assert isinstance(targets, AnchorTargets) and isinstance(step.targets, RoITargets)
            labels, _ = teacher.label_anchors(teacher.anchor_generator(t_feats), step.gt_instances)
            assert torch.equal(targets.gt_labels, torch.stack(labels)) and int(targets.num_pos) > 0
            return
        assert isinstance(targets, RoITargets) and isinstance(step.targets, AnchorTargets)
        proposals, _ = teacher.proposal_generator(step.images, step.teacher_feats, None)
    for rois, props, truth in zip(targets.rois, proposals, step.gt_instances):
        candidates = Boxes.cat([props.proposal_boxes, truth.gt_boxes])
        best = pairwise_iou(rois, candidates).max(dim=1).values
        torch.testing.assert_close(best, torch.ones_like(best))


@pytest.mark.parametrize("student, teacher", PAIRS, ids=PAIR_IDS)
def test_implicit_stream_compares_the_teachers_head_on_its_own_targets(stages, student, teacher):
    cfg = stages(student, teacher, student_width=64)  # equal widths: raw student features, no adapter
    model = distiller(cfg, ONLY_IMPLICIT)
    assert list(model.terms) == ["DS2D2Implicit"] and model.adapters is None
    term = model.terms["DS2D2Implicit"]
    with EventStorage():
        torch.manual_seed(2)
        _, step = model.shared_step(random_batch())
        losses = term(step)
        assert_teachers_own_targets(model, step)
        expected = expected_implicit_full(model, step, cfg)
        # the student's features replaced by the teacher's: both heads see the same input, no KD left (both
        # at unit std, so that the random heads decode boxes of nonzero area: a point has GIoU 0 with itself)
        feats = {f: x / x.std() for f, x in step.teacher_feats.items()}
        same = DistillStep(step.images, step.gt_instances, feats, feats, step.targets,
                           step.student_predictions, step.teacher_family, step.same_kind)
        zero = term(same)
    assert set(losses) == {"loss_ds2d2_im_full", "loss_ds2d2_im_high"}
    assert all(math.isfinite(float(v)) and float(v) > 1e-3 for v in losses.values()), losses
    torch.testing.assert_close(losses["loss_ds2d2_im_full"].detach().double(),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-8)
    for key, value in zero.items():
        assert abs(float(value)) < 1e-5 * float(losses[key]), (key, float(value))


# ---- configs -----------------------------------------------------------------------------------------------
def mixed_configs() -> List[str]:
    return sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/mixed/*.yaml"))


def same_family_config(dataset: str, kind: str, depth: str, deploy: str = "") -> str:
    if dataset == "synthetic":
        return f"configs/synthetic/{kind}_{depth}_to_R18{deploy}.yaml"
    return f"configs/{dataset}/ds2d2/{kind}_{depth}_to_R18{deploy}.yaml"


def test_there_are_mixed_configs_for_each_dataset_direction_and_method():
    stems = {p.split("/", 1)[1] for p in mixed_configs()}
    for dataset, depth in (("DIOR", "R101"), ("DOTA", "R101"), ("synthetic", "R50")):
        for pair in (f"retinanet_{depth}_to_faster_rcnn_R18", f"faster_rcnn_{depth}_to_retinanet_R18"):
            for suffix in ("", "_deploy", "_fitnet", "_fgd", "_pkd", "_mgd"):
                assert f"{dataset}/mixed/{pair}{suffix}.yaml" in stems


KIND = {"retinanet": "RetinaNet", "faster_rcnn": "GeneralizedRCNN"}


@pytest.mark.parametrize("path", mixed_configs())
def test_mixed_config_pairs_the_other_kinds_teacher_with_the_students_recipe(path):
    dataset, _, name = Path(path).parts[1:]
    stem = name[:-len(".yaml")]
    t_kind, rest = stem.split("_R", 1)
    depth = "R" + rest.split("_", 1)[0]
    s_kind = rest.split("_to_", 1)[1].split("_R18", 1)[0]
    method = rest.split("_R18", 1)[1].lstrip("_")
    cfg = load_config(str(REPO / path), register=False)
    ds = cfg.MODEL.DS2D2
    teacher_cfg = load_config(str(REPO / ds.TEACHER_CONFIG), register=False)
    assert (ds.DETECTOR, teacher_cfg.MODEL.META_ARCHITECTURE) == (KIND[s_kind], KIND[t_kind])
    assert cfg.OUTPUT_DIR == "output/" + path[len("configs/"):-len(".yaml")]
    assert ds.INHERIT_TEACHER_NECK_HEAD is False  # refused across kinds (the same-family FGD/MGD set it)
    if method in ("", "deploy"):
        student_recipe = load_config(str(REPO / same_family_config(dataset, s_kind, depth, "_" * bool(method)
                                                                   + method)), register=False)
        teacher_recipe = load_config(str(REPO / same_family_config(dataset, t_kind, depth)), register=False)
        assert list(ds.TERMS) == ["DS2D2Explicit", "DS2D2Implicit"]
        assert ds.AMPLIFIER_WEIGHTS == teacher_recipe.MODEL.DS2D2.AMPLIFIER_WEIGHTS
        for key in ("IMPLICIT_FULL", "IMPLICIT_HIGH"):
            assert ds.LOSS[key] == teacher_recipe.MODEL.DS2D2.LOSS[key]
        for key in ("EXPLICIT_LOW", "EXPLICIT_HIGH"):
            assert ds.LOSS[key] == student_recipe.MODEL.DS2D2.LOSS[key]
        assert cfg.MODEL.FPN.OUT_CHANNELS == student_recipe.MODEL.FPN.OUT_CHANNELS
        assert cfg.SOLVER.BASE_LR == student_recipe.SOLVER.BASE_LR
    else:
        assert list(ds.TERMS) == [{"fitnet": "FitNet", "fgd": "FGD", "pkd": "PKD", "mgd": "MGD"}[method]]
    if method == "pkd":  # PKD needs equal FPN widths
        assert cfg.MODEL.FPN.OUT_CHANNELS == teacher_cfg.MODEL.FPN.OUT_CHANNELS


# ---- through train_net.py ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("student, teacher", PAIRS, ids=PAIR_IDS)
def test_train_net_trains_a_mixed_pair_and_exports_a_plain_student(small_dior_root, tmp_path, student,
                                                                   teacher):
    t_name, s_name = ("retinanet", "faster_rcnn") if teacher == "RetinaNet" else ("faster_rcnn", "retinanet")
    config = f"configs/synthetic/mixed/{t_name}_R50_to_{s_name}_R18.yaml"
    state = train_two_iterations(small_dior_root, tmp_path, config, student, student_width=32,
                                 term="DS2D2Implicit", shared=("adapters.",), teacher_detector=teacher,
                                 loss_prefix="loss_ds2d2_im_")
    assert any(k.startswith("adapters.") for k in state)
    out = tmp_path / "out"
    cfg = load_config(str(out / "config.yaml"), register=False)
    plain = build_model(student_config(cfg))  # a plain Detectron2 detector of the student's kind
    exported: Dict[str, Tensor] = torch.load(tmp_path / "student.pth", weights_only=True)["model"]
    plain.load_state_dict(exported, strict=True)
    assert type(plain).__name__ == student

    tool = load_script(REPO / "tools" / "export_student.py", "export_student_tool")
    onnx_file = tmp_path / "student.onnx"
    argv = ["--format", "onnx", "--config-file", str(out / "config.yaml"), "--checkpoint",
            str(out / "model_final.pth"), "--output", str(onnx_file)]
    assert tool.main(argv) == 0
    detector = OnnxDetector(str(onnx_file), threads=1)
    assert detector.info.family == student
    detections = detector(np.zeros((64, 64, 3), dtype=np.uint8))
    assert np.isfinite(np.asarray(detections.boxes)).all()
