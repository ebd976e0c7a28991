#!/usr/bin/env python
"""Convert torchvision ImageNet ResNet weights (R-18, R-34, R-50, R-101) to a Detectron2 .pkl.

    python tools/convert_torchvision_resnet.py resnet18-f37072fd.pth pretrained/torchvision-R-18.pkl
    python tools/convert_torchvision_resnet.py resnet101-63fe2227.pth pretrained/torchvision-R-101.pkl

(the .pth is torchvision's file, e.g. from ``torchvision.models.resnet101(weights="IMAGENET1K_V1")`` on a
machine with internet access). Every DIOR/DOTA config, teachers included, starts from these files, as the
authors' backbones do; their base configs set INPUT.FORMAT RGB, torchvision's PIXEL_MEAN/PIXEL_STD and
RESNETS.STRIDE_IN_1X1 False (the stride in the 3x3 conv), which is how these weights were trained.
"""
import argparse
import pickle
import re
import sys
from typing import Dict, List, Optional

import torch

from ds2d2.checkpoint import atomic_write, read_checkpoint

_RULES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
    (r"\.bn(\d)\.", lambda m: f".conv{m.group(1)}.norm."),
]


def convert_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, "numpy.ndarray"]:  # noqa: F821
    """torchvision ResNet names -> Detectron2 ResNet names (numpy values); the classifier (fc) is dropped."""
    out = {}
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new = name
        for pattern, repl in _RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value.detach().cpu().numpy()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="torchvision ResNet state dict (.pth), read weights-only")
    parser.add_argument("output", help="Detectron2 .pkl to write")
    args = parser.parse_args(argv)
    try:
        state = read_checkpoint(args.source, "source")["model"]
    except (OSError, RuntimeError, ValueError) as e:
        print(f"convert_torchvision_resnet: error: {e}", file=sys.stderr)
        return 1
    converted = convert_state_dict(state.get("state_dict", state))
    weights = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    atomic_write(args.output, lambda f: pickle.dump(weights, f))
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
