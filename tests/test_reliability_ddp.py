"""Two CPU processes over gloo: train_net.py --num-gpus 2 trains and evaluates a distiller under DDP; only
rank 0 writes; student weights stay equal on both ranks (averaged gradients) and the frozen teacher and
amplifier are out of DDP and equal to their files on every rank. GPU jobs still use Detectron2's launch."""
import json
import os
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ds2d2.engine import Trainer
from ds2d2.launch import launch
from reliability_setup import ROOT, run_train_net, write_data, write_distiller_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("datasets"))


@pytest.mark.slow
def test_train_net_two_cpu_processes(data_root, tmp_path):
    config = write_distiller_config(tmp_path, "RetinaNet")
    out = tmp_path / "out"
    opts = ["SOLVER.MAX_ITER", 3, "DATASETS.TEST", ("synthetic_dior_test",)]
    proc = run_train_net(data_root, config, out, opts, flags=["--num-gpus", 2, "--dist-url", "auto"])
    assert "World size: 2" in proc.stdout + proc.stderr

    rank0, rank1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "Saving checkpoint to" in rank0 and "Saving checkpoint to" not in rank1
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert iterations == sorted(set(iterations)), "metrics written by more than one process"

    # the evaluation gathered the predictions of both ranks: every test image is in rank 0's results
    test_ids = (data_root / "synthetic_dior" / "ImageSets" / "Main" / "test.txt").read_text().split()
    results = out / "inference" / "synthetic_dior_test" / "coco_instances_results.json"
    predictions = json.loads(results.read_text())
    assert len(test_ids) > 1 and {p["image_id"] for p in predictions} == set(test_ids)
    assert "mAP50" in json.loads((out / "eval_results.json").read_text())["voc_ap50"]


class RecordingTrainer(Trainer):
    """Saves what each rank holds after training to OUTPUT_DIR/rank<r>.pth."""

    def train(self):
        super().train()
        ddp = self.model
        model = ddp.module
        torch.save(
            {
                "ddp": isinstance(ddp, DistributedDataParallel),
                "ddp_params": [name for name, _ in model.named_parameters()],
                "params": {name: p.detach() for name, p in model.named_parameters()},
                "teacher": model.teacher.state_dict(),
                "teacher_training": any(m.training for m in model.teacher.modules()),
                "amplifier": model.terms["DS2D2Implicit"].amplifier_head.state_dict(),
            },
            os.path.join(self.cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.pth"),
        )


def train_net_with_recording_trainer(argv):
    """train_net.main in each process, with RecordingTrainer as its Trainer."""
    sys.path.insert(0, str(ROOT))
    import train_net

    train_net.Trainer = RecordingTrainer
    train_net.main(default_argument_parser().parse_args(argv))


@pytest.mark.slow
def test_ranks_agree_and_frozen_models_stay_out_of_ddp(data_root, tmp_path, monkeypatch):
    config = write_distiller_config(tmp_path, "GeneralizedRCNN")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))  # read by ds2d2 in the spawned processes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--config-file", str(config), "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path / "out")]
    launch(train_net_with_recording_trainer, 2, dist_url="auto", args=(argv,), cpu=True)

    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    initial = torch.load(tmp_path / "out" / "model_0000001.pth", weights_only=True)["model"]
    teacher_file = torch.load(tmp_path / "teacher.pth", weights_only=True)["model"]
    amplifier_file = torch.load(tmp_path / "amplifier.pth", weights_only=True)["model"]
    for rank in ranks:
        assert rank["ddp"] and not rank["teacher_training"]
        assert all(name.startswith(("student.", "adapters.")) for name in rank["ddp_params"])
        for name, value in rank["teacher"].items():
            assert torch.equal(value, teacher_file[name]), name
        for name, value in rank["amplifier"].items():
            assert torch.equal(value, amplifier_file[f"detector.roi_heads.{name}"]), name
    for name, value in ranks[0]["params"].items():  # same update on both ranks although their batches differ
        assert torch.equal(value, ranks[1]["params"][name]), name
    trained = "student.roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(ranks[0]["params"][trained], initial[trained]), "the last iteration did nothing"


def test_gpu_jobs_go_to_detectron2_launch_unchanged(monkeypatch):
    calls = []
    monkeypatch.setattr("ds2d2.launch.detectron2_launch", lambda *args: calls.append(args))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    launch(print, 8, num_machines=2, machine_rank=1, dist_url="tcp://host:1234", args=("x",))
    assert calls == [(print, 8, 2, 1, "tcp://host:1234", ("x",), DEFAULT_TIMEOUT)]


def test_one_cpu_process_runs_in_place(monkeypatch):
    monkeypatch.setattr("ds2d2.launch.detectron2_launch", lambda *args: pytest.fail("not a GPU job"))
    seen = []
    launch(seen.append, 1, args=("ran",), cpu=True)
    assert seen == ["ran"]
