"""Bad configs fail before the first iteration, naming the key and the value or file. The distiller's own
checks (teacher/amplifier files, depth, class count and list, wavelet, loss weights) are tested at build time
in test_distiller.py; here: dataset names, SOLVER.CHECKPOINT_MAX_TO_KEEP, and the whole train_net.py path for
two bad configs."""
import pytest

from ds2d2.engine import Trainer
from reliability_setup import (
    register_in_process,
    run_train_net,
    tiny_trainer_config,
    write_data,
    write_distiller_config,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize("key", ["TRAIN", "TEST"])
def test_unregistered_dataset_is_named_before_anything_is_built(data_root, tmp_path, monkeypatch, key):
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path)
    cfg.DATASETS[key] = ("dior_trainvall",)

    def build_model(cls, cfg):
        raise AssertionError("the model was built before the dataset names were checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    expected = rf"DATASETS.{key}: dataset 'dior_trainvall' is not registered \(did you mean 'dior_trainval'"
    with pytest.raises(ValueError, match=expected):
        Trainer(cfg)


@pytest.mark.parametrize("value", [-1, 1.5])
def test_bad_checkpoint_max_to_keep_is_named_before_building(data_root, tmp_path, monkeypatch, value):
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path)
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = value

    def build_model(cls, cfg):
        raise AssertionError("the model was built before SOLVER.CHECKPOINT_MAX_TO_KEEP was checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    with pytest.raises(ValueError, match=rf"SOLVER.CHECKPOINT_MAX_TO_KEEP must be an integer >= 0.*{value}"):
        Trainer(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, opts, expected",
    [
        (
            [],
            ["MODEL.DS2D2.TEACHER_WEIGHTS", "absent/teacher.pth"],
            "MODEL.DS2D2.TEACHER_WEIGHTS: checkpoint 'absent/teacher.pth' does not exist",
        ),
        (
            ["--eval-only"],
            ["DATASETS.TEST", ("no_such_set",)],
            "DATASETS.TEST: dataset 'no_such_set' is not registered",
        ),
    ],
    ids=["missing-teacher-weights", "eval-only-unregistered-test-set"],
)
def test_train_net_fails_before_the_first_iteration(data_root, tmp_path, flags, opts, expected):
    config = write_distiller_config(tmp_path, "RetinaNet")
    out = tmp_path / "out"
    proc = run_train_net(data_root, config, out, ["SOLVER.MAX_ITER", 4, *opts], flags=flags, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in output
    assert "Starting training" not in output and "Start inference" not in output
    assert not list(out.glob("*.pth")) and not (out / "metrics.json").exists()
