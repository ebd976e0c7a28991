#!/usr/bin/env python
r"""Detect objects in images with a ds2d2 ONNX export (tools/export_student.py --format onnx) through
onnxruntime: no torch, no Detectron2, no config file (needs onnxruntime, NumPy, Pillow, OpenCV).

    python tools/predict_onnx.py --onnx student.onnx --input image.jpg [more.jpg ...] --output out/

Writes, per image, OUTPUT/<name>_boxes.jpg (boxes scoring at least --draw-score, labelled) and
OUTPUT/<name>.json ({"image", "width", "height", "classes", "bbox_format", "detections": [{"bbox", "score",
"category_id", "category"}]}, boxes in the image's pixels, best first), <name> being the image's
file name without its extension. "bbox" is [x0, y0, x1, y1] ("bbox_format": "XYXY_ABS") for RetinaNet
and Faster R-CNN exports, and [cx, cy, w, h, angle] ("XYWHA_ABS": centre and size in pixels, the angle in
degrees counter-clockwise on screen, Detectron2's RotatedBoxes) for rotated ones (RotatedRetinaNet, Rotated
Faster R-CNN), drawn as turned rectangles. Two inputs with the same <name> (a/x.jpg and b/x.jpg, or x.jpg
and x.png) would overwrite each other's outputs: they are refused before anything is written; run them into
different --output folders. Every input's header is checked before the model runs (images are read by
ds2d2_onnx.image_io: one of more than --max-pixels pixels is refused from its header, a truncated or
undecodable one by name). For images far larger than the model's training images (a whole DOTA scene),
use tools/infer_large_image.py --onnx, which tiles them.
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "projects" / "DS2D2"))  # works uninstalled too

from ds2d2_onnx import (  # noqa: E402
    DEFAULT_MAX_PIXELS, DeployFileError, ImageReadError, OnnxDetector, image_size, read_image, save_detections
)
from ds2d2_onnx.cli_args import fraction, positive_int  # noqa: E402
from ds2d2_onnx.draw import bbox_format  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="the exported model (.onnx)")
    p.add_argument("--input", required=True, nargs="+", help="image file(s), with distinct file names")
    p.add_argument("--output", required=True, help="folder for <name>_boxes.jpg and <name>.json")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime threads, at least 1 (default: all cores)")
    p.add_argument("--score-thresh", type=fraction, default=None,
                   help="override the exported score threshold (a number in [0, 1])")
    p.add_argument("--draw-score", type=fraction, default=0.3,
                   help="draw boxes scoring at least this (a number in [0, 1])")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images of more pixels than this (width x height; default "
                   f"{DEFAULT_MAX_PIXELS}: 25000 x 25000)")
    return p.parse_args(argv)


def same_names(inputs: List[str]) -> List[List[str]]:
    """The groups of ``inputs`` whose outputs would have the same name (their file stem)."""
    by_name: Dict[str, List[str]] = defaultdict(list)
    for path in inputs:
        by_name[Path(path).stem].append(path)
    return [paths for paths in by_name.values() if len(paths) > 1]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    clashes = same_names(args.input)
    if clashes:
        shown = "; ".join(" and ".join(paths) for paths in clashes)
        print(f"predict_onnx: error: inputs with the same file name would overwrite each other's outputs in "
              f"{args.output}: {shown}. Run them into different --output folders.", file=sys.stderr)
        return 1
    try:
        for path in args.input:  # headers first: a bad input stops the run before anything is written
            image_size(path, args.max_pixels)
        detector = OnnxDetector(args.onnx, threads=args.threads, score_thresh=args.score_thresh)
    except (DeployFileError, ImageReadError) as e:
        print(f"predict_onnx: error: {e}", file=sys.stderr)
        return 1
    names = detector.info.class_names
    for path in args.input:
        try:
            image = read_image(path, args.max_pixels)
            dets = detector(image)
        except (DeployFileError, ImageReadError) as e:
            print(f"predict_onnx: error: {e}", file=sys.stderr)
            return 1
        picture = save_detections(Path(args.output), path, image, dets, names, args.draw_score)
        print(f"{path}: {len(dets)} detections ({bbox_format(dets.boxes)}) -> {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
