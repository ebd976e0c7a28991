"""torchvision ResNet-18/34/50/101 weights convert to Detectron2 names that fill the whole ResNet of every
DIOR/DOTA config (teachers included), and the converted trunk computes what torchvision's computes."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ds2d2.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomised_torchvision_resnet(depth: int) -> torch.nn.Module:
    """torchvision's ResNet with its own init and random (but sane) BN affine parameters and statistics."""
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return tv.eval()


def torchvision_res5(tv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


@pytest.mark.parametrize(
    "config, depth",
    [("DIOR/retinanet_R18.yaml", 18), ("DOTA/faster_rcnn_R34.yaml", 34), ("DIOR/faster_rcnn_R50.yaml", 50),
     ("DIOR/retinanet_R101.yaml", 101)],
)
def test_converted_weights_fill_the_config_resnet_and_compute_the_same(tmp_path, config, depth):
    tv = randomised_torchvision_resnet(depth)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools/convert_torchvision_resnet.py"), str(tmp_path / "tv.pth"),
         str(tmp_path / "r.pkl")],
        check=True,
    )
    cfg = load_config(os.path.join(ROOT, "configs", config), register=False)
    assert cfg.MODEL.WEIGHTS == f"pretrained/torchvision-R-{depth}.pkl"
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(tmp_path / "r.pkl"))
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(bottom_up.res5[1].conv2.norm.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(bottom_up.res3[0].shortcut.weight, tv.layer2[0].downsample[0].weight)
    resnet_keys = {k for k in model.state_dict() if k.startswith("backbone.bottom_up.")}
    loaded = {"backbone.bottom_up." + k for k in tv.state_dict() if not k.startswith("fc.")}
    assert len(resnet_keys) == len({k for k in loaded if not k.endswith("num_batches_tracked")})

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = torchvision_res5(tv, x)
        got = bottom_up(x)["res5"]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
