"""Distilling rotated detectors (docs/method.md "Rotated boxes (extension)"): the rotated RetinaNet and
rotated Faster R-CNN families; every term of every method on them from a rotated teacher of the same kind
(tiny random models: losses finite and nonzero, gradients to the student and the terms' helpers only); the
implicit stream at zero when the student's features are the teacher's; the rotated box KD against per-row
loops; the stage-2 amplifier; rotated/horizontal pairs refused, rotated pairs of two kinds distilled; the
shipped rotated configs against their horizontal twins; and 3 iterations of each shipped config through
train_net.py with a checkpoint free of teacher tensors and an exported student that loads as a plain rotated
Detectron2 model."""
import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import RotatedBoxes
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from conftest import assert_step_leaves_teacher, assert_terms_train_student_only, load_script, \
    losses_then_shared_step, tiny_stages
from ds2d2.config import detector_architecture, load_config
from ds2d2.distill import DistillStep
from ds2d2.distill.box_kd import dense_rotated_box_kd
from ds2d2.losses import roi_box_kd
from ds2d2.export import student_config
from ds2d2.families import AnchorTargets, RoITargets, RotatedRCNNFamily, RotatedRetinaNetFamily, family_for
from ds2d2.losses import probiou_loss
from rotated_setup import CONFIGS, TINY, TINY_TRAINING, register_oriented_dataset, rotated_batch, \
    tiny_config, write_rotated_teacher

pytestmark = pytest.mark.usefixtures("single_torch_thread")
KINDS = ["retinanet", "faster_rcnn"]
STUDENT = {kind: f"synthetic/rotated_{kind}_R18_student.yaml" for kind in KINDS}
TEACHER = {kind: f"synthetic/rotated_{kind}_R50_teacher.yaml" for kind in KINDS}
FAMILY = {"retinanet": RotatedRetinaNetFamily, "faster_rcnn": RotatedRCNNFamily}
DS2D2_WEIGHTS = [f"MODEL.DS2D2.LOSS.{k}"
                 for k in ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")]
# method -> (overrides, student FPN width: PKD and dense CrossKD need the teacher's 64, the others adapt)
METHODS = {
    "DS2D2": ([], 32),
    "explicit": (["MODEL.DS2D2.LOSS.IMPLICIT_FULL", 0.0, "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", 0.0], 32),
    "implicit": (["MODEL.DS2D2.LOSS.EXPLICIT_LOW", 0.0, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", 0.0], 32),
    "FitNet": (["MODEL.DS2D2.TERMS", "['FitNet']"], 32),
    "FGD": (["MODEL.DS2D2.TERMS", "['FGD']", "MODEL.DS2D2.FGD.ALPHA", 1e-3, "MODEL.DS2D2.FGD.BETA", 1e-3,
             "MODEL.DS2D2.FGD.GAMMA", 1e-3, "MODEL.DS2D2.FGD.LAMBDA", 1e-3], 32),
    "PKD": (["MODEL.DS2D2.TERMS", "['PKD']"], 64),
    "MGD": (["MODEL.DS2D2.TERMS", "['MGD']", "MODEL.DS2D2.MGD.WEIGHT", 1e-3], 32),
    "CrossKD": (["MODEL.DS2D2.TERMS", "['CrossKD']"], 64),
}
LOSSES = {
    "DS2D2": {"loss_ds2d2_ex_low", "loss_ds2d2_ex_high", "loss_ds2d2_im_full", "loss_ds2d2_im_high"},
    "explicit": {"loss_ds2d2_ex_low", "loss_ds2d2_ex_high"},
    "implicit": {"loss_ds2d2_im_full", "loss_ds2d2_im_high"},
    "FitNet": {"loss_fitnet"}, "FGD": {"loss_fgd_fea", "loss_fgd_att", "loss_fgd_global"},
    "PKD": {"loss_pkd"}, "MGD": {"loss_mgd"}, "CrossKD": {"loss_crosskd_cls", "loss_crosskd_box"},
}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """``teachers(kind)``: the overrides pointing a distiller at a tiny random rotated teacher of ``kind``
    (FPN width 64) and its amplifier, written once per kind."""
    cache: Dict[str, List[str]] = {}

    def get(kind: str) -> List[str]:
        if kind not in cache:
            torch.manual_seed(len(cache))
            cache[kind] = write_rotated_teacher(tmp_path_factory.mktemp(kind), TEACHER[kind])
        return cache[kind]

    return get


def distiller_config(student: str, teacher_overrides: List[str], width: int = 32, opts=()):
    """A tiny DS2D2 distiller config on the rotated ``student`` config (every DS2D2 weight 1, FPN
    ``width``)."""
    arch = detector_architecture(tiny_config(student))
    return tiny_config(student, [
        "MODEL.META_ARCHITECTURE", "DS2D2Distiller", "MODEL.DS2D2.DETECTOR", arch, *teacher_overrides,
        *[v for key in DS2D2_WEIGHTS for v in (key, 1.0)], "MODEL.FPN.OUT_CHANNELS", width, *opts,
    ])


def distiller(cfg) -> nn.Module:
    torch.manual_seed(1)
    return build_model(cfg).train()


# ---- the families ------------------------------------------------------------------------------------------
def decode_rotated(deltas: Tensor, boxes: Tensor, weights) -> Tensor:
    """Detectron2's rotated box decoding written out, float64: [N, 5k] deltas on [N, 5] boxes."""
    d = deltas.double().view(deltas.shape[0], -1, 5) / torch.tensor(weights, dtype=torch.float64)
    b = boxes.double()[:, None]
    angle = torch.rad2deg(d[..., 4]) + b[..., 4]
    out = torch.stack([d[..., 0] * b[..., 2] + b[..., 0], d[..., 1] * b[..., 3] + b[..., 1],
                       d[..., 2].exp() * b[..., 2], d[..., 3].exp() * b[..., 3],
                       torch.remainder(angle + 180.0, 360.0) - 180.0], dim=2)
    return out.view(deltas.shape[0], -1)


@pytest.mark.parametrize("kind", KINDS)
def test_family_of_a_rotated_detector_keeps_its_losses_and_decodes_xywha(kind):
    torch.manual_seed(0)
    detector = build_model(tiny_config(STUDENT[kind])).train()
    reference = copy.deepcopy(detector)  # RetinaNet's loss normaliser is a running average: a fresh copy
    family = family_for(detector)
    assert type(family) is FAMILY[kind] and family.box_dim == 5
    batch = rotated_batch()
    with EventStorage():
        torch.manual_seed(3)
        own = reference(batch)
        torch.manual_seed(3)
        images = detector.preprocess_image(batch)
        feats = detector.backbone(images.tensor)
        losses, targets, predictions = family.detection_losses(images, feats, [x["instances"] for x in batch])
    assert losses.keys() == own.keys()
    for key in own:
        torch.testing.assert_close(losses[key], own[key], msg=key)
    deltas = predictions.box_deltas
    if kind == "retinanet":
        assert isinstance(targets, AnchorTargets) and targets.anchors.shape[1] == 5
        assert deltas.shape == (targets.gt_labels.numel(), 5)
        anchors, weights = targets.anchors_per_row, detector.box2box_transform.weights
    else:
        assert isinstance(targets, RoITargets) and all(isinstance(r, RotatedBoxes) for r in targets.rois)
        assert deltas.shape == (sum(len(r) for r in targets.rois), 5 * family.num_classes)
        anchors = torch.cat([r.tensor for r in targets.rois])
        weights = detector.roi_heads.box_predictor.box2box_transform.weights
    small = torch.randn(deltas.shape, generator=torch.Generator().manual_seed(0)) * 0.3
    decoded = family.decode_boxes(small, targets)
    assert decoded.shape == small.shape
    expected = decode_rotated(small, anchors, weights)
    torch.testing.assert_close(decoded.double(), expected, rtol=1e-5, atol=1e-3)


# ---- every term on both rotated families -------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_term_trains_the_rotated_student_only(teachers, kind, method):
    opts, width = METHODS[method]
    model = distiller(distiller_config(STUDENT[kind], teachers(kind), width, opts))
    assert model.student_family.kind == model.teacher_family.kind == FAMILY[kind].kind
    step = assert_terms_train_student_only(model, rotated_batch(), LOSSES[method])
    assert all(b.shape[1] == 5 for b in step.gt_boxes)  # the oriented boxes reach DISW / FGD unchanged


@pytest.mark.parametrize("kind", KINDS)
def test_implicit_stream_is_zero_when_the_students_features_are_the_teachers(teachers, kind):
    cfg = distiller_config(STUDENT[kind], teachers(kind), 64, METHODS["implicit"][0])  # raw features
    model = distiller(cfg)
    term = model.terms["DS2D2Implicit"]
    with EventStorage():
        torch.manual_seed(2)
        _, step = model.shared_step(rotated_batch())
        losses = term(step)
        # both heads see the same input (unit std: the random heads decode boxes of nonzero size)
        feats = {f: x / x.std() for f, x in step.teacher_feats.items()}
        same = DistillStep(step.images, step.gt_instances, feats, feats, step.targets,
                           step.student_predictions, step.teacher_family, step.same_kind)
        zero = term(same)
    assert set(losses) == set(zero) == {"loss_ds2d2_im_full", "loss_ds2d2_im_high"}
    assert all(math.isfinite(float(v)) and float(v) > 1e-3 for v in losses.values()), losses
    for key, value in zero.items():
        assert abs(float(value)) < 1e-6 * float(losses[key]), (key, float(value))


# ---- the rotated box KD against per-row loops --------------------------------------------------------------
def random_rotated(n: int, generator: torch.Generator) -> Tensor:
    """[n, 5] boxes: centres in [0, 60), sizes in [2, 22), angles in [-90, 90) degrees."""
    return torch.cat([torch.rand(n, 2, generator=generator) * 60,
                      torch.rand(n, 2, generator=generator) * 20 + 2,
                      torch.rand(n, 1, generator=generator) * 180 - 90], dim=1)


def test_dense_rotated_box_kd_is_the_weighted_probiou_sum_over_the_positives():
    g = torch.Generator().manual_seed(0)
    student, teacher = random_rotated(7, g).requires_grad_(), random_rotated(7, g)
    weight = torch.rand(7, generator=g)
    loss = dense_rotated_box_kd(student, teacher, weight, torch.tensor(3))
    expected = sum(float(weight[i]) * float(probiou_loss(student[i:i + 1], teacher[i:i + 1]))
                   for i in range(7))
    assert float(loss) == pytest.approx(expected / 3, rel=1e-5)
    assert float(dense_rotated_box_kd(student, teacher, weight, 0)) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("class_specific", [True, False])
def test_roi_box_kd_on_five_deltas_against_a_per_roi_loop(class_specific):
    g = torch.Generator().manual_seed(1)
    rois, classes = 9, 3
    width = 5 * classes if class_specific else 5
    student = torch.randn(rois, width, generator=g).requires_grad_()
    teacher = torch.randn(rois, width, generator=g)
    logits = torch.randn(rois, classes + 1, generator=g)
    loss = roi_box_kd(student, teacher, logits, box_dim=5)
    total, weights = 0.0, 0.0
    for r in range(rois):
        p = torch.softmax(logits[r].double(), dim=0)[:classes].tolist()
        c = max(range(classes), key=lambda k: p[k])
        cols = slice(5 * c, 5 * c + 5) if class_specific else slice(0, 5)
        total += p[c] * sum(abs(a - b) for a, b in zip(student[r, cols].tolist(), teacher[r, cols].tolist()))
        weights += p[c]
    assert float(loss) == pytest.approx(total / (5 * weights), rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[R, 5\] or \[R, 15\]"):
        roi_box_kd(student[:, :4], teacher[:, :4], logits, box_dim=5)


# ---- stage 2 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_amplifier_trains_the_rotated_heads_on_the_frozen_teachers_high_frequencies(teachers, kind):
    weights = teachers(kind)[3]  # MODEL.DS2D2.TEACHER_WEIGHTS
    cfg = tiny_config(f"synthetic/rotated_{kind}_R50_amplifier.yaml",
                      ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.DS2D2.TEACHER_WEIGHTS", weights])
    model = build_model(cfg).train()
    trunk = {k: v.clone() for k, v in model.detector.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("detector.backbone.")}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(2):
        with EventStorage():
            losses = model(rotated_batch())
        assert all(math.isfinite(float(v)) for v in losses.values()) and float(sum(losses.values())) > 0
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert all(torch.equal(v, trunk[k]) for k, v in model.detector.backbone.state_dict().items())
    assert any(not torch.equal(v, heads[k]) for k, v in model.state_dict().items() if k in heads)


# ---- pairs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, horizontal_kind",
                         [("retinanet", "RetinaNet"), ("faster_rcnn", "GeneralizedRCNN")])
def test_a_horizontal_teacher_for_a_rotated_student_is_refused_by_key(
        tmp_path, caplog, kind, horizontal_kind):
    """Refused before the neck and head are inherited (a GeneralizedRCNN teacher of horizontal boxes has the
    rotated student's tensor names)."""
    horizontal = tiny_stages(tmp_path, horizontal_kind)
    paths = ["MODEL.DS2D2.TEACHER_CONFIG", horizontal.MODEL.DS2D2.TEACHER_CONFIG,
             "MODEL.DS2D2.TEACHER_WEIGHTS", horizontal.MODEL.DS2D2.TEACHER_WEIGHTS,
             "MODEL.DS2D2.AMPLIFIER_WEIGHTS", horizontal.MODEL.DS2D2.AMPLIFIER_WEIGHTS]
    cfg = distiller_config(STUDENT[kind], paths, 64, ["MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD", True])
    cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(ValueError, match=r"MODEL\.DS2D2\.DETECTOR.* of rotated boxes, the teacher .*"
                                         r"MODEL\.DS2D2\.TEACHER_CONFIG.* of horizontal boxes"), \
            caplog.at_level(logging.INFO, logger="ds2d2.meta_arch.inherit"):
        distiller(cfg)
    assert "inherits" not in caplog.text


@pytest.mark.parametrize("student, teacher", [("faster_rcnn", "retinanet"), ("retinanet", "faster_rcnn")])
def test_a_rotated_pair_of_two_kinds_distils_through_the_teachers_own_targets(teachers, student, teacher):
    model = distiller(distiller_config(STUDENT[student], teachers(teacher)))
    kinds = (model.student_family.kind, model.teacher_family.kind)
    assert kinds == (FAMILY[student].kind, FAMILY[teacher].kind)
    losses, detection, step = losses_then_shared_step(model, rotated_batch())
    with EventStorage():  # RoI sampling logs its counts
        assert type(step.teacher_targets) is not type(step.targets)
    kd = {k: v for k, v in losses.items() if k not in detection}
    assert set(kd) == LOSSES["DS2D2"] and all(math.isfinite(float(v)) and float(v) > 0 for v in kd.values())
    assert_step_leaves_teacher(model, losses, ("student.", "adapters.", "terms."))


# ---- shipped configs ---------------------------------------------------------------------------------------
def rotated_stage_configs() -> List[Path]:
    return sorted(p for d in ("synthetic", "DOTA", "DIOR-R") for p in (CONFIGS / d).rglob("rotated_*.yaml")
                  if p.stem.endswith(("_amplifier", "_to_R18")) or "_to_R18_" in p.stem)


def horizontal_twin(path: Path) -> Path:
    parts = list(path.relative_to(CONFIGS).parts)
    parts[0] = {"DIOR-R": "DIOR"}.get(parts[0], parts[0])
    parts[-1] = parts[-1][len("rotated_"):]
    return CONFIGS.joinpath(*parts)


def test_every_dataset_kind_and_method_has_its_rotated_configs():
    names = {p.relative_to(CONFIGS).as_posix() for p in rotated_stage_configs()}
    for dataset, depth, stages, baselines in (("synthetic", "R50", "synthetic", "synthetic/baselines"),
                                              ("DOTA", "R101", "DOTA/ds2d2", "DOTA/baselines"),
                                              ("DIOR-R", "R101", "DIOR-R/ds2d2", "DIOR-R/baselines")):
        for kind in KINDS:
            assert f"{stages}/rotated_{kind}_{depth}_amplifier.yaml" in names
            assert f"{stages}/rotated_{kind}_{depth}_to_R18.yaml" in names
            for method in ("fitnet", "fgd", "pkd", "mgd", "crosskd"):
                assert f"{baselines}/rotated_{kind}_{depth}_to_R18_{method}.yaml" in names
    assert len(names) == 3 * 2 * 7


@pytest.mark.parametrize("path", rotated_stage_configs(), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_rotated_config_is_its_horizontal_twins_recipe_on_the_rotated_detectors(path):
    """The solver, the DS2D2 keys and the backbone of the horizontal config of the same dataset, stage and
    method; the detector, teacher and amplifier are the rotated ones of the same depth, chained by their
    output folders."""
    cfg, twin = (load_config(str(p), register=False) for p in (path, horizontal_twin(path)))
    ds, twin_ds = cfg.MODEL.DS2D2, twin.MODEL.DS2D2
    assert cfg.SOLVER == twin.SOLVER and cfg.MODEL.RESNETS == twin.MODEL.RESNETS
    assert cfg.MODEL.FPN == twin.MODEL.FPN and cfg.INPUT == twin.INPUT
    assert cfg.MODEL.META_ARCHITECTURE == twin.MODEL.META_ARCHITECTURE
    links = ("DETECTOR", "TEACHER_CONFIG", "TEACHER_WEIGHTS", "AMPLIFIER_WEIGHTS")
    assert {k: v for k, v in ds.items() if k not in links} == \
        {k: v for k, v in twin_ds.items() if k not in links}
    assert cfg.OUTPUT_DIR == "output/" + path.relative_to(CONFIGS).with_suffix("").as_posix()
    assert ds.DETECTOR == detector_architecture(cfg) == ("RotatedRetinaNet" if "retinanet" in path.name
                                                         else "GeneralizedRCNN")
    if ds.DETECTOR == "GeneralizedRCNN":
        assert cfg.MODEL.ROI_HEADS.NAME == "RROIHeads"
    if path.stem.endswith("_amplifier"):
        teacher_weights = ds.TEACHER_WEIGHTS
    else:
        teacher = load_config(str(CONFIGS.parent / ds.TEACHER_CONFIG), register=False)
        twin_teacher = load_config(str(CONFIGS.parent / twin_ds.TEACHER_CONFIG), register=False)
        assert Path(ds.TEACHER_CONFIG).name.startswith("rotated_")
        assert detector_architecture(teacher) == ds.DETECTOR
        assert teacher.MODEL.RESNETS.DEPTH == twin_teacher.MODEL.RESNETS.DEPTH
        assert ds.TEACHER_WEIGHTS == f"{teacher.OUTPUT_DIR}/model_final.pth"
        dataset = path.relative_to(CONFIGS).parts[0]
        stages = CONFIGS / dataset if dataset == "synthetic" else CONFIGS / dataset / "ds2d2"
        amplifier_path = stages / f"{path.stem.split('_to_R18')[0]}_amplifier.yaml"
        amplifier = load_config(str(amplifier_path), register=False)
        assert ds.AMPLIFIER_WEIGHTS == f"{amplifier.OUTPUT_DIR}/model_final.pth"
        teacher_weights = amplifier.MODEL.DS2D2.TEACHER_WEIGHTS
        assert teacher_weights == ds.TEACHER_WEIGHTS
    assert teacher_weights.startswith("output/") and "/rotated_" in teacher_weights


# ---- through train_net.py ----------------------------------------------------------------------------------
TRAIN_NET = load_script(CONFIGS.parent / "train_net.py", "train_net")
EXPORT = load_script(CONFIGS.parent / "tools" / "export_student.py", "export_student")
SHIPPED = {"DS2D2": "", "explicit": "", "implicit": "", "FitNet": "_fitnet", "FGD": "_fgd", "PKD": "_pkd",
           "MGD": "_mgd", "CrossKD": "_crosskd"}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", KINDS)
def test_train_net_distils_a_rotated_student_and_exports_a_plain_one(teachers, tmp_path, restore_catalogs,
                                                                     kind, method):
    folder = "baselines/" if SHIPPED[method] else ""
    config = f"synthetic/{folder}rotated_{kind}_R50_to_R18{SHIPPED[method]}.yaml"
    # one stream off for "explicit" / "implicit"; the shipped config's weights otherwise
    streams = METHODS[method][0] if method in ("explicit", "implicit") else []
    width = 32 if method in ("DS2D2", "explicit", "implicit", "FitNet") else 64  # the others: the teacher's
    dataset = register_oriented_dataset(tmp_path / "images")
    out = tmp_path / "out"
    overrides = [*TINY, *TINY_TRAINING, *teachers(kind), "MODEL.FPN.OUT_CHANNELS", width, *streams,
                 "SOLVER.MAX_ITER", 3, "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (), "OUTPUT_DIR", out]
    argv = ["--config-file", str(CONFIGS / config), *map(str, overrides)]
    TRAIN_NET.main(default_argument_parser().parse_args(argv))

    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = {k for m in metrics for k in m if k in LOSSES[method]}
    assert trained == LOSSES[method], metrics
    assert all(math.isfinite(m[k]) for m in metrics for k in LOSSES[method] if k in m)
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith(("student.", "terms.", "adapters.")) for k in state), sorted(state)
    assert not any("teacher" in k for k in state)

    exported = tmp_path / "student.pth"
    argv = ["--config-file", str(out / "config.yaml"), "--checkpoint", str(out / "model_final.pth")]
    assert EXPORT.main([*argv, "--output", str(exported)]) == 0
    plain = build_model(student_config(load_config(str(out / "config.yaml"), register=False)))
    plain.load_state_dict(torch.load(exported, weights_only=True)["model"], strict=True)
    assert family_for(plain).box_dim == 5
    plain.eval()
    with torch.no_grad():
        result = plain([{"image": rotated_batch()[0]["image"], "height": 64, "width": 64}])[0]["instances"]
    assert isinstance(result.pred_boxes, RotatedBoxes)


# ---- tools/run_pipeline.py ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_run_pipeline_trains_the_three_rotated_stages_and_the_student(small_dior_root, tmp_path, kind):
    """Teacher, amplifier, student alone and DS2D2 of a shipped rotated config on the synthetic data's
    oriented boxes (DIOR-R's AP), 2 iterations each, every stage scored."""
    out = tmp_path / "pipeline"
    tiny = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
            "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 50, "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64,
            "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.MAX_ITER", 2, "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", 1,
            "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0]
    command = [sys.executable, CONFIGS.parent / "tools" / "run_pipeline.py", "--config",
               CONFIGS / f"synthetic/rotated_{kind}_R50_to_R18.yaml", "--output", out, "--", *tiny]
    env = dict(os.environ, DETECTRON2_DATASETS=str(small_dior_root), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    done = subprocess.run(list(map(str, command)), env=env, cwd=CONFIGS.parent, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("teacher", "amplifier", "student", "ds2d2"):
        assert "voc_rotated_ap50" in json.loads((out / stage / "eval_results.json").read_text()), stage
    report = (out / "results.md").read_text()
    assert report.startswith("| stage | AP | AP50 | AP75 | APs | voc_rotated_ap50 mAP50 |"), report
    assert report.count("\n") == 6 and "| ds2d2 |" in report, report
    state = torch.load(out / "ds2d2" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert not any("teacher" in k or "amplifier" in k for k in state)  # frozen: not saved
