#!/usr/bin/env python
r"""Export a trained detector: the student of a distiller (stage 3) checkpoint, or a plain RetinaNet / Faster
R-CNN checkpoint (rotated ones too), as a plain Detectron2 checkpoint (``--format pth``, the default) or as
ONNX (``--format onnx``) that ``ds2d2_onnx.OnnxDetector`` / tools/predict_onnx.py run with onnxruntime,
without torch.

    python tools/export_student.py --config-file configs/synthetic/retinanet_R50_to_R18.yaml \
        --checkpoint output/synthetic/retinanet_R50_to_R18/model_final.pth --output student.pth
    python tools/export_student.py --format onnx --config-file configs/synthetic/retinanet_R50_to_R18.yaml \
        --checkpoint output/demo/ds2d2/model_final.pth --output student.onnx [--input-size 128 128]

pth: distiller (DS2D2Distiller, whatever its MODEL.DS2D2.TERMS) configs only; the output loads with no missing
or unexpected keys into the detector built from the same config with MODEL.META_ARCHITECTURE set to
MODEL.DS2D2.DETECTOR:
    python train_net.py --config-file CFG --eval-only \
        MODEL.META_ARCHITECTURE RetinaNet MODEL.WEIGHTS student.pth
onnx: any distiller or detector config of this project, the rotated detectors' included (their exports give
boxes cx, cy, w, h, angle). The file holds the graph, the weights and the test settings (resize, classes,
thresholds). Without --input-size the height and width are dynamic; with it, every image is padded to that
size (multiples of 32; see docs/deploy.md; a Rotated Faster R-CNN is exported with a dynamic size only).
"""
import argparse
import sys
from typing import List, Optional

from ds2d2.config import load_config
from ds2d2.deploy import export_onnx
from ds2d2.export import export_student


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="the distiller's (or detector's) YAML config")
    parser.add_argument("--checkpoint", required=True, help="its checkpoint, written by train_net.py")
    parser.add_argument("--output", required=True, help="where to write the student (.pth or .onnx)")
    parser.add_argument("--format", choices=("pth", "onnx"), default="pth", help="pth (default) or onnx")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                        help="onnx: fixed input size (default: dynamic height and width)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.input_size is not None and args.format != "onnx":
        parser.error("--input-size applies to --format onnx only")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts, register=False)
    try:
        if args.format == "onnx":
            info = export_onnx(cfg, args.checkpoint, args.output, args.input_size, args.config_file)
        else:
            state = export_student(cfg, args.checkpoint, args.output)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"export_student: error: {e}", file=sys.stderr)
        return 1
    if args.format == "onnx":
        size = "dynamic" if info.input_size is None else "x".join(map(str, info.input_size))
        print(f"wrote {info.family} ({info.num_classes} classes, input size {size}) as ONNX to {args.output}")
    else:
        print(f"wrote {len(state)} student tensors ({cfg.MODEL.DS2D2.DETECTOR}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
