"""End to end through the command line: train a tiny RetinaNet and Faster R-CNN on synthetic DIOR-layout data,
evaluate, re-evaluate from the checkpoint, and resume an interrupted run with its optimizer state."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from ds2d2.data.synthetic import write_synthetic_dior

    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_dior(root / "synthetic_dior", num_images=12, seed=0)
    return root


def train_net(data_root, config, output, *args):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root))
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config)]
    cmd += [a for a in args if a.startswith("--")]
    cmd += [a for a in args if not a.startswith("--")]
    cmd += [
        "OUTPUT_DIR", str(output),
        "SOLVER.IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "config",
    ["configs/synthetic/retinanet_R18_student.yaml", "configs/synthetic/faster_rcnn_R18_student.yaml"],
)
def test_train_evaluate_and_resume(data_root, tmp_path, config):
    out = tmp_path / "out"
    train_net(data_root, config, out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    results = read_json(out / "eval_results.json")
    assert set(results) == {"bbox", "voc_ap50"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results["bbox"])
    assert "mAP50" in results["voc_ap50"]

    # --eval-only on the saved weights reproduces the evaluation done at the end of training
    eval_out = tmp_path / "eval"
    train_net(data_root, config, eval_out, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert read_json(eval_out / "eval_results.json") == results

    # the checkpoint holds the optimizer state; --resume continues at the saved iteration with it
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert (
        ckpt["iteration"] == 3 and ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    ), "optimizer state must be saved"
    log = train_net(
        data_root, config, out, "--resume", "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.CHECKPOINT_MAX_TO_KEEP", "1",
    )
    assert "Starting training from iteration 4" in log
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 7
    # the resumed run keeps only the newest periodic checkpoint it wrote; the first run's are left alone
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_0000007.pth", "model_final.pth"
    ]


def test_save_results_writes_whole_or_nothing(tmp_path, monkeypatch):
    """A script polling OUTPUT_DIR (the parallel accuracy benchmark) never sees half an eval_results.json: a
    write that fails midway leaves none, a finished one leaves only the whole file."""
    from types import SimpleNamespace

    from conftest import REPO, load_script

    script = load_script(REPO / "train_net.py", "train_net_for_save_results")
    cfg = SimpleNamespace(OUTPUT_DIR=str(tmp_path))
    results = {"synthetic_dior_val": {"bbox": {"AP50": 50.0}}}

    def half_then_fail(obj, f, **kwargs):
        f.write('{"synthetic_dior_val": ')
        raise OSError("disk full")

    monkeypatch.setattr(script.json, "dump", half_then_fail)
    with pytest.raises(OSError):
        script.save_results(cfg, results)
    assert not (tmp_path / "eval_results.json").exists()
    monkeypatch.undo()
    script.save_results(cfg, results)
    assert read_json(tmp_path / "eval_results.json") == results
    assert os.listdir(tmp_path) == ["eval_results.json"]
