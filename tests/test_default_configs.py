"""The DIOR and DOTA default configs yield the authors' training: loss weights, RoI KL scale, learning rates,
schedule, backbones and the links between stages. Configs are loaded, never built (their pretrained files are
not in the repository)."""
import re
from pathlib import Path
from typing import Dict, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone

from conftest import tiny_cfg
from ds2d2.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DATASETS = ("DIOR", "DOTA")
META_ARCHITECTURE = {"retinanet": "RetinaNet", "faster_rcnn": "GeneralizedRCNN"}
PLAIN = [CONFIGS / d / f"{det}_R{depth}.yaml" for d in DATASETS for det in META_ARCHITECTURE
         for depth in (18, 34, 50, 101)]
# The paper's students; the lighter deployment students (``*_deploy.yaml``) are this project's own addition,
# and so are the rotated detectors' stages (``rotated_*``: checked against their horizontal twins in
# test_rotated_distill.py).
DISTILLERS = sorted(p for d in DATASETS for p in (CONFIGS / d / "ds2d2").glob("*_to_R*.yaml")
                    if not p.stem.endswith("_deploy") and not p.name.startswith("rotated_"))
AMPLIFIERS = sorted(p for d in DATASETS for p in (CONFIGS / d / "ds2d2").glob("*_amplifier.yaml")
                    if not p.name.startswith("rotated_"))

# ---- The authors' recipe (docs/method.md) ----------------------------------------------------------------
# (detector, dataset) -> l1..l4 = MODEL.DS2D2.LOSS.EXPLICIT_LOW, EXPLICIT_HIGH, IMPLICIT_FULL, IMPLICIT_HIGH
LOSS_WEIGHTS = {
    ("retinanet", "DIOR"): (1e-5, 1e-5, 1.0, 1.0),
    ("retinanet", "DOTA"): (7e-5, 5e-5, 0.7, 0.5),
    ("faster_rcnn", "DIOR"): (0.5, 0.5, 1e-5, 1e-5),
    ("faster_rcnn", "DOTA"): (0.12, 1.2, 1.5e-3, 3e-3),
}
LOSS_KEYS = ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")
# Faster R-CNN: coefficient of the per-RoI mean KL in the l3 and l4 terms for a 2-image batch, i.e.
# l * ROI_CLS_WEIGHT (0.5) * T^2 (T = 3) * 1024 RoIs (2 images x 512 sampled RoIs), their sum per GPU.
ROI_KL_COEFFICIENTS = {"DIOR": (0.04608, 0.04608), "DOTA": (6.912, 13.824)}
# Total batch 16 (8 GPUs x 2 images), SGD, linear warm-up, 24 epochs with the LR x0.1 at epochs 16 and 22.
SCHEDULE = {
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.WARMUP_ITERS": 500,
    "SOLVER.WARMUP_FACTOR": 0.001,
}
EPOCHS, LR_STEP_EPOCHS = 24, (16, 22)
# Every backbone starts from torchvision's ImageNet weights; mmdet's frozen_stages=1 is the stem + res2.
TORCHVISION_BACKBONE = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.BACKBONE.FREEZE_AT": 2,
}
# RetinaNet: P7 = conv(P6), without the ReLU of Detectron2's own RetinaNet backbone.
RETINANET_BACKBONE = {
    "MODEL.BACKBONE.NAME": "build_ds2d2_retinanet_resnet_fpn_backbone",
    "MODEL.DS2D2.P7_FROM_RELU_P6": False,
}


def base_lr(detector: str, stage: str, depth: int, dataset: str) -> float:
    if detector == "faster_rcnn":
        return 0.02  # teacher, students alone, amplifier and DS2D2 students
    if stage == "student" and dataset == "DIOR":
        # The DIOR R-18 student alone at 0.02; no published value for alone: the base 0.005.
        return 0.02 if depth == 18 else 0.005
    return 0.005  # teacher R-101, amplifier, DS2D2 students, every DOTA student alone


class Role(NamedTuple):
    dataset: str
    detector: str  # "retinanet" or "faster_rcnn"
    stage: str  # "teacher", "student" (alone), "amplifier" or "distiller"
    depth: int  # of the backbone it trains (the student's for a distiller, the teacher's for an amplifier)

    @classmethod
    def of(cls, path: Path) -> "Role":
        match = re.fullmatch(r"(retinanet|faster_rcnn)_R(\d+)(?:_to_R(\d+)|_(amplifier))?", path.stem)
        detector, depth, student_depth, amplifier = match.groups()
        dataset = path.relative_to(CONFIGS).parts[0]
        if student_depth:
            return cls(dataset, detector, "distiller", int(student_depth))
        if amplifier:
            return cls(dataset, detector, "amplifier", int(depth))
        return cls(dataset, detector, "teacher" if depth == "101" else "student", int(depth))


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS).with_suffix(""))


def load(path: Path) -> CfgNode:
    return load_config(str(path), register=False)


def value(cfg: CfgNode, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, tuple) else cfg


def expected(role: Role) -> Dict[str, object]:
    """The effective config values that the authors' recipe implies for ``role``."""
    values = {
        "MODEL.META_ARCHITECTURE": {"amplifier": "DS2D2Amplifier", "distiller": "DS2D2Distiller"}.get(
            role.stage, META_ARCHITECTURE[role.detector]),
        "MODEL.RESNETS.DEPTH": role.depth,
        "MODEL.WEIGHTS": "" if role.stage == "amplifier" else f"pretrained/torchvision-R-{role.depth}.pkl",
        "SOLVER.BASE_LR": base_lr(role.detector, role.stage, role.depth, role.dataset),
        **SCHEDULE,
        **TORCHVISION_BACKBONE,
    }
    if role.detector == "retinanet":
        values.update(RETINANET_BACKBONE)
    if role.stage in ("amplifier", "distiller"):
        values["MODEL.DS2D2.DETECTOR"] = META_ARCHITECTURE[role.detector]
    if role.stage == "amplifier":
        values["MODEL.DS2D2.AMPLIFIER_INIT"] = "teacher"
    if role.stage == "distiller":
        weights = LOSS_WEIGHTS[role.detector, role.dataset]
        values.update({f"MODEL.DS2D2.LOSS.{k}": w for k, w in zip(LOSS_KEYS, weights)})
        values["MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION"] = "sum_per_2_images"
    return values


def test_every_stage_has_its_configs():
    assert len(DISTILLERS) == 12 and len(AMPLIFIERS) == 4
    assert {Role.of(p).stage for p in DISTILLERS} == {"distiller"}
    assert {Role.of(p).stage for p in AMPLIFIERS} == {"amplifier"}


@pytest.mark.parametrize("path", PLAIN + AMPLIFIERS + DISTILLERS, ids=config_id)
def test_default_config_is_the_authors_recipe(path):
    cfg = load(path)
    want = expected(Role.of(path))
    assert {key: value(cfg, key) for key in want} == want
    max_iter = cfg.SOLVER.MAX_ITER
    assert list(cfg.SOLVER.STEPS) == pytest.approx([max_iter * e / EPOCHS for e in LR_STEP_EPOCHS], rel=0.01)


# RoIs whose KL one step sums per MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION, in units of the per-RoI mean.
ROI_FACTOR = {
    "sum_per_2_images": lambda cfg: 2 * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
    "mean": lambda cfg: 1,
}


def roi_kl_coefficient(cfg: CfgNode, weight_key: str, reduction: str) -> float:
    """The factor of the per-RoI mean KL in the l3 (IMPLICIT_FULL) or l4 (IMPLICIT_HIGH) term."""
    loss = cfg.MODEL.DS2D2.LOSS
    return loss[weight_key] * loss.ROI_CLS_WEIGHT * loss.ROI_TEMPERATURE**2 * ROI_FACTOR[reduction](cfg)


@pytest.mark.parametrize("path", [p for p in DISTILLERS if "faster_rcnn" in p.name], ids=config_id)
def test_faster_rcnn_roi_kl_has_the_authors_scale(path):
    cfg = load(path)
    loss = cfg.MODEL.DS2D2.LOSS
    assert (loss.ROI_CLS_WEIGHT, loss.ROI_TEMPERATURE) == (0.5, 3)
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512
    keys = ("IMPLICIT_FULL", "IMPLICIT_HIGH")
    coefficients = [roi_kl_coefficient(cfg, k, loss.ROI_CLS_REDUCTION) for k in keys]
    assert coefficients == pytest.approx(ROI_KL_COEFFICIENTS[Role.of(path).dataset], rel=1e-9)
    # Why the reduction matters: a mean over the RoIs with the same l3/l4 is ~1000x weaker.
    for key, coefficient in zip(keys, coefficients):
        assert coefficient / roi_kl_coefficient(cfg, key, "mean") == 1024


def num_classes(cfg: CfgNode, meta_architecture: str) -> int:
    heads = cfg.MODEL.RETINANET if meta_architecture == "RetinaNet" else cfg.MODEL.ROI_HEADS
    return heads.NUM_CLASSES


@pytest.mark.parametrize("path", DISTILLERS, ids=config_id)
def test_distiller_uses_its_teacher_and_amplifier(path):
    cfg, role = load(path), Role.of(path)
    ds = cfg.MODEL.DS2D2
    teacher_path = REPO / ds.TEACHER_CONFIG
    assert teacher_path.is_file(), ds.TEACHER_CONFIG
    teacher = load(teacher_path)
    assert teacher.MODEL.META_ARCHITECTURE == ds.DETECTOR and teacher.MODEL.RESNETS.DEPTH == 101
    assert num_classes(teacher, ds.DETECTOR) == num_classes(cfg, ds.DETECTOR)
    amplifier = load(CONFIGS / role.dataset / "ds2d2" / f"{role.detector}_R101_amplifier.yaml")
    teacher_weights = f"{teacher.OUTPUT_DIR}/model_final.pth"
    assert ds.TEACHER_WEIGHTS == amplifier.MODEL.DS2D2.TEACHER_WEIGHTS == teacher_weights
    assert ds.AMPLIFIER_WEIGHTS == f"{amplifier.OUTPUT_DIR}/model_final.pth"


def test_retinanet_backbone_p7_from_p6_with_or_without_relu():
    backbones = {}
    for relu in (False, True):
        cfg = tiny_cfg("RetinaNet", ["MODEL.DS2D2.P7_FROM_RELU_P6", relu])
        assert cfg.MODEL.BACKBONE.NAME == RETINANET_BACKBONE["MODEL.BACKBONE.NAME"]
        torch.manual_seed(relu)
        backbones[relu] = build_backbone(cfg).eval()
    backbones[True].load_state_dict(backbones[False].state_dict())  # strict: the same parameters
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        linear, relu = backbones[False](x), backbones[True](x)
        torch.testing.assert_close(linear["p7"], backbones[False].top_block.p7(linear["p6"]))
        torch.testing.assert_close(relu["p7"], backbones[True].top_block.p7(F.relu(relu["p6"])))
    torch.testing.assert_close(linear["p6"], relu["p6"])
    assert not torch.allclose(linear["p7"], relu["p7"])


# ---- The baselines' recipes as their official code trains them (docs/baselines.md, fidelity table) -------
BASELINES = sorted(p for d in (*DATASETS, "DIOR-R", "synthetic")
                   for p in (CONFIGS / d / "baselines").glob("*.yaml"))
FGD_MGD = [p for p in BASELINES if p.stem.endswith(("_fgd", "_mgd"))]
# MMDetection's grad_clip=dict(max_norm=35, norm_type=2): one norm over every gradient (ds2d2/solver.py).
FULL_MODEL_CLIPPING = {
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 35.0,
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
}


def test_every_fgd_and_mgd_config_is_checked():
    # {DIOR, DOTA, synthetic} x {RetinaNet, Faster R-CNN} x {FGD, MGD}, and {DOTA, DIOR-R, synthetic} x the
    # rotated detectors x {FGD, MGD}
    assert len(FGD_MGD) == 24


@pytest.mark.parametrize("path", FGD_MGD, ids=config_id)
def test_fgd_and_mgd_train_as_their_official_configs(path):
    """Gradient clipping at 35 over the whole model; the teacher's FPN and head inherited where the
    official config sets init_student (FGD: both detectors; MGD: RetinaNet only); the levels left to the
    terms' default (RetinaNet P3-P7, Faster R-CNN P2-P5: test_fgd.py and test_mgd.py check it)."""
    cfg = load(path)
    method = path.stem.rsplit("_", 1)[1].upper()
    assert {key: value(cfg, key) for key in FULL_MODEL_CLIPPING} == FULL_MODEL_CLIPPING
    inherits = method == "FGD" or path.name.startswith(("retinanet", "rotated_retinanet"))
    assert cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD is inherits
    assert list(cfg.MODEL.DS2D2.TERMS) == [method]
    assert list(cfg.MODEL.DS2D2[method].IN_FEATURES) == [] and list(cfg.MODEL.DS2D2.IN_FEATURES) == []


@pytest.mark.parametrize("path", sorted(set(BASELINES) - set(FGD_MGD)), ids=config_id)
def test_other_baselines_keep_the_students_own_init(path):
    assert load(path).MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD is False
