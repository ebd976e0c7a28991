#!/usr/bin/env python
"""Merge a DOTA patch set's detections back to full images; write the submission files and score them.

    python tools/dota_merge_eval.py --dataset dota_v1_val_1024 \
        --detections output/inference/dota_v1_val_1024/coco_instances_results.json \
        --labels DOTA/val/labelTxt --output output/dota_val_full

--dataset is a registered patch-set name or a patch-set folder (datasets/prepare_dota.py output); --detections
is Detectron2's COCO results file for that patch set: COCOEvaluator's horizontal boxes are scored as DOTA Task
2, RotatedCOCOEvaluator's rotated boxes (5 numbers a box) as Task 1 (--task checks it). Without --labels the
ground truth recorded in the patch set is used (none for test: only the submission files are written). Writes
Task<N>_<class>.txt and OUTPUT/dota_eval.json (Task 2) or OUTPUT/dota_task1_eval.json (Task 1) as {"mAP":
float, "AP": {class: float}} (AP in [0, 1], null for a class without objects).
"""

import argparse
import os
import sys

import ds2d2  # noqa: F401  (registers the builtin dota_* patch sets)
from ds2d2.evaluation.dota import EVAL_FILES, merge_and_evaluate_coco_results
from ds2d2.evaluation.dota_merge import DEFAULT_NMS_THRESH, DEFAULT_ROTATED_NMS_THRESH


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="registered patch-set name or patch-set folder")
    p.add_argument("--detections", required=True, help="coco_instances_results.json of that patch set")
    p.add_argument(
        "--labels", default=None, help="original labelTxt folder (default: labels recorded at split time)"
    )
    p.add_argument("--output", required=True, help="folder for Task<N>_<class>.txt and the scores")
    p.add_argument(
        "--task",
        type=int,
        choices=(1, 2),
        default=None,
        help="1: oriented boxes (polygon IoU), 2: horizontal boxes (default: the detections' own)",
    )
    p.add_argument(
        "--nms-thresh",
        type=float,
        default=None,
        help="class-wise NMS IoU for merging (default: the devkit's, "
        f"{DEFAULT_ROTATED_NMS_THRESH} for Task 1, {DEFAULT_NMS_THRESH} for Task 2)",
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
            args.dataset,
            args.detections,
            args.output,
            args.labels,
            args.nms_thresh,
            not args.all_point_ap,
            args.task,
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"dota_merge_eval: error: {e}", file=sys.stderr)
        return 1
    print(f"Task{result['task']}_<class>.txt written to {args.output}")
    if "AP" in result:
        for name, ap in result["AP"].items():
            print(f"  {name:>20s}: {100 * ap:6.2f}")
        scores = os.path.join(args.output, EVAL_FILES[result["task"]])
        print(f"  {'mAP':>20s}: {100 * result['mAP']:6.2f}  ({scores})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
