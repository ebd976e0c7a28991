#!/usr/bin/env python
"""Detect objects in one large image (a DOTA scene, any PNG/JPEG) with a trained detector: the image is cut
into overlapping tiles as datasets/prepare_dota.py cuts patches, each tile is run through the model, and the
tile detections are mapped back and merged with class-wise NMS.

    python tools/infer_large_image.py --config-file configs/DOTA/retinanet_R50.yaml \
        --weights output/dota/retinanet_R50/model_final.pth --input P0006.png --output output/infer
    python tools/infer_large_image.py --onnx student.onnx --input P0006.png --output output/infer

Writes OUTPUT/<name>.json ({"image", "width", "height", "classes", "bbox_format", "detections": [{"bbox":
[x0, y0, x1, y1], "score", "category_id", "category"}]}, boxes in the image's pixels, best first) and
OUTPUT/<name>_boxes.jpg. A rotated detector (configs/*/rotated_*.yaml, or its ONNX export) gives "bbox_format"
"XYWHA_ABS" and "bbox": [cx, cy, w, h, angle] (degrees counter-clockwise on screen), drawn as turned
rectangles; its tiles are merged with rotated NMS (IoU 0.1, DOTA Task 1's), with --onnx as with a config. The
classes are those the config names: its first test (else training) set's, as recorded in a run's
config.yaml (DATASETS.OWN.<name>.CLASSES) or registered, or --dataset's.
--weights is a plain detector checkpoint, or, with a DS2D2 stage-3 config, a distiller checkpoint or the
student exported by tools/export_student.py (the model built is then MODEL.DS2D2.DETECTOR, on MODEL.DEVICE).
--onnx runs an ONNX export (tools/export_student.py --format onnx) through onnxruntime instead, one tile at a
time; it needs no config (the file holds the test resize, thresholds and class names). The image is read
by ds2d2_onnx.image_io: one of more than --max-pixels pixels (default 25000 x 25000) is refused from its
header, a truncated or undecodable one with its path named.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

import ds2d2  # noqa: F401  (registers the builtin datasets, whose class names label the boxes)
from ds2d2.config import load_config, model_num_classes
from ds2d2.data.dota import read_image
from ds2d2.data.dota_split import cut_patches, resize_by_rate
from ds2d2.deploy import class_names_for, detector_config, load_detector
from ds2d2.evaluation.dota_merge import ImageDetections, boxes_to_image, merge_detections_of_kind
from ds2d2_onnx import OnnxDetector, save_detections
from ds2d2_onnx.cli_args import fraction, non_negative_int, positive_float, positive_int
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS

Tile = Tuple[np.ndarray, Tuple[float, float], float]  # pixels, origin in the image, rate


def cut_tiles(image: np.ndarray, patch_size: int, gap: int, rates: Sequence[float]) -> List[Tile]:
    """The ``patch_size`` tiles of ``image`` at each rate, as datasets/prepare_dota.py cuts patches."""
    return [
        (patch, (left / rate, up / rate), rate)
        for rate in rates
        for left, up, patch in cut_patches(resize_by_rate(image, rate), patch_size, gap)
    ]


@torch.no_grad()
def predict_tiles(
    model: torch.nn.Module,
    image: np.ndarray,
    cfg: CfgNode,
    patch_size: int = 1024,
    gap: int = 200,
    rates: Sequence[float] = (1.0,),
    batch_size: int = 4,
) -> List[ImageDetections]:
    """Detections of every tile of a BGR image (H, W, 3), in the image's pixels (one entry per tile).

    Tiles are resized for the model as Detectron2's DefaultPredictor does (INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST,
    INPUT.FORMAT); the model returns boxes in tile pixels, mapped back by ``p / rate + tile origin``.
    """
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    tiles = cut_tiles(image, patch_size, gap, rates)
    results = []
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        inputs = []
        for patch, _, _ in batch:
            pixels = patch if cfg.INPUT.FORMAT == "BGR" else patch[:, :, ::-1]
            pixels = resize.get_transform(pixels).apply_image(pixels)
            tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype("float32"))
            inputs.append({"image": tensor, "height": patch_size, "width": patch_size})
        for (_, origin, rate), output in zip(batch, model(inputs)):
            inst = output["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.numpy()  # (N, 4) xyxy, or (N, 5) XYWHA for a rotated detector
            results.append(ImageDetections(boxes_to_image(boxes, origin, rate), inst.scores.numpy(),
                                           inst.pred_classes.numpy()))
    return results


def merge_tiles(
    tiles: Sequence[ImageDetections], width: int, height: int, nms_thresh: Optional[float] = None
) -> ImageDetections:
    """The tiles' detections (in image pixels) merged into the (width, height) image's with class-wise NMS
    at ``nms_thresh``: by default the DOTA devkit's, IoU 0.3 for horizontal boxes, rotated IoU 0.1 for
    rotated ones (N, 5), which are not clipped (``ds2d2.evaluation.dota_merge``)."""
    rotated = any(t.boxes.shape[1] == 5 for t in tiles)
    return merge_detections_of_kind(tiles, width, height, rotated, nms_thresh)


def predict_tiles_onnx(
    detector: OnnxDetector, image: np.ndarray, patch_size: int = 1024, gap: int = 200,
    rates: Sequence[float] = (1.0,),
) -> List[ImageDetections]:
    """``predict_tiles`` through an ONNX export: the detector resizes each tile as its config's test
    transform did and returns boxes in tile pixels (rotated ones for a rotated export), mapped back the same
    way."""
    results = []
    for patch, origin, rate in cut_tiles(image, patch_size, gap, rates):
        dets = detector(np.ascontiguousarray(patch))
        results.append(ImageDetections(boxes_to_image(dets.boxes, origin, rate), dets.scores, dets.classes))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help="the detector's YAML config (PyTorch inference)")
    p.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--onnx", default=None, help="an ONNX export to run with onnxruntime instead of a config")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="--onnx: onnxruntime threads (default: all)"
    )
    p.add_argument("--input", required=True, help="the large image")
    p.add_argument("--output", required=True, help="folder for <name>.json and <name>_boxes.jpg")
    p.add_argument("--patch-size", type=positive_int, default=1024, help="tile side in pixels (default 1024)")
    p.add_argument("--gap", type=non_negative_int, default=200, help="tile overlap in pixels (default 200)")
    p.add_argument(
        "--rates", type=positive_float, nargs="+", default=[1.0], help="image scales (default 1.0)"
    )
    p.add_argument("--nms-thresh", type=fraction, default=None,
                   help="class-wise NMS IoU (default 0.3; 0.1 for a rotated detector's boxes)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="tiles per forward pass (PyTorch)")
    p.add_argument("--dataset", default=None, help="dataset whose class names label the boxes")
    p.add_argument("--draw-score", type=fraction, default=0.3, help="draw boxes scoring at least this")
    p.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse an image of more pixels (width x height) than this, from its header "
        f"(default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    args = p.parse_args(argv)
    if (args.config_file is None) == (args.onnx is None):
        p.error("give either --config-file (PyTorch) or --onnx (onnxruntime)")
    return args


def load_model(args: argparse.Namespace) -> Tuple[torch.nn.Module, CfgNode, List[str]]:
    """The PyTorch detector of --config-file with --weights, else the config's MODEL.WEIGHTS (eval mode, on
    MODEL.DEVICE), its plain detector config and class names. Errors name the one that gave the path."""
    cfg = load_config(args.config_file, args.opts, register=False)
    plain = detector_config(cfg, cfg.MODEL.DEVICE)
    weights, key = (args.weights, "--weights") if args.weights else (cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    model = load_detector(cfg, weights, key, cfg.MODEL.DEVICE)
    return model, plain, class_names_for(plain, args.dataset, model_num_classes(plain)[1])


def load_onnx(args: argparse.Namespace) -> Tuple[OnnxDetector, List[str]]:
    """The ONNX detector of --onnx and its class names (--dataset's, which must be as many, if given)."""
    if args.dataset is None:
        detector = OnnxDetector(args.onnx, threads=args.threads)
        return detector, detector.info.class_names
    names = list(MetadataCatalog.get(args.dataset).get("thing_classes", None) or [])
    if not names:
        raise ValueError(f"--dataset {args.dataset!r} has no class names (is it registered?)")
    return OnnxDetector(args.onnx, threads=args.threads, num_classes=len(names)), names


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        image = read_image(args.input, args.max_pixels)
        if args.onnx:
            detector, names = load_onnx(args)
        else:
            model, cfg, names = load_model(args)
    except (OSError, RuntimeError, ValueError) as e:  # DeployFileError is a ValueError
        print(f"infer_large_image: error: {e}", file=sys.stderr)
        return 1
    height, width = image.shape[:2]
    if args.onnx:
        tiles = predict_tiles_onnx(detector, image, args.patch_size, args.gap, args.rates)
    else:
        tiles = predict_tiles(model, image, cfg, args.patch_size, args.gap, args.rates, args.batch_size)
    merged = merge_tiles(tiles, width, height, args.nms_thresh)
    save_detections(Path(args.output), args.input, image, merged, names, args.draw_score)
    report = Path(args.output) / f"{Path(args.input).stem}.json"
    print(f"{args.input}: {len(tiles)} tiles, {len(merged.scores)} detections -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
