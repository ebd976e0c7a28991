"""Generic builders of tiny Detectron2/DS2D2 configs and random batches, shared by the tests."""
import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Sequence

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ds2d2.config import load_config

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str) -> ModuleType:
    """Import the script at ``path`` (e.g. ``REPO / "tools" / "export_student.py"``) as module ``name``,
    without running its ``main``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNTHETIC_CONFIGS = REPO / "configs" / "synthetic"

# Shrink the synthetic CPU configs further: ResNet-18, narrow FPN and heads, few proposals, every box scored.
TINY = {
    "RetinaNet": [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CLASSES", 3,
        "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
    ],
    "GeneralizedRCNN": [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    ],
}
BASE_YAML = {"RetinaNet": "Base-RetinaNet.yaml", "GeneralizedRCNN": "Base-RCNN-FPN.yaml"}


@pytest.fixture
def catalog(monkeypatch) -> None:
    """Empty Detectron2 dataset and metadata catalogs for one test (the real ones come back after it)."""
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Run a module's tiny models on one intra-op thread: on a few shared cores, more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_catalogs() -> Iterator[None]:
    """For tests that register dataset names (dior_* included): put Detectron2's catalogs back afterwards."""
    datasets, metadata = dict(DatasetCatalog), dict(MetadataCatalog)
    yield
    DatasetCatalog.clear()
    DatasetCatalog.update(datasets)
    MetadataCatalog.clear()
    MetadataCatalog.update(metadata)


def tiny_cfg(detector: str, opts: Sequence = ()) -> CfgNode:
    """Tiny CPU config of ``detector`` ("RetinaNet"/"GeneralizedRCNN") plus DS2D2's keys and ``opts``."""
    opts = [str(v) for v in TINY[detector]] + [str(v) for v in opts]
    cfg = load_config(str(SYNTHETIC_CONFIGS / BASE_YAML[detector]), opts, register=False)
    cfg.MODEL.DS2D2.DETECTOR = detector
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def random_batch(num_images: int = 2, size: int = 64, num_classes: int = 3, seed: int = 0) -> List[Dict]:
    """Detectron2 training inputs: uint8-range float images [3, size, size] with 1-4 random boxes each."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        corner = torch.rand(n, 2, generator=generator) * (size * 0.6)
        extent = torch.rand(n, 2, generator=generator) * (size * 0.3) + 6
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([corner, (corner + extent).clamp(max=size)], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (n,), generator=generator)
        image = torch.rand(3, size, size, generator=generator) * 255
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def tiny_stages(
    folder: Path, detector: str, teacher_opts: Sequence = (), student_opts: Sequence = (),
    teacher_detector: str = "",
) -> CfgNode:
    """Write a random tiny teacher (YAML + weights, FPN width 64; ``teacher_detector``, or ``detector``) and
    its amplifier checkpoint under ``folder``; return the distiller config (a ``detector`` student, FPN width
    32, every loss weight 1) that uses them."""
    teacher_cfg = tiny_cfg(teacher_detector or detector, ["MODEL.FPN.OUT_CHANNELS", 64, *teacher_opts])
    paths = {name: str(folder / name) for name in ("teacher.yaml", "teacher.pth", "amplifier.pth")}
    Path(paths["teacher.yaml"]).write_text(teacher_cfg.dump())
    torch.save({"model": build_model(teacher_cfg).state_dict()}, paths["teacher.pth"])
    amplifier_cfg = teacher_cfg.clone()
    amplifier_cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", "DS2D2Amplifier", "MODEL.DS2D2.TEACHER_WEIGHTS", paths["teacher.pth"]]
    )
    torch.save({"model": build_model(amplifier_cfg).state_dict()}, paths["amplifier.pth"])
    ds2d2_opts = [
        "MODEL.META_ARCHITECTURE", "DS2D2Distiller", "MODEL.DS2D2.TEACHER_CONFIG", paths["teacher.yaml"],
        "MODEL.DS2D2.TEACHER_WEIGHTS", paths["teacher.pth"],
        "MODEL.DS2D2.AMPLIFIER_WEIGHTS", paths["amplifier.pth"],
    ]
    for key in ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH"):
        ds2d2_opts += [f"MODEL.DS2D2.LOSS.{key}", 1.0]
    return tiny_cfg(detector, [*ds2d2_opts, *student_opts])


def assert_same_outputs(a: List[Dict], b: List[Dict]) -> None:
    """Two detectors' inference outputs on one batch hold the same (non-empty) detections, bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) > 0 and len(x) == len(y)
        assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.equal(x.scores, y.scores)
        assert torch.equal(x.pred_classes, y.pred_classes)


@pytest.fixture(scope="module")
def small_dior_root(tmp_path_factory) -> Path:
    """A data root with 8 synthetic DIOR-layout images of 64 px in synthetic_dior/ (one per test module)."""
    from ds2d2.data.synthetic import write_synthetic_dior

    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_dior(root / "synthetic_dior", num_images=8, seed=0, image_size=64)
    return root


def losses_then_shared_step(model: torch.nn.Module, batch: List[Dict]):
    """(losses, detection losses, DistillStep): a distiller's training losses on ``batch``, then its shared
    step recomputed from the same RNG state (seed 1), i.e. the tensors its terms saw."""
    with EventStorage():
        torch.manual_seed(1)
        losses = model(batch)
        torch.manual_seed(1)
        detection, step = model.shared_step(batch)
    return losses, detection, step


def assert_step_leaves_teacher(model: torch.nn.Module, losses: Dict, saved_prefixes: Sequence[str]) -> None:
    """An SGD step on the sum of ``losses`` gives the teacher no gradient and leaves it bit-identical; the
    distiller's state dict holds only tensors under ``saved_prefixes``."""
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(losses.values()).backward()
    optimizer.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(torch.equal(v, teacher[k]) for k, v in model.teacher.state_dict().items())
    assert all(k.startswith(tuple(saved_prefixes)) for k in model.state_dict())


def assert_terms_train_student_only(model: torch.nn.Module, batch: List[Dict], expected: set):
    """A distiller's distillation losses on ``batch`` are exactly ``expected``, finite and positive; their
    gradient reaches the student's backbone and never the implicit stream's amplifier head; an SGD step leaves
    the teacher as it was, and the state dict holds the student, adapters and terms only. Returns the
    DistillStep the terms saw."""
    losses, detection, step = losses_then_shared_step(model, batch)
    kd = {k: v for k, v in losses.items() if k not in detection}
    assert set(kd) == expected
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in kd.values()), kd
    sum(kd.values()).backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.backbone.parameters())
    implicit = model.terms["DS2D2Implicit"] if "DS2D2Implicit" in model.terms else None
    if implicit is not None and implicit.amplifier_head is not None:
        assert all(p.grad is None for p in implicit.amplifier_head.parameters())
    model.zero_grad()
    assert_step_leaves_teacher(model, losses, ("student.", "adapters.", "terms."))
    return step


class CrashAt(HookBase):
    """Raises before iteration ``at``, like a process that dies there."""

    def __init__(self, at: int):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("simulated crash")
