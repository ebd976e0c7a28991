"""GPU smoke test (skipped without CUDA): DS2D2 distils both detector families on CUDA with AMP through the
real Trainer, data loader and checkpointer, and resumes; the CUDA operators agree with the CPU ones; both
rotated detectors train, resume and infer on CUDA as on the CPU.

``DS2D2_SMOKE_DEVICE=cpu`` runs the same test on the CPU without AMP (Detectron2's AMPTrainer needs CUDA), to
check the test itself on a machine without a GPU.
"""
import os

import cv2
import pytest
import torch
from detectron2.modeling import build_model

from conftest import tiny_stages
from ds2d2 import disw_map, dwt, explicit_loss
from ds2d2.engine import Trainer
from ds2d2.train_loop import CheckedAMPTrainer
from reliability_setup import DIOR, TINY_TRAINING, register_in_process, write_data
from rotated_setup import DETECTORS as ROTATED_DETECTORS
from rotated_setup import register_oriented_dataset, write_oriented_dataset
from rotated_setup import tiny_config as rotated_tiny_config

DEVICE = os.environ.get("DS2D2_SMOKE_DEVICE", "cuda")
AMP = DEVICE == "cuda"
pytestmark = [
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.usefixtures("restore_catalogs"),
]
DS2D2_TERMS = ("loss_ds2d2_ex_low", "loss_ds2d2_ex_high", "loss_ds2d2_im_full", "loss_ds2d2_im_high")


def smoke_config(tmp_path, detector: str, max_iter: int):
    dataset = register_in_process(write_data(tmp_path / "data"))
    opts = [*DIOR, *TINY_TRAINING, "MODEL.DEVICE", DEVICE, "SOLVER.AMP.ENABLED", AMP]
    # The random tiny teacher's features are large (explicit loss ~1e5): at weight 1 the fp16 gradients
    # overflow and the grad scaler skips every step of so short a run. 1e-5 is the authors' RetinaNet value.
    opts += ["SOLVER.MAX_ITER", max_iter]
    opts += ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", 1e-5, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", 1e-5]
    (tmp_path / "stages").mkdir()
    cfg = tiny_stages(tmp_path / "stages", detector, teacher_opts=DIOR, student_opts=opts)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_distiller_trains_and_resumes_with_amp(tmp_path, detector):
    cfg = smoke_config(tmp_path, detector, max_iter=6)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert not AMP or isinstance(trainer._trainer, CheckedAMPTrainer)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.detach().clone() for k, v in model.student.named_parameters()}
    if AMP:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    history = trainer.storage.histories()
    for term in DS2D2_TERMS:
        values = [v for v, _ in history[term].values()]
        assert len(values) == 6 and all(torch.isfinite(torch.tensor(values))), (term, values)
    assert next(model.teacher.parameters()).device.type == DEVICE and not model.teacher.training
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    changed = [k for k, v in model.student.named_parameters() if not torch.equal(v, student_before[k])]
    assert any(k.startswith("backbone.bottom_up.") for k in changed)
    assert any(k.startswith(("head.", "roi_heads.")) for k in changed)
    if AMP:
        print(f"\n{detector}: peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")

    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), map_location="cpu", weights_only=True)
    assert set(k.split(".")[0] for k in state["model"]) == {"student", "adapters"}
    if AMP:
        assert "grad_scaler" in state["trainer"]["_trainer"]

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 8
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    assert resumed.iter == 8


def test_cuda_operators_match_cpu():
    generator = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 8, s, s, generator=generator) for s in (32, 16, 7)]
    teacher = [torch.randn(2, 8, s, s, generator=generator) for s in (32, 16, 7)]
    boxes = [torch.tensor([[3.0, 5.0, 60.0, 40.0], [100.0, 100.0, 120.0, 127.0]]), torch.zeros(0, 4)]
    on = [(t.to(DEVICE), u.to(DEVICE)) for t, u in zip(student, teacher)]
    expected = explicit_loss(student, teacher, boxes, (128, 128))
    with torch.autocast(DEVICE, dtype=torch.float16 if AMP else torch.bfloat16):
        got = explicit_loss([s for s, _ in on], [t for _, t in on], [b.to(DEVICE) for b in boxes], (128, 128))
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32 and torch.isfinite(a)
        torch.testing.assert_close(a.cpu(), b, rtol=0.02, atol=1e-3)
    on_device = disw_map([b.to(DEVICE) for b in boxes], (128, 128), (16, 16))
    torch.testing.assert_close(on_device.cpu(), disw_map(boxes, (128, 128), (16, 16)))
    low, high = dwt(student[2].to(DEVICE))
    ref_low, ref_high = dwt(student[2])
    torch.testing.assert_close(low.cpu(), ref_low)
    torch.testing.assert_close(high.cpu(), ref_high)


@pytest.mark.parametrize("config", ROTATED_DETECTORS)
def test_rotated_detector_trains_resumes_and_infers(tmp_path, config):
    """Rotated RetinaNet and Rotated Faster R-CNN (RRPN + RROIHeads: rotated IoU, NMS and ROIAlignRotated on
    the device) train with AMP through the Trainer and resume; their detections on the device are the CPU's
    with the same weights (top scores to float rounding)."""
    dataset = register_oriented_dataset(tmp_path / "images")
    opts = [*TINY_TRAINING, "MODEL.DEVICE", DEVICE, "SOLVER.AMP.ENABLED", AMP, "SOLVER.MAX_ITER", 4,
            "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path / "out")]
    cfg = rotated_tiny_config(config, opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = [v for v, _ in trainer.storage.histories()["total_loss"].values()]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))), losses
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.bottom_up.") for k in changed)
    assert any(k.startswith(("head.", "roi_heads.")) for k in changed)

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 6
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert resumed.iter == 6

    model = resumed.model.eval()
    record = write_oriented_dataset(tmp_path / "test", num_images=1)[0]
    image = torch.as_tensor(cv2.imread(record["file_name"])).permute(2, 0, 1).float()
    cpu_cfg = cfg.clone()
    cpu_cfg.MODEL.DEVICE = "cpu"
    on_cpu = build_model(cpu_cfg).eval()
    on_cpu.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours = model([{"image": image}])[0]["instances"]
        reference = on_cpu([{"image": image}])[0]["instances"]
    assert ours.pred_boxes.tensor.device.type == DEVICE and len(ours) > 0
    top = min(10, len(reference))
    torch.testing.assert_close(ours.scores[:top].cpu(), reference.scores[:top], rtol=1e-3, atol=1e-4)
