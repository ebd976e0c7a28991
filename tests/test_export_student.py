"""tools/export_student.py and ds2d2.export: a distiller checkpoint -> a plain student checkpoint that loads
strictly and predicts exactly what the distiller predicts."""
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from conftest import REPO, assert_same_outputs, load_script, random_batch, tiny_stages
from ds2d2.engine import Trainer
from ds2d2.export import AUTHOR, export_student, export_student_state, student_config

TOOL = REPO / "tools" / "export_student.py"
pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Trained(NamedTuple):
    cfg: CfgNode
    config_file: str
    checkpoint: str
    model: nn.Module


class RandomBatchTrainer(Trainer):
    """train_net.py's Trainer, fed with random batches and writing no metrics."""

    @classmethod
    def build_train_loader(cls, cfg):
        return (random_batch(seed=i) for i in itertools.count())

    def build_writers(self):
        return []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(detector)``: a tiny distiller trained for 2 iterations by the Trainer, which wrote
    OUTPUT_DIR/model_final.pth (weights, optimizer and scheduler state) as train_net.py does."""
    cache: Dict[str, Trained] = {}

    def get(detector: str) -> Trained:
        if detector not in cache:
            folder = tmp_path_factory.mktemp(detector)
            torch.manual_seed(0)
            cfg = tiny_stages(folder, detector)
            cfg.merge_from_list(["OUTPUT_DIR", str(folder / "out"), "SOLVER.MAX_ITER", 2])
            cfg.SOLVER.BASE_LR = 1e-6
            os.makedirs(cfg.OUTPUT_DIR)
            trainer = RandomBatchTrainer(cfg)
            trainer.train()  # weights and BN statistics now differ from a fresh build
            config_file = folder / "distiller.yaml"
            config_file.write_text(cfg.dump())
            checkpoint = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
            cache[detector] = Trained(cfg, str(config_file), checkpoint, trainer.model.eval())
        return cache[detector]

    return get


def load_tool():
    module = load_script(TOOL, "export_student_tool")
    return module


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_round_trip_gives_the_distillers_predictions(trained, tmp_path, detector):
    run = trained(detector)
    output = tmp_path / "student.pth"
    export_student(run.cfg, run.checkpoint, str(output))

    exported = torch.load(output, weights_only=True)
    assert exported["__author__"] == AUTHOR
    assert sorted(exported["model"]) == sorted(run.model.student.state_dict())
    torch.manual_seed(123)  # a plain student initialised unlike the distiller's
    plain = build_model(student_config(run.cfg))
    assert type(plain) is type(run.model.student)
    incompatible = plain.load_state_dict(exported["model"], strict=False)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys

    plain.eval()
    batch = random_batch(seed=5)
    with torch.no_grad():
        expected, got = run.model(batch), plain(batch)
    assert_same_outputs(expected, got)


def test_command_line_writes_the_student(trained, tmp_path):
    run = trained("RetinaNet")
    output = tmp_path / "out" / "student.pth"
    argv = ["--config-file", run.config_file, "--checkpoint", run.checkpoint, "--output", str(output)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(TOOL), *argv]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert "student tensors" in done.stdout
    state = torch.load(output, weights_only=True)["model"]
    expected = run.model.student.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_command_line_fails_loudly_when_the_student_does_not_fit(trained, tmp_path, capsys):
    run = trained("RetinaNet")
    output = tmp_path / "student.pth"
    argv = ["--config-file", run.config_file, "--checkpoint", run.checkpoint, "--output", str(output)]
    assert load_tool().main([*argv, "MODEL.RESNETS.DEPTH", "34"]) == 1
    assert "missing" in capsys.readouterr().err
    assert not output.exists()


def test_student_config_swaps_the_meta_architecture_only(trained):
    cfg = trained("GeneralizedRCNN").cfg
    student = student_config(cfg)
    assert student.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.META_ARCHITECTURE == "DS2D2Distiller"
    student.MODEL.META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
    assert student == cfg
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE"):
        student_config(student_config(cfg))


def test_export_student_state_strips_the_prefix_and_drops_the_rest():
    weight = torch.ones(2)
    state = {"student.head.w": weight, "adapters.p3.weight": torch.zeros(1), "other": torch.zeros(1)}
    assert export_student_state(state) == {"head.w": weight}
    with pytest.raises(ValueError, match="no 'student.\\*' tensors"):
        export_student_state({"backbone.w": weight})


def test_refuses_a_checkpoint_that_is_not_a_distillers(trained, tmp_path):
    run = trained("RetinaNet")
    output = tmp_path / "student.pth"
    with pytest.raises(ValueError, match="teacher.pth.*no 'student.\\*' tensors"):
        export_student(run.cfg, run.cfg.MODEL.DS2D2.TEACHER_WEIGHTS, str(output))
    assert not output.exists()


def test_refuses_missing_and_truncated_checkpoints(trained, tmp_path):
    run = trained("RetinaNet")
    output = tmp_path / "student.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        export_student(run.cfg, str(tmp_path / "absent.pth"), str(output))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(run.checkpoint).read_bytes()[:4096])
    with pytest.raises(RuntimeError, match="truncated.pth"):
        export_student(run.cfg, str(truncated), str(output))
    assert not output.exists()


class TouchOnUnpickle:
    """Pickles to a call of Path.touch: unpickling it with full pickle would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_reads_checkpoints_weights_only(trained, tmp_path):
    run = trained("RetinaNet")
    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.pth"
    checkpoint = torch.load(run.checkpoint, weights_only=True)
    torch.save(dict(checkpoint, payload=TouchOnUnpickle(marker)), hostile)
    with pytest.raises(RuntimeError, match="hostile.pth.*weights-only"):
        export_student(run.cfg, str(hostile), str(tmp_path / "student.pth"))
    assert not marker.exists()
    assert os.listdir(tmp_path) == ["hostile.pth"]
