"""A non-finite loss term stops training before the optimizer steps on it, names the term, and leaves the last
good checkpoint as OUTPUT_DIR/last_checkpoint."""
import math

import pytest
import torch
from detectron2.utils.events import get_event_storage

from ds2d2.engine import Trainer
from reliability_setup import register_in_process, tiny_trainer_config, write_data

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return register_in_process(write_data(tmp_path_factory.mktemp("datasets")))


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_term_is_named_and_last_checkpoint_kept(dataset, tmp_path, bad):
    trainer = Trainer(tiny_trainer_config("RetinaNet", dataset, tmp_path, ["SOLVER.MAX_ITER", 5]))
    trainer.resume_or_load(resume=False)
    model, optimizer = trainer.model, trainer.optimizer
    forward, step = model.forward, optimizer.step
    steps = []

    def poisoned_forward(batch):
        losses = forward(batch)
        if get_event_storage().iter == 3:
            losses["loss_box_reg"] = losses["loss_box_reg"] + bad
        return losses

    def counted_step(*args, **kwargs):
        steps.append(get_event_storage().iter)
        return step(*args, **kwargs)

    model.forward, optimizer.step = poisoned_forward, counted_step
    expected = rf"iteration 3: loss_box_reg = {bad} \(process 0\)\. Training stopped before the optimizer"
    with pytest.raises(FloatingPointError, match=expected) as e:
        trainer.train()
    assert "loss_cls" not in str(e.value)
    assert steps == [0, 1, 2], "the optimizer stepped on the non-finite loss"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists() and not (tmp_path / "model_final.pth").exists()
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["iteration"] == 1
