"""Issue 24: every weights file, whatever its extension, is read without running code, even with
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (torch's switch back to full unpickling for calls that leave weights_only
unset); and --eval-only refuses weights that leave the model's tensors at their initialisation."""
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from conftest import REPO, load_script, tiny_cfg, tiny_stages
from ds2d2.checkpoint import AtomicCheckpointer, CheckpointError, load_for_evaluation
from ds2d2.engine import Trainer
from reliability_setup import environment, register_in_process, run_train_net, tiny_trainer_config, write_data

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# file name -> how the crafted file is written: torch.save (zip), or pickle.dump (a plain pickle: torch.load
# reads it with its legacy reader; Detectron2's .pkl format)
CRAFTED = {
    "weights.pth": "torch",
    "weights.pt": "torch",
    "weights.pyth": "torch",
    "weights": "torch",
    "legacy.pt": "pickle",
    "weights.pkl": "pickle",
}


class RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for arbitrary code in a crafted weights file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_crafted(folder: Path, name: str) -> Path:
    """``folder/name``: weights of a Linear(3, 2) whose unpickling also creates ``folder/ran``."""
    path = folder / name
    weights = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    data = {"model": weights, "payload": RunsCode(folder / "ran")}
    if CRAFTED[name] == "torch":
        torch.save(data, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(data, f)
    return path


@pytest.fixture(autouse=True)
def force_full_unpickling(monkeypatch):
    """What an attacker (or a user following an old workaround) may have set in the environment."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def refused(path: Path, key: str) -> str:
    """The start of the error for crafted file ``path`` read for ``key``."""
    reasons = "(cannot be read with weights_only|refers to)"
    return rf"{re.escape(key)}: Checkpoint '{re.escape(str(path))}' {reasons}"


def test_the_payload_runs_when_torch_load_is_left_to_its_default(tmp_path):
    """The crafted files are real attacks: torch.load without weights_only, under the variable, runs them."""
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(write_crafted(tmp_path, "weights.pt"))
    assert (tmp_path / "ran").is_dir()


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_model_weights_through_the_checkpointer_never_run_code(tmp_path, name):
    path = write_crafted(tmp_path, name)
    checkpointer = AtomicCheckpointer(nn.Linear(3, 2), save_dir=str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="^" + refused(path, "MODEL.WEIGHTS")):
        checkpointer.resume_or_load(str(path), resume=False)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_resume_from_a_crafted_last_checkpoint_never_runs_code(tmp_path, name):
    path = write_crafted(tmp_path, name)
    (tmp_path / "last_checkpoint").write_text(name)
    checkpointer = AtomicCheckpointer(nn.Linear(3, 2), save_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="^" + refused(path, "--resume")):
        checkpointer.resume_or_load("", resume=True)
    assert not (tmp_path / "ran").exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("datasets"))


def test_trainer_model_weights_without_extension_never_run_code(data_root, tmp_path):
    path = write_crafted(tmp_path, "weights")
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path / "out")
    cfg.MODEL.WEIGHTS = str(path)
    trainer = Trainer(cfg)
    with pytest.raises(CheckpointError, match="^" + refused(path, "MODEL.WEIGHTS")):
        trainer.resume_or_load(resume=False)
    assert not (tmp_path / "ran").exists()


def test_pycls_pyth_weights_load_with_their_names_matched(tmp_path):
    """A genuine .pyth (pycls: ``model_state``) still loads, now weights-only."""
    model = nn.Sequential(nn.Linear(3, 2))
    torch.save({"model_state": {"0.weight": torch.ones(2, 3), "0.bias": torch.full((2,), 2.0)}, "epoch": 3},
               tmp_path / "w.pyth")
    AtomicCheckpointer(model).load(str(tmp_path / "w.pyth"))
    assert torch.equal(model[0].weight, torch.ones(2, 3))
    assert torch.equal(model[0].bias, torch.full((2,), 2.0))


# ---- the tools --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_export_student_never_runs_code(tmp_path, capsys, name):
    path = write_crafted(tmp_path, name)
    config = tmp_path / "distiller.yaml"
    config.write_text(tiny_stages(tmp_path, "RetinaNet").dump())
    tool = load_script(REPO / "tools" / "export_student.py", "export_student_tool")
    for fmt in ("pth", "onnx"):
        output = str(tmp_path / "student")
        assert tool.main(["--config-file", str(config), "--checkpoint", str(path), "--output", output,
                          "--format", fmt]) == 1
        assert re.search(refused(path, "--checkpoint"), capsys.readouterr().err)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "student").exists()


@pytest.mark.parametrize("name", ["weights.pth", "weights"])
def test_convert_torchvision_resnet_never_runs_code(tmp_path, capsys, name):
    path = write_crafted(tmp_path, name)
    tool = load_script(REPO / "tools" / "convert_torchvision_resnet.py", "convert_torchvision_resnet_tool")
    assert tool.main([str(path), str(tmp_path / "r.pkl")]) == 1
    assert re.search(refused(path, "source"), capsys.readouterr().err)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "r.pkl").exists()


# ---- train_net.py --eval-only ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_config(data_root, tmp_path_factory) -> Path:
    """A tiny RetinaNet YAML evaluating synthetic_dior_test (64 px images)."""
    folder = tmp_path_factory.mktemp("config")
    cfg = tiny_trainer_config("RetinaNet", "synthetic_dior_trainval", folder)
    cfg.DATASETS.TEST = ("synthetic_dior_test",)
    path = folder / "retinanet.yaml"
    path.write_text(cfg.dump())
    return path


def eval_only(data_root: Path, config: Path, out: Path, weights: str):
    """train_net.py --eval-only with the variable set; returns (return code, output)."""
    assert environment(data_root)["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # force_full_unpickling's
    proc = run_train_net(data_root, config, out, ["MODEL.WEIGHTS", weights], flags=["--eval-only"],
                         check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["weights.pth", "weights.pt", "weights.pyth", "weights", "weights.pkl"])
def test_eval_only_never_runs_code(data_root, detector_config, tmp_path, name):
    path = write_crafted(tmp_path, name)
    code, output = eval_only(data_root, detector_config, tmp_path / "out", str(path))
    assert code != 0 and re.search(refused(path, "MODEL.WEIGHTS"), output), output[-3000:]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out" / "eval_results.json").exists()


@pytest.mark.slow
def test_eval_only_refuses_weights_of_another_model(data_root, detector_config, tmp_path):
    torch.save({"model": nn.Linear(3, 2).state_dict()}, tmp_path / "linear.pth")
    code, output = eval_only(data_root, detector_config, tmp_path / "out", str(tmp_path / "linear.pth"))
    total = len(build_model(tiny_trainer_config("RetinaNet", "unused", tmp_path)).state_dict())
    expected = f"MODEL.WEIGHTS: '{tmp_path / 'linear.pth'}' fills 0 of {total} tensors of the RetinaNet"
    assert code != 0 and expected in output, output[-3000:]
    assert "Start inference" not in output and not (tmp_path / "out" / "eval_results.json").exists()


@pytest.mark.slow
def test_eval_only_refuses_empty_model_weights(data_root, detector_config, tmp_path):
    code, output = eval_only(data_root, detector_config, tmp_path / "out", "")
    assert code != 0 and "--eval-only needs weights to evaluate: MODEL.WEIGHTS is empty" in output
    assert not (tmp_path / "out" / "eval_results.json").exists()


@pytest.mark.slow
def test_eval_only_evaluates_a_checkpoint_that_fills_the_model(data_root, detector_config, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_trainer_config("RetinaNet", "unused", tmp_path))
    torch.save({"model": model.state_dict(), "iteration": 0}, tmp_path / "model_final.pth")
    code, output = eval_only(data_root, detector_config, tmp_path / "out", str(tmp_path / "model_final.pth"))
    assert code == 0, output[-3000:]
    with open(tmp_path / "out" / "eval_results.json") as f:
        assert "AP" in json.load(f)["bbox"]


# ---- load_for_evaluation, in process --------------------------------------------------------------------
def test_load_for_evaluation_counts_the_tensors_a_partial_match_fills(tmp_path):
    model = build_model(tiny_cfg("RetinaNet"))
    other = build_model(tiny_cfg("RetinaNet", ["MODEL.FPN.OUT_CHANNELS", 64])).state_dict()
    torch.save({"model": other}, tmp_path / "wide.pth")
    mine = model.state_dict()
    same_shape = sum(other[k].shape == v.shape for k, v in mine.items() if k in other)
    assert 0 < same_shape < len(mine)  # the backbone's ResNet fits, the FPN and head do not
    with pytest.raises(ValueError, match=rf"fills {same_shape} of {len(mine)} tensors of the RetinaNet"):
        load_for_evaluation(model, str(tmp_path / "wide.pth"), "MODEL.WEIGHTS")


@pytest.mark.parametrize("stage", ["DS2D2Amplifier", "DS2D2Distiller"])
def test_load_for_evaluation_takes_the_checkpoints_of_stages_2_and_3(tmp_path, stage):
    """--eval-only on a stage-2 or stage-3 config with its own checkpoint: every saved tensor fits (the frozen
    teacher and amplifier head are rebuilt from their files, not from MODEL.WEIGHTS)."""
    cfg = tiny_stages(tmp_path, "RetinaNet")
    if stage == "DS2D2Amplifier":
        cfg = tiny_cfg("RetinaNet", ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.META_ARCHITECTURE", stage,
                                     "MODEL.DS2D2.TEACHER_WEIGHTS", str(tmp_path / "teacher.pth")])
    model = build_model(cfg)
    trained = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": trained}, tmp_path / "model_final.pth")
    load_for_evaluation(model, str(tmp_path / "model_final.pth"), "MODEL.WEIGHTS")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_load_for_evaluation_takes_a_checkpoint_written_under_ddp(tmp_path):
    """Every name starting with ``module.``, as code that saves a DistributedDataParallel model's own
    state_dict writes it (ds2d2's runs never do: fvcore's Checkpointer saves the model inside DDP)."""
    model = build_model(tiny_cfg("GeneralizedRCNN"))
    trained = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": {f"module.{k}": v for k, v in trained.items()}}, tmp_path / "model_final.pth")
    load_for_evaluation(model, str(tmp_path / "model_final.pth"), "MODEL.WEIGHTS")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
