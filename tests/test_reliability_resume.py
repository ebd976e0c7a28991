"""Crash and resume: a train_net.py process killed with SIGKILL and restarted with --resume ends with the
weights, optimizer state and schedule of an uninterrupted run; Faster R-CNN's random sampling repeats too."""
import json
import signal
import subprocess
import time

import pytest
import torch

from conftest import CrashAt
from ds2d2.engine import Trainer
from reliability_setup import (
    ROOT,
    environment,
    register_in_process,
    run_train_net,
    tiny_trainer_config,
    train_net_command,
    write_data,
    write_distiller_config,
)

pytestmark = pytest.mark.slow
MAX_ITER = ["SOLVER.MAX_ITER", 6]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("datasets"))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tree(a, b, where=""):
    """Equal nested dicts/lists of tensors and numbers. Tensors to 1e-5 relative: CPU kernels may sum in
    another order when buffers sit at other memory alignments in another process (seen: 1e-10 differences in
    a momentum buffer, weights bitwise equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def start_train_net(data_root, config, output) -> subprocess.Popen:
    """train_net.py in the background; its stderr goes to ``output``.stderr."""
    with open(f"{output}.stderr", "w") as stderr:
        return subprocess.Popen(
            train_net_command(config, output, MAX_ITER), env=environment(data_root), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )


def kill_after_first_checkpoint(data_root, config, output) -> int:
    """Start train_net.py, SIGKILL it once OUTPUT_DIR/last_checkpoint exists; the iteration it names."""
    proc = start_train_net(data_root, config, output)
    tag = output / "last_checkpoint"
    try:
        while not tag.exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return load(output / tag.read_text().strip())["iteration"]


def test_sigkilled_distiller_resumes_exactly(data_root, tmp_path):
    config = write_distiller_config(tmp_path, "RetinaNet")
    full = start_train_net(data_root, config, tmp_path / "full")  # uninterrupted, in parallel

    crashed = tmp_path / "crashed"
    saved_iter = kill_after_first_checkpoint(data_root, config, crashed)
    assert not (crashed / "model_final.pth").exists()
    assert full.wait(timeout=600) == 0, (tmp_path / "full.stderr").read_text()[-3000:]
    proc = run_train_net(data_root, config, crashed, MAX_ITER, flags=["--resume"])
    log = proc.stdout + proc.stderr
    assert f"Starting training from iteration {saved_iter + 1}" in log

    resumed = sorted(p.name for p in crashed.glob("model_*.pth") if load(p)["iteration"] > saved_iter)
    assert "model_final.pth" in resumed
    for name in resumed:  # everything the resumed run saved equals the uninterrupted run's file
        a, b = load(tmp_path / "full" / name), load(crashed / name)
        assert all(k.startswith(("student.", "adapters.")) for k in a["model"])  # no frozen teacher inside
        assert a["trainer"]["_trainer"]["optimizer"]["state"], "momentum buffers must be saved"
        assert set(a["trainer"]["hooks"]) == {"LRScheduler"}
        assert set(a["trainer"]["loss_normalizers"]) == {"student"}  # RetinaNet's EMA, outside state_dict
        assert_same_tree(a, b, name)  # weights, momentum, lr, scheduler, iteration, seed, EMA normaliser

    metrics = [json.loads(line) for line in (crashed / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 5


def test_faster_rcnn_random_sampling_repeats_after_resume(data_root, tmp_path, single_torch_thread):
    """In process: 4 iterations straight == a run that crashes before iteration 2, then a new Trainer resumed
    from its checkpoint. Faster R-CNN samples anchors and RoIs from torch's global RNG, which
    ReseedEachIteration sets from (seed, iteration, rank) before every step."""
    dataset = register_in_process(data_root)

    def trainer(output):
        torch.manual_seed(0)  # the same initial weights
        opts = ["SOLVER.MAX_ITER", 4, "SEED", 3]
        return Trainer(tiny_trainer_config("GeneralizedRCNN", dataset, output, opts))

    straight = trainer(tmp_path / "straight")
    straight.resume_or_load(resume=False)
    straight.train()

    crashing = trainer(tmp_path / "split")
    crashing.register_hooks([CrashAt(2)])
    crashing.resume_or_load(resume=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    assert not (tmp_path / "split" / "model_final.pth").exists()

    resumed = trainer(tmp_path / "split")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    final = [load(tmp_path / run / "model_final.pth") for run in ("straight", "split")]
    assert_same_tree(*final)
