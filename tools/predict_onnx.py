#!/usr/bin/env python
r"""Detect objects in images with a ds2d2 ONNX export (tools/export_student.py --format onnx) through
onnxruntime: no torch, no Detectron2, no config file (needs onnxruntime, NumPy, Pillow, OpenCV).

    python tools/predict_onnx.py --onnx student.onnx --input image.jpg [more.jpg ...] --output out/

Writes, per image, OUTPUT/<name>_boxes.jpg (boxes scoring at least --draw-score, labelled) and
OUTPUT/<name>.json ({"image", "width", "height", "classes", "detections": [{"bbox": [x0, y0, x1, y1],
"score", "category_id", "category"}]}, boxes in the image's pixels, best first). For images far larger than
the model's training images (a whole DOTA scene), use tools/infer_large_image.py --onnx, which tiles them.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "projects" / "DS2D2"))  # works uninstalled too

from ds2d2_onnx import DeployFileError, OnnxDetector, save_detections  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="the exported model (.onnx)")
    p.add_argument("--input", required=True, nargs="+", help="image file(s)")
    p.add_argument("--output", required=True, help="folder for <name>_boxes.jpg and <name>.json")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--score-thresh", type=float, default=None, help="override the exported score threshold")
    p.add_argument("--draw-score", type=float, default=0.3, help="draw boxes scoring at least this")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        detector = OnnxDetector(args.onnx, threads=args.threads, score_thresh=args.score_thresh)
    except DeployFileError as e:
        print(f"predict_onnx: error: {e}", file=sys.stderr)
        return 1
    names = detector.info.class_names
    for path in args.input:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"predict_onnx: error: cannot read image '{path}'", file=sys.stderr)
            return 1
        dets = detector(image)
        picture = save_detections(Path(args.output), path, image, dets, names, args.draw_score)
        print(f"{path}: {len(dets)} detections -> {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
