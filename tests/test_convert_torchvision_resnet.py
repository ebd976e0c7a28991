"""torchvision ResNet-18/34 weights convert to Detectron2 names that fill the whole ResNet of the student
configs."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ds2d2 import add_ds2d2_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("depth", [18, 34])
def test_converted_weights_fill_the_student_resnet(tmp_path, depth):
    tv = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools/convert_torchvision_resnet.py"), str(tmp_path / "tv.pth"),
         str(tmp_path / "r.pkl")],
        check=True,
    )
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, f"configs/DIOR/retinanet_R{depth}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "r.pkl"))
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(bottom_up.res5[1].conv2.norm.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(bottom_up.res3[0].shortcut.weight, tv.layer2[0].downsample[0].weight)
    resnet_keys = {k for k in model.state_dict() if k.startswith("backbone.bottom_up.")}
    loaded = {"backbone.bottom_up." + k for k in tv.state_dict() if not k.startswith("fc.")}
    assert len(resnet_keys) == len({k for k in loaded if not k.endswith("num_batches_tracked")})
