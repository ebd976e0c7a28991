"""Helpers for the tests of distillation terms (test_pkd.py, test_mgd.py, test_fgd.py, a new term's): a
TermContext without models, a term built as the distiller builds it (its config checked first), and 2
iterations of a synthetic baseline config through train_net.py with a tiny random
teacher, whose checkpoint must hold no teacher tensor and whose student tools/export_student.py exports."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Type

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from torch import Tensor

from conftest import REPO, TINY, load_script, tiny_cfg
from ds2d2.checks import check_config
from ds2d2.distill import DistillTerm, TermContext

NUM_CLASSES_KEY = {
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES", "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES"
}
SYNTHETIC_CLASSES = 20  # the synthetic DIOR-layout data's
TEACHER_WIDTH = 64


def fake_context(cfg: CfgNode, strides: Dict[str, int], s_width: int, t_width: int) -> TermContext:
    """What a term is built from, without a detector: FPN levels ``strides`` in both, the given widths."""

    def no_adapters():
        raise AssertionError("this term must not ask for the shared adapters")

    s_shapes = {f: ShapeSpec(channels=s_width, stride=s) for f, s in strides.items()}
    t_shapes = {f: ShapeSpec(channels=t_width, stride=s) for f, s in strides.items()}
    return TermContext(cfg, None, None, s_shapes, t_shapes, list(strides), s_width, t_width, no_adapters)


def checked_term(
    term_class: Type[DistillTerm], cfg: CfgNode, strides: Dict[str, int], s_width: int, t_width: int
) -> DistillTerm:
    """``term_class`` built on ``fake_context`` as the distiller builds it: ``cfg`` (as a distiller's) goes
    through ``check_config`` first, which refuses bad values by key; the term only reads them."""
    distiller_cfg = cfg.clone()
    distiller_cfg.MODEL.META_ARCHITECTURE = "DS2D2Distiller"
    check_config(distiller_cfg, datasets=())
    return term_class(cfg, fake_context(cfg, strides, s_width, t_width))


def write_tiny_teacher(folder: Path, detector: str, width: int = TEACHER_WIDTH) -> List[str]:
    """A random tiny ``detector`` teacher (YAML + weights, FPN ``width``, the synthetic classes) and its
    stage-2 amplifier checkpoint under ``folder``; returns the overrides that point a distiller config at
    them."""
    cfg = tiny_cfg(
        detector, ["MODEL.FPN.OUT_CHANNELS", width, NUM_CLASSES_KEY[detector], SYNTHETIC_CLASSES]
    )
    (folder / "teacher.yaml").write_text(cfg.dump())
    torch.save({"model": build_model(cfg).state_dict()}, folder / "teacher.pth")
    amplifier = cfg.clone()
    amplifier.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Amplifier",
                               "MODEL.DS2D2.TEACHER_WEIGHTS", str(folder / "teacher.pth")])
    torch.save({"model": build_model(amplifier).state_dict()}, folder / "amplifier.pth")
    return ["MODEL.DS2D2.TEACHER_CONFIG", str(folder / "teacher.yaml"),
            "MODEL.DS2D2.TEACHER_WEIGHTS", str(folder / "teacher.pth"),
            "MODEL.DS2D2.AMPLIFIER_WEIGHTS", str(folder / "amplifier.pth")]


def train_two_iterations(
    data_root: Path, folder: Path, config: str, detector: str, student_width: int, term: str,
    shared: Sequence[str] = (), teacher_detector: str = "", loss_prefix: str = "",
    teacher_width: int = TEACHER_WIDTH, log_has: str = "",
) -> Dict[str, Tensor]:
    """Train ``config`` (tiny ``detector`` student, ``student_width`` FPN; a tiny ``teacher_detector``
    teacher, or one of the student's kind, ``teacher_width`` FPN) for 2 iterations with train_net.py, check
    that its output holds ``log_has``, that a loss named ``loss_prefix`` (default ``loss_<term>``) was logged,
    the checkpoint (student, ``terms.<term>.`` and the distiller's ``shared`` prefixes, e.g. ``adapters.``,
    only) and the student export; return its state dict."""
    out = folder / "out"
    opts: Sequence = [
        *TINY[detector], NUM_CLASSES_KEY[detector], SYNTHETIC_CLASSES,
        "MODEL.FPN.OUT_CHANNELS", student_width,
        *write_tiny_teacher(folder, teacher_detector or detector, teacher_width),
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 64, "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
    ]
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / config)]
    command += [str(v) for v in opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    assert log_has in done.stdout + done.stderr, log

    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    loss_prefix = loss_prefix or f"loss_{term.lower()}"
    assert any(k.startswith(loss_prefix) for m in metrics for k in m), (metrics, log)  # the term was trained
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith(("student.", f"terms.{term}.", *shared)) for k in state), sorted(state)
    assert not any("teacher" in k for k in state)

    tool = load_script(REPO / "tools" / "export_student.py", "export_student_tool")
    exported = folder / "student.pth"
    argv = ["--config-file", str(out / "config.yaml"), "--checkpoint", str(out / "model_final.pth")]
    assert tool.main([*argv, "--output", str(exported)]) == 0
    student = torch.load(exported, weights_only=True)["model"]
    assert student.keys() == {k[len("student."):] for k in state if k.startswith("student.")}
    return state
