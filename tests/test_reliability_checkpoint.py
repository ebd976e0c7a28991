"""Checkpoint files: a SIGKILL while writing leaves the previous file intact, bad files are reported by name
on --resume, and neither .pth nor Detectron2 .pkl files can run code when they are read."""
import multiprocessing
import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch
from torch import nn

from ds2d2.checkpoint import (
    AtomicCheckpointer,
    CheckpointError,
    MissingCheckpointError,
    atomic_path,
    atomic_write,
    load_state_strictly,
    read_checkpoint,
)


def write_forever(path: str) -> None:
    def slow(f):
        while True:
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.005)

    atomic_write(path, slow)


def test_sigkill_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last_checkpoint"
    atomic_write(str(target), lambda f: f.write(b"model_0000001.pth"))
    child = multiprocessing.get_context("fork").Process(target=write_forever, args=(str(target),))
    child.start()
    deadline = time.time() + 60
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".last_checkpoint.*.tmp")):
        assert time.time() < deadline and child.is_alive(), "the child never started writing"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)  # mid-write
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert target.read_text() == "model_0000001.pth"
    assert [p.name.startswith(".last_checkpoint.") for p in tmp_path.iterdir() if p != target] == [True]


def test_failed_write_leaves_no_file(tmp_path):
    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(tmp_path / "model_final.pth"), fail)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path):
    """A checkpointer of a small model that saved model_0000001.pth, then model_0000003.pth."""
    checkpointer = AtomicCheckpointer(nn.Linear(3, 2), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    checkpointer.save("model_0000003", iteration=3)
    return checkpointer


def test_save_writes_the_file_then_the_tag(saved, tmp_path):
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert read_checkpoint(str(tmp_path / "model_0000003.pth"))["iteration"] == 3
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth"]  # no temporary file left


def test_truncated_checkpoint_on_resume_is_named_with_a_way_out(saved, tmp_path):
    path = tmp_path / "model_0000003.pth"
    path.write_bytes(path.read_bytes()[:200])
    expected = r"model_0000003.pth' cannot be read; it is truncated or corrupt .*\['model_0000001.pth'\]"
    with pytest.raises(CheckpointError, match=expected):
        saved.resume_or_load("", resume=True)


def test_tag_naming_a_missing_checkpoint_is_reported(saved, tmp_path):
    (tmp_path / "model_0000003.pth").unlink()
    expected = "last_checkpoint' names 'model_0000003.pth', which does not exist"
    with pytest.raises(CheckpointError, match=expected):
        saved.resume_or_load("", resume=True)


class RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for arbitrary code in a crafted file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pth_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"weight": torch.ones(2)}, "extra": RunsCode(marker)}, tmp_path / "crafted.pth")
    expected = "crafted.pth' cannot be read with weights_only=True.*posix.mkdir"
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(str(tmp_path / "crafted.pth"))
    assert not marker.exists()


def test_pkl_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "crafted.pkl", "wb") as f:
        pickle.dump({"model": RunsCode(marker), "__author__": "someone"}, f)
    with pytest.raises(CheckpointError, match="crafted.pkl' refers to 'posix.mkdir'"):
        read_checkpoint(str(tmp_path / "crafted.pkl"))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_detectron2_pkl_of_arrays_loads(tmp_path, protocol):
    model = nn.Linear(3, 2)
    arrays = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.array([1, 2], np.float32)}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    AtomicCheckpointer(model).load(str(tmp_path / "zoo.pkl"))
    assert torch.equal(model.weight.detach(), torch.from_numpy(arrays["weight"]))
    assert torch.equal(model.bias.detach(), torch.tensor([1.0, 2.0]))


def test_atomic_path_renames_only_a_finished_file(tmp_path):
    target = tmp_path / "sub" / "model.onnx"
    for durable in (True, False):
        with atomic_path(str(target), durable=durable) as tmp:
            assert not target.exists() or target.read_bytes() == b"first"
            with open(tmp, "wb") as f:
                f.write(b"first")
        assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="export failed"):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("export failed")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]  # no temporary file left


def test_read_checkpoint_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        read_checkpoint("", "MODEL.WEIGHTS")
    missing = str(tmp_path / "absent.pth")
    expected = r"--weights: checkpoint '.*absent.pth' does not exist"
    with pytest.raises(MissingCheckpointError, match=expected) as e:
        read_checkpoint(missing, "--weights")
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "bad.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"^--weights: Checkpoint '.*bad.pth' cannot be read"):
        read_checkpoint(str(tmp_path / "bad.pth"), "--weights")


def test_load_state_strictly_names_missing_unexpected_and_mis_shaped_tensors():
    model = nn.Linear(3, 2)
    good = {"model": {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}}
    load_state_strictly(model, good, "--weights", "w.pth")
    assert torch.equal(model.bias, torch.ones(2))
    prefixed = {"model": {"student.weight": torch.zeros(2, 3), "student.bias": torch.ones(2),
                          "teacher.x": torch.ones(1)}}
    load_state_strictly(model, prefixed, "--weights", "w.pth", prefix="student.")
    bad = {"model": {"weight": torch.zeros(2, 4), "extra": torch.ones(1)}}
    expected = (r"--weights: weights in 'w.pth' do not fit the Linear .*shape mismatch: weight "
                r"\(file \(2, 4\), model \(2, 3\)\).*1 tensors missing from the file, e.g. \['bias'\].*"
                r"1 unexpected tensors, e.g. \['extra'\]")
    with pytest.raises(ValueError, match=expected):
        load_state_strictly(model, bad, "--weights", "w.pth")
