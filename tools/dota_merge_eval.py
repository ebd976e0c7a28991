#!/usr/bin/env python
"""Merge a DOTA patch set's detections back to full images; write Task2_<class>.txt and score them (Task 2).

    python tools/dota_merge_eval.py --dataset dota_v1_val_1024 \
        --detections output/inference/dota_v1_val_1024/coco_instances_results.json \
        --labels DOTA/val/labelTxt --output output/dota_val_full

--dataset is a registered patch-set name or a patch-set folder (datasets/prepare_dota.py output); --detections
is Detectron2's COCO results file for that patch set. Without --labels the ground truth recorded in the patch
set is used (none for test: only the submission files are written). Writes OUTPUT/dota_eval.json as {"mAP":
float, "AP": {class: float}} (AP in [0, 1], null for a class without objects).
"""

import argparse
import os
import sys

import ds2d2  # noqa: F401  (registers the builtin dota_* patch sets)
from ds2d2.evaluation.dota import merge_and_evaluate_coco_results
from ds2d2.evaluation.dota_merge import DEFAULT_NMS_THRESH


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="registered patch-set name or patch-set folder")
    p.add_argument("--detections", required=True, help="coco_instances_results.json of that patch set")
    p.add_argument(
        "--labels", default=None, help="original labelTxt folder (default: labels recorded at split time)"
    )
    p.add_argument("--output", required=True, help="folder for Task2_<class>.txt and dota_eval.json")
    p.add_argument(
        "--nms-thresh", type=float, default=DEFAULT_NMS_THRESH, help="class-wise NMS IoU for merging"
    )
    p.add_argument(
        "--all-point-ap",
        action="store_true",
        help="area under the PR curve instead of the devkit's 11-point AP",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = merge_and_evaluate_coco_results(
            args.dataset, args.detections, args.output, args.labels, args.nms_thresh, not args.all_point_ap
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"dota_merge_eval: error: {e}", file=sys.stderr)
        return 1
    print(f"Task2_<class>.txt written to {args.output}")
    if result is not None:
        for name, ap in result["AP"].items():
            print(f"  {name:>20s}: {100 * ap:6.2f}")
        print(f"  {'mAP':>20s}: {100 * result['mAP']:6.2f}  ({os.path.join(args.output, 'dota_eval.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
