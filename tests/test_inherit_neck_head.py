"""MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD (ds2d2.meta_arch.inherit): an FGD / MGD student's FPN and heads equal
the teacher's at iteration 0 wherever the shapes fit, the others keep their own init and are logged by name,
the trunk comes from MODEL.WEIGHTS after the trainer's resume_or_load(resume=False); a student with nothing
to inherit (a narrower FPN) is refused, the key named; configs recorded with the old FGD-only key load, True
refused naming the new key."""
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from torch import nn

from conftest import REPO, random_batch, tiny_cfg, tiny_stages
from ds2d2.checks import check_config
from ds2d2.config import load_config
from ds2d2.engine import Trainer
from ds2d2.meta_arch.inherit import inherit_teacher_neck_head
from ds2d2.teacher import resolve_teacher_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")
KEY = "MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD"
# An R-50 teacher for the tiny R-18 students, both with a 32-channel FPN (the conftest student's width).
R50_TEACHER = [
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256
]
# What cannot fit, from the widths alone: the lateral 1x1 convs read the ResNet stages (R-18: 64..512
# channels, R-50: 256..2048), and RetinaNet's P6 conv reads C5. Their biases (32 channels) fit.
MISFITS = {
    "RetinaNet": {f"backbone.fpn_lateral{i}.weight" for i in (3, 4, 5)} | {"backbone.top_block.p6.weight"},
    "GeneralizedRCNN": {f"backbone.fpn_lateral{i}.weight" for i in (2, 3, 4, 5)},
}
TERM_OPTS = {"FGD": [], "MGD": ["MODEL.DS2D2.MGD.WEIGHT", 1e-3]}


def distiller_cfg(folder: Path, detector: str, term: str, inherit: bool, student_opts: Sequence = ()):
    torch.manual_seed(0)
    cfg = tiny_stages(folder, detector, teacher_opts=R50_TEACHER, student_opts=student_opts)
    cfg.merge_from_list(["MODEL.DS2D2.TERMS", f"['{term}']", KEY, inherit, *TERM_OPTS[term]])
    return cfg


def neck_and_head(model: nn.Module):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.bottom_up.")}


@pytest.mark.parametrize("term", ["FGD", "MGD"])
@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_student_starts_from_the_teachers_neck_and_head_where_shapes_fit(tmp_path, caplog, detector, term):
    with caplog.at_level(logging.INFO, logger="ds2d2.meta_arch.inherit"):
        model = build_model(distiller_cfg(tmp_path, detector, term, inherit=True))
    own = build_model(distiller_cfg(tmp_path, detector, term, inherit=False))  # same seed: the own init
    teacher, student = neck_and_head(model.teacher), model.student.state_dict()
    fresh = own.student.state_dict()
    assert any(k.startswith(("head.", "roi_heads.")) for k in teacher) and len(teacher) > 20

    misfits = {k for k in teacher if student[k].shape != teacher[k].shape}
    assert misfits == MISFITS[detector]
    for name in teacher.keys() - misfits:
        assert torch.equal(student[name], teacher[name]), name
    for name in misfits:
        assert torch.equal(student[name], fresh[name]), name  # left at the student's own init
        assert name in caplog.text  # logged by name
    trunk = "backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(student[trunk], fresh[trunk])  # the trunk is not the teacher's
    weights = [k for k in teacher.keys() - misfits if teacher[k].dim() >= 2]
    assert weights and not any(torch.equal(fresh[k], teacher[k]) for k in weights)  # so: inherited


def converted_trunk(folder: Path) -> torchvision.models.ResNet:
    """A random torchvision ResNet-18, saved and converted to ``folder/r18.pkl`` as the README's ImageNet
    weights are (tools/convert_torchvision_resnet.py)."""
    torch.manual_seed(18)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), folder / "tv.pth")
    tool = REPO / "tools" / "convert_torchvision_resnet.py"
    subprocess.run([sys.executable, str(tool), str(folder / "tv.pth"), str(folder / "r18.pkl")], check=True)
    return tv


class RandomBatchTrainer(Trainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return (random_batch(seed=i) for i in itertools.count())


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_inherited_tensors_survive_loading_model_weights(tmp_path, detector):
    tv = converted_trunk(tmp_path)
    cfg = distiller_cfg(tmp_path, detector, "FGD", inherit=True)
    cfg.merge_from_list(["MODEL.WEIGHTS", str(tmp_path / "r18.pkl"), "OUTPUT_DIR", str(tmp_path / "out")])
    os.makedirs(cfg.OUTPUT_DIR)
    trainer = RandomBatchTrainer(cfg)
    trainer.resume_or_load(resume=False)  # what train_net.py does before training
    model = trainer.model
    teacher, student = neck_and_head(model.teacher), model.student.state_dict()
    fitting = [k for k in teacher if student[k].shape == teacher[k].shape]
    assert len(fitting) == len(teacher) - len(MISFITS[detector])
    assert all(torch.equal(student[k], teacher[k]) for k in fitting)
    bottom_up = model.student.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, tv.conv1.weight)  # MODEL.WEIGHTS filled the trunk
    assert torch.equal(bottom_up.res5[1].conv2.weight, tv.layer4[1].conv2.weight)


@pytest.mark.parametrize("detector, narrow", [
    ("RetinaNet", ["MODEL.FPN.OUT_CHANNELS", 16]),
    ("GeneralizedRCNN", ["MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 32]),
], ids=["retinanet", "faster_rcnn"])
def test_a_narrower_student_is_refused_naming_the_key(tmp_path, detector, narrow):
    """As the *_deploy students: only bias vectors (class and box outputs) would fit."""
    cfg = distiller_cfg(tmp_path, detector, "FGD", inherit=True, student_opts=narrow)
    with pytest.raises(ValueError, match=f"{KEY}: none of the teacher's FPN / head weights"):
        build_model(cfg)


def test_a_teacher_of_the_other_kind_is_refused_naming_the_key():
    """Across kinds only the FPN (and a few lateral biases) would fit, no head tensor."""
    retinanet = build_model(tiny_cfg("RetinaNet"))
    rcnn = build_model(tiny_cfg("GeneralizedRCNN"))
    for student, teacher in ((retinanet, rcnn), (rcnn, retinanet)):
        expected = f"{KEY}: the student is a {type(student).__name__}, the teacher"
        with pytest.raises(ValueError, match=expected):
            inherit_teacher_neck_head(student, teacher)


def test_a_non_boolean_is_refused_naming_the_key(tmp_path):
    cfg = distiller_cfg(tmp_path, "RetinaNet", "FGD", inherit=True)
    cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD = "yes"
    with pytest.raises(ValueError, match=f"{KEY} must be True or False"):
        build_model(cfg)


OLD_KEY = "MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD"


def recorded_before_the_rename(folder: Path, opts: Sequence, old_value: bool) -> Path:
    """``folder/config.yaml`` as a run recorded it before the key moved: a dump writes every key of the
    defaults then, so the FGD one (``old_value``) and not the new one."""
    cfg = tiny_cfg("RetinaNet", opts)
    del cfg.MODEL.DS2D2["INHERIT_TEACHER_NECK_HEAD"]
    cfg.MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD = old_value
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(cfg.dump())
    return folder / "config.yaml"


def test_a_teacher_recorded_with_the_old_key_at_false_loads(tmp_path):
    recorded_before_the_rename(tmp_path / "teacher", [], False)
    weights = str(tmp_path / "teacher" / "model_final.pth")  # only its folder is read here
    student = tiny_cfg("RetinaNet", ["MODEL.DS2D2.TEACHER_WEIGHTS", weights])
    teacher_cfg, source = resolve_teacher_config(student)
    assert source == str(tmp_path / "teacher" / "config.yaml")
    assert teacher_cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD is False
    assert teacher_cfg.MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD is False


@pytest.mark.parametrize("old_value", [False, True])
def test_an_fgd_run_recorded_with_the_old_key_loads_and_true_names_the_new_key(tmp_path, old_value):
    """As --eval-only, export or a resumed run reads an older stage-3 run's config.yaml."""
    fgd_run = ["MODEL.META_ARCHITECTURE", "DS2D2Distiller", "MODEL.DS2D2.TERMS", "['FGD']"]
    cfg = load_config(str(recorded_before_the_rename(tmp_path, fgd_run, old_value)), register=False)
    assert cfg.MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD is old_value
    assert cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD is False  # the default: the old key is not carried over
    if not old_value:
        check_config(cfg, datasets=())
        return
    with pytest.raises(ValueError, match=f"{OLD_KEY} is deprecated .* Set {KEY} True instead"):
        check_config(cfg, datasets=())
    cfg.merge_from_list([KEY, True, OLD_KEY, False])  # the fix the message gives
    check_config(cfg, datasets=())
