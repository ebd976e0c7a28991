#!/usr/bin/env python
"""Split a DOTA split folder (images/, labelTxt/) into patches that ds2d2 registers (see
ds2d2.data.dota_split).

    python datasets/prepare_dota.py --src DOTA/train --dst datasets/DOTA-v1.0_1024/train
    python datasets/prepare_dota.py --src DOTA/val --dst datasets/DOTA-v1.0_1024_ms/val --rates 0.5 1.0 1.5

Re-running the same command finishes an interrupted split (finished images are skipped). A patch set holds
both box kinds (dota_v1_train_1024 reads horizontal boxes, dota_v1_train_1024_oriented oriented ones);
``--boxes oriented`` also refuses collinear and self-intersecting label polygons, which only oriented boxes
cannot use.
"""

import argparse
import sys

from ds2d2.data.dota import DOTA_V1_5_CLASSES, DOTA_V1_CLASSES
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2_onnx.cli_args import fraction, non_negative_int, positive_float, positive_int
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS

CLASS_LISTS = {"v1.0": DOTA_V1_CLASSES, "v1.5": DOTA_V1_5_CLASSES}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="folder with images/ and (except for test) labelTxt/")
    p.add_argument("--dst", required=True, help="output folder (patch set)")
    p.add_argument(
        "--patch-size", type=positive_int, default=1024, help="patch side in pixels (default 1024)"
    )
    p.add_argument(
        "--gap", type=non_negative_int, default=200,
        help="overlap of neighbouring patches in pixels (default 200)",
    )
    p.add_argument(
        "--rates", type=positive_float, nargs="+", default=[1.0], help="image scales to cut at (default 1.0)"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="'v1.0', 'v1.5' or the class names in order (default: v1.0, or v1.5 if the labels need it)",
    )
    p.add_argument(
        "--min-inside",
        type=fraction,
        default=0.7,
        help="keep an object cut by a patch border when more than this fraction of its area is inside (0.7)",
    )
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images of more pixels (width x height) than this, from their header (default "
        f"{DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--boxes",
        choices=("horizontal", "oriented"),
        default="horizontal",
        help="the box kind the labels are checked for (default horizontal); the patches serve both",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out bad label lines (each one is reported, with the count) instead of stopping at the "
        "first",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    classes = args.classes
    if classes is not None and len(classes) == 1 and classes[0] in CLASS_LISTS:
        classes = list(CLASS_LISTS[classes[0]])
    try:
        settings = SplitSettings(args.patch_size, args.gap, tuple(args.rates), args.min_inside)
    except ValueError as e:
        print(f"prepare_dota: error: {e}", file=sys.stderr)
        return 1
    try:
        report = split_dota(
            args.src, args.dst, classes, settings, args.workers, args.skip_invalid,
            max_pixels=args.max_pixels, boxes=args.boxes,
        )
    except (OSError, ValueError) as e:
        print(f"prepare_dota: error: {e}", file=sys.stderr)
        return 1
    for line in report.invalid_lines:
        print(f"skipped: {line}", file=sys.stderr)
    if args.skip_invalid:
        print(f"{len(report.invalid_lines)} invalid label lines skipped", file=sys.stderr)
    print(
        f"{args.dst}: {report.images} images ({report.split_now} split now), {report.patches} patches, "
        f"{report.objects} objects"
    )
    for rate, lost in report.lost.items():
        if lost:
            print(
                f"  rate {rate}: {lost} objects are in no patch with > {args.min_inside:.0%} of their area "
                f"inside (listed as lost_objects in {args.dst}/annotations/*.json)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
