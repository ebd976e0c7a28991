#!/usr/bin/env python
r"""Draw what DS2D2's explicit stream attends to on one image, as one PNG.

    python tools/visualize_ds2d2.py --config-file configs/synthetic/retinanet_R50_to_R18.yaml \
        --weights output/synthetic/retinanet_R50_to_R18/model_final.pth \
        --dataset synthetic_dior_test --index 0 --output ds2d2.png
    python tools/visualize_ds2d2.py --config-file CFG --weights CKPT --image photo.jpg --output ds2d2.png

Columns are the distilled FPN levels (MODEL.DS2D2.IN_FEATURES); rows are, on each level's wavelet band
grid, the DISW map, the teacher/student discrepancy of the low band, sum over channels of
(LL(A(S)) - LL(T))^2, and of the high bands (summed over LH, HL, HH and channels), then (unless
--no-weighted) both multiplied by DISW: the loss is the mean of these last two. The image goes through the
config's test-time resize; dataset images keep their ground-truth boxes (mapped through the same resize), a
plain --image has none, so its DISW is 1 everywhere. Builtin datasets (dior_*, synthetic_dior_*) are read
under $DETECTRON2_DATASETS (default ./datasets). Trailing ``KEY VALUE`` pairs override the config. The image
is read as the trainer reads it (``ds2d2.data.mapper.CheckedDatasetMapper``): a missing, truncated or
undecodable file, or one of more than ``INPUT.MAX_PIXELS`` pixels (raise it with ``INPUT.MAX_PIXELS N``), is
refused naming the file, before any model is built.
"""
import argparse
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ds2d2 import disw_map, dwt, explicit_band_losses
from ds2d2.checkpoint import load_state_strictly, read_checkpoint
from ds2d2.config import load_config
from ds2d2.data.mapper import CheckedDatasetMapper
from ds2d2.meta_arch.distiller import DS2D2Distiller

MAP_KEYS = ("disw", "low", "high", "weighted_low", "weighted_high")


def setup_cfg(config_file: str, opts: List[str], register: bool = False) -> CfgNode:
    """Detectron2 + DS2D2 config from ``config_file`` with ``opts`` (KEY VALUE ...) merged, frozen; with
    ``register``, its DATASETS.OWN entries registered as a run's config.yaml recorded them (paths,
    classes)."""
    cfg = load_config(config_file, opts, register=register)
    cfg.freeze()
    return cfg


def build_distiller(cfg: CfgNode, weights: Optional[str] = None) -> DS2D2Distiller:
    """The distiller of ``cfg`` on cfg.MODEL.DEVICE, in eval mode, with ``weights`` (student + adapters)
    loaded strictly: a checkpoint that does not fit raises instead of leaving random tensors."""
    if cfg.MODEL.META_ARCHITECTURE != "DS2D2Distiller":
        raise ValueError(
            f"--config-file must be a DS2D2Distiller (stage 3) config; MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE!r}."
        )
    model = build_model(cfg)
    if weights:
        load_state_strictly(model, read_checkpoint(weights, "--weights"), "--weights", weights)
    return model.eval()


def load_input(
    cfg: CfgNode, image: Optional[str] = None, dataset: Optional[str] = None, index: int = 0
) -> Dict:
    """One model input (``image`` tensor in cfg.INPUT.FORMAT, height, width and, for dataset images,
    ``instances`` with the ground-truth boxes) after the config's test-time resize. The image is read by
    ``CheckedDatasetMapper`` under cfg.INPUT.MAX_PIXELS: a bad or oversized file is an ImageReadError (a
    ValueError) naming it."""
    if (image is None) == (dataset is None):
        raise ValueError("give exactly one of an image path or a dataset name")
    if dataset is not None:
        dicts = DatasetCatalog.get(dataset)
        if not 0 <= index < len(dicts):
            raise IndexError(f"--index {index} is out of range: dataset {dataset!r} has {len(dicts)} images")
        record = dicts[index]
    else:
        record = {"file_name": image}
    # is_train=True only makes the mapper keep (and resize) the annotations; the resize is the test one
    test_resize = utils.build_augmentation(cfg, is_train=False)
    mapper = CheckedDatasetMapper(
        is_train=True, augmentations=test_resize, image_format=cfg.INPUT.FORMAT,
        max_pixels=cfg.INPUT.MAX_PIXELS,
    )
    return mapper(record)


@torch.no_grad()
def compute_maps(model: DS2D2Distiller, batched_input: Dict) -> Dict:
    """The explicit stream's per-cell maps for one model input (puts ``model`` in eval mode).

    Returns a dict with ``image`` (uint8 RGB [H, W, 3], the resized input), ``boxes`` (float [N, 4] xyxy in
    input pixels), ``input_size`` ((H, W) of the padded tensor fed to the backbones), ``wave``, ``adapted``
    (whether the student went through the adapters) and ``levels``: per level name, ``stride``, the [h, w]
    float32 arrays ``disw``, ``low`` = sum_c (LL(A(S)) - LL(T))^2, ``high`` = sum_{c,band} (H(A(S)) - H(T))^2,
    ``weighted_low`` = disw * low and ``weighted_high`` = disw * high, and the level's loss terms ``loss_low``
    and ``loss_high`` (the explicit losses before their weights).
    """
    model.eval()
    student = model.student
    images = student.preprocess_image([batched_input])
    size = tuple(images.tensor.shape[-2:])
    s_feats = student.backbone(images.tensor)
    t_feats = model.teacher_features([batched_input], size)
    instances = batched_input.get("instances")
    if instances is not None:
        boxes = instances.gt_boxes.tensor.to(device=model.device, dtype=torch.float32)
    else:
        boxes = torch.zeros((0, 4), device=model.device)
    strides = student.backbone.output_shape()

    levels = {}
    for name in model.in_features:
        s_feat = model.adapters[name](s_feats[name]) if model.adapters is not None else s_feats[name]
        s_low, s_high = dwt(s_feat.float(), model.wave)
        t_low, t_high = dwt(t_feats[name].float(), model.wave)
        weight = disw_map([boxes], size, tuple(t_low.shape[-2:]))
        low = (s_low - t_low).square().sum(dim=1)[0]
        high = (s_high - t_high).square().sum(dim=(1, 2))[0]
        loss_low, loss_high = explicit_band_losses(s_low, s_high, t_low, t_high, weight)
        maps = {"disw": weight[0, 0], "low": low, "high": high, "weighted_low": weight[0, 0] * low,
                "weighted_high": weight[0, 0] * high}
        levels[name] = {key: value.cpu().numpy() for key, value in maps.items()}
        levels[name].update(stride=strides[name].stride, loss_low=float(loss_low), loss_high=float(loss_high))

    image = utils.convert_image_to_rgb(
        batched_input["image"].permute(1, 2, 0).cpu().numpy(), student.input_format
    )
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "boxes": boxes.cpu().numpy(),
        "input_size": size,
        "wave": model.wave,
        "adapted": model.adapters is not None,
        "levels": levels,
    }


def _draw_boxes(ax, boxes: np.ndarray, colour: str) -> None:
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=0.8))


def plot_maps(maps: Dict, output: str, weighted: bool = True, title: str = "") -> None:
    """Write ``compute_maps``' result as one PNG: the image with its boxes, then one column per level."""
    s = "A(S)" if maps["adapted"] else "S"
    row_labels = {
        "disw": "DISW weight",
        "low": "low band\n" + r"$\sum_c$" + f" (LL({s}) - LL(T))²",
        "high": "high bands\n" + r"$\sum_{c,\,LH/HL/HH}$" + f" (H({s}) - H(T))²",
        "weighted_low": "DISW × low\n(what the low loss sees)",
        "weighted_high": "DISW × high\n(what the high loss sees)",
    }
    rows = list(MAP_KEYS if weighted else MAP_KEYS[:3])
    levels = maps["levels"]
    in_h, in_w = maps["input_size"]
    img_h, img_w = maps["image"].shape[:2]
    boxes = maps["boxes"]

    fig = Figure(figsize=(3.3 * (len(levels) + 1), 2.7 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), len(levels) + 1, left=0.04, right=0.97, bottom=0.05, top=0.92,
                            wspace=0.45, hspace=0.35)
    ax = fig.add_subplot(grid[:2, 0])
    ax.imshow(maps["image"], extent=(0, img_w, img_h, 0))
    _draw_boxes(ax, boxes, "lime")
    ax.set_xlim(0, in_w)
    ax.set_ylim(in_h, 0)
    gt = f"{len(boxes)} GT boxes" if len(boxes) else "no GT boxes: DISW = 1"
    ax.set_title(f"input {img_h}×{img_w} (padded {in_h}×{in_w})\n{gt}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[2:, 0])
    ax.axis("off")
    ax.text(
        0.0, 0.5,
        f"wavelet: {maps['wave']}\nmaps on each level's band grid,\naxes in input pixels\n\n"
        f"explicit loss of a level =\nmean of DISW × discrepancy\nover cells, channels (and bands)",
        fontsize=9, va="center", transform=ax.transAxes,
    )

    for col, (name, level) in enumerate(levels.items(), start=1):
        h, w = level["disw"].shape
        for row, key in enumerate(rows):
            ax = fig.add_subplot(grid[row, col])
            if row == 0:
                ax.set_title(f"{name}  (stride {level['stride']}, band grid {h}×{w})", fontsize=9)
            values = level[key]
            if key == "disw":
                # the scale reaches at least 2 (one whole object), so a map of ones reads as plain background
                im = ax.imshow(values, cmap="viridis", vmin=1.0, vmax=max(float(values.max()), 2.0),
                               extent=(0, in_w, in_h, 0), interpolation="nearest")
                _draw_boxes(ax, boxes, "white")
            else:
                im = ax.imshow(values, cmap="magma", vmin=0.0, vmax=max(float(values.max()), 1e-12),
                               extent=(0, in_w, in_h, 0), interpolation="nearest")
            if key.startswith("weighted_"):
                ax.set_xlabel(f"loss term {level['loss_' + key[len('weighted_'):]]:.3g}", fontsize=8)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            if col == 1:
                ax.set_ylabel(row_labels[key], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(output)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--config-file", required=True, help="the distiller (DS2D2Distiller) YAML config")
    parser.add_argument("--weights", help="a distiller checkpoint (student + adapters); default: as built")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file (no ground truth: DISW is 1)")
    source.add_argument("--dataset", help="a builtin dataset (e.g. synthetic_dior_test) or one of the "
                        "config's DATASETS.OWN entries")
    parser.add_argument("--index", type=int, default=0, help="which image of --dataset (default 0)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--no-weighted", action="store_true", help="leave out the DISW-weighted rows")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = setup_cfg(args.config_file, args.opts, register=args.dataset is not None)
        batched_input = load_input(cfg, args.image, args.dataset, args.index)  # fails fast, before the build
        model = build_distiller(cfg, args.weights)
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
        print(f"visualize_ds2d2: error: {e}", file=sys.stderr)
        return 1
    maps = compute_maps(model, batched_input)
    source = args.image or f"{args.dataset}[{args.index}]"
    weights = args.weights or "weights as built (no --weights)"
    title = f"DS2D2 explicit stream: {source}  |  {weights}"
    plot_maps(maps, args.output, weighted=not args.no_weighted, title=title)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
