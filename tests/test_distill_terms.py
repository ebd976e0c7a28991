"""The distillation framework (ds2d2.distill): term selection from MODEL.DS2D2.TERMS, the shared step, and
the FitNet term against a direct computation (tiny models), its configs, and 2 train_net.py iterations."""
from typing import List

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, losses_then_shared_step, random_batch, tiny_stages
from ds2d2.config import load_config
from ds2d2.distill import DISTILL_TERM_REGISTRY
from kd_baseline_support import train_two_iterations

pytestmark = pytest.mark.usefixtures("single_torch_thread")
FITNET = ["MODEL.DS2D2.TERMS", "['FitNet']"]


def distiller(tmp_path, detector: str, opts: List[str]):
    torch.manual_seed(0)
    cfg = tiny_stages(tmp_path, detector)
    cfg.merge_from_list(opts)
    return build_model(cfg).train()


def test_every_method_is_registered():
    assert {"DS2D2Explicit", "DS2D2Implicit", "FitNet"} <= {name for name, _ in DISTILL_TERM_REGISTRY}


@pytest.mark.parametrize("terms", [["NoSuchTerm"], ["FitNet", "FitNet"]], ids=["unknown", "twice"])
def test_bad_term_list_is_named(tmp_path, terms):
    with pytest.raises(ValueError, match=r"MODEL.DS2D2.TERMS must list distinct terms out of \[.*'FitNet'"):
        distiller(tmp_path, "RetinaNet", ["MODEL.DS2D2.TERMS", str(terms)])


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_bad_fitnet_weight_is_named(tmp_path, weight):
    with pytest.raises(ValueError, match="MODEL.DS2D2.FITNET.WEIGHT must be a finite number > 0"):
        distiller(tmp_path, "RetinaNet", [*FITNET, "MODEL.DS2D2.FITNET.WEIGHT", weight])


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_fitnet_is_the_weighted_mse_of_the_adapted_student(tmp_path, detector):
    model = distiller(tmp_path, detector, [*FITNET, "MODEL.DS2D2.FITNET.WEIGHT", 0.3])
    assert list(model.terms) == ["FitNet"]
    batch = random_batch()
    losses, detection, step = losses_then_shared_step(model, batch)
    assert set(losses) == set(detection) | {"loss_fitnet"}
    expected = 0.0
    for level in model.in_features:  # every student FPN level by default
        adapted = model.adapters[level](step.student_feats[level])
        expected += ((adapted - step.teacher_feats[level]) ** 2).mean().item()
    torch.testing.assert_close(losses["loss_fitnet"], torch.tensor(0.3 * expected), rtol=1e-5, atol=0.0)
    # gradients reach the student and its adapter, never the teacher; the checkpoint holds no teacher tensor
    losses["loss_fitnet"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.adapters[model.in_features[0]].weight.grad is not None
    assert all(k.startswith(("student.", "adapters.")) for k in model.state_dict())


def test_terms_with_zero_weights_are_not_built_and_need_no_files(tmp_path):
    opts = ["MODEL.DS2D2.LOSS.IMPLICIT_FULL", 0.0, "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", 0.0,
            "MODEL.DS2D2.AMPLIFIER_WEIGHTS", str(tmp_path / "absent.pth")]
    model = distiller(tmp_path, "GeneralizedRCNN", opts)
    assert list(model.terms) == ["DS2D2Explicit"]


def test_teacher_bands_are_computed_once_per_step(tmp_path, monkeypatch):
    import ds2d2.distill.base as base

    calls = []
    original = base.dwt
    monkeypatch.setattr(base, "dwt", lambda x, wave: calls.append(x.shape) or original(x, wave))
    model = distiller(tmp_path, "RetinaNet", [])
    with EventStorage():
        model(random_batch())
    levels = set(model.in_features) | set(model.teacher_family.levels)
    assert len(calls) == len(levels)  # shared by the explicit and the high-frequency implicit streams


FITNET_CONFIGS = [
    f"configs/{d}/baselines/{det}_R101_to_R18_fitnet.yaml" for d in ("DIOR", "DOTA")
    for det in ("retinanet", "faster_rcnn")
] + [f"configs/synthetic/baselines/{det}_R50_to_R18_fitnet.yaml" for det in ("retinanet", "faster_rcnn")]


@pytest.mark.parametrize("path", FITNET_CONFIGS)
def test_fitnet_configs_run_fitnet_alone_at_the_terms_default(path):
    cfg = load_config(str(REPO / path), register=False)
    assert list(cfg.MODEL.DS2D2.TERMS) == ["FitNet"]
    assert cfg.MODEL.DS2D2.FITNET.WEIGHT == 1.0
    assert cfg.OUTPUT_DIR == "output/" + path[len("configs/"):-len(".yaml")]


@pytest.mark.parametrize("detector, config", [
    ("RetinaNet", "configs/synthetic/baselines/retinanet_R50_to_R18_fitnet.yaml"),
    ("GeneralizedRCNN", "configs/synthetic/baselines/faster_rcnn_R50_to_R18_fitnet.yaml"),
])
def test_train_net_runs_fitnet_and_exports_the_student(small_dior_root, tmp_path, detector, config):
    # student FPN 32 wide, teacher 64: the shared adapter is trained and saved beside the student
    state = train_two_iterations(small_dior_root, tmp_path, config, detector, student_width=32, term="FitNet",
                                 shared=("adapters.",))
    assert any(k.startswith("adapters.") for k in state)
