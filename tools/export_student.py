#!/usr/bin/env python
r"""Export the student of a DS2D2 distiller (stage 3) checkpoint as a plain Detectron2 checkpoint.

    python tools/export_student.py --config-file configs/synthetic/retinanet_R50_to_R18.yaml \
        --checkpoint output/synthetic/retinanet_R50_to_R18/model_final.pth --output student.pth

The output loads with no missing or unexpected keys into the detector built from the same config with
MODEL.META_ARCHITECTURE set to MODEL.DS2D2.DETECTOR, e.g.
    python train_net.py --config-file CFG --eval-only \
        MODEL.META_ARCHITECTURE RetinaNet MODEL.WEIGHTS student.pth
"""
import argparse
import sys
from typing import List, Optional

from detectron2.config import get_cfg

from ds2d2 import add_ds2d2_config
from ds2d2.export import export_student


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="the distiller (DS2D2Distiller) YAML config")
    parser.add_argument("--checkpoint", required=True, help="its checkpoint, written by train_net.py")
    parser.add_argument("--output", required=True, help="where to write the student checkpoint (.pth)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    try:
        state = export_student(cfg, args.checkpoint, args.output)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"export_student: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(state)} student tensors ({cfg.MODEL.DS2D2.DETECTOR}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
