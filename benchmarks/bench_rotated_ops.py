#!/usr/bin/env python
"""Rotated-box op speed: ds2d2.rotated's IoU and NMS against a Shapely loop (CPU; also CUDA when present).

    python benchmarks/bench_rotated_ops.py      # writes benchmarks/results/rotated_ops.{md,csv}

Boxes are DOTA-like: centres over the image, sides log-uniform, any angle (Detectron2's cx, cy, w, h, angle).
- Pairwise IoU at the sizes training uses: ground truth x RRPN anchors (Detectron2's default rotated anchors:
  strides 4-64, sizes 32-512, aspect ratios 0.5 / 1 / 2, angles -90 / 0 / 90, on one image), ground truth x
  2000 proposals (RROIHeads' matching), and 2000 x 2000 detections. The Shapely loop (polygons built once,
  then ``intersection(...).area`` per pair) is timed on a random sample of pairs and scaled to N x M: running
  it whole would take minutes per row; ours and it take turns (medians), so load on the shared cores hits
  both alike. max_abs_diff: against Shapely on those sampled pairs plus as many
  overlapping ones.
- NMS: RRPN at test time (5 levels x 1000 proposals, per level, IoU 0.7) and a DOTA merge (detections from
  overlapping patches, per class, IoU 0.3), as jittered copies around objects. The reference is the greedy
  loop on Shapely IoU run whole; same_keep: whether it keeps the same boxes in the same order.
"""
import argparse
import math
import os
import random
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import RESULTS, command_line, machine_line, markdown_table, median_times  # noqa: E402
from benchmarks.common import set_threads, write_csv, write_report  # noqa: E402
from ds2d2.rotated import batched_nms_rotated, pairwise_iou_rotated  # noqa: E402

COLUMNS = ["device", "op", "setting", "ours_ms", "reference", "reference_ms", "speedup", "max_abs_diff",
           "same_keep", "target", "met"]
TARGET = 100.0  # the speed-up over the Shapely loop


def dota_boxes(num: int, size: int, generator: torch.Generator, sides: Tuple[float, float] = (10, 200)
               ) -> torch.Tensor:
    """[num, 5] float32 boxes in a size x size image, sides log-uniform in ``sides`` px, angles in
    [-90, 90)."""
    centers = torch.rand(num, 2, generator=generator) * size
    log_sides = torch.empty(num, 2).uniform_(math.log(sides[0]), math.log(sides[1]), generator=generator)
    angles = torch.rand(num, 1, generator=generator) * 180 - 90
    return torch.cat([centers, log_sides.exp(), angles], 1)


def rrpn_anchors(size: int) -> torch.Tensor:
    """Detectron2's default RotatedAnchorGenerator anchors of a size x size image on P2-P6 ([A, 5])."""
    levels = []
    for stride, side in zip((4, 8, 16, 32, 64), (32, 64, 128, 256, 512)):
        steps = torch.arange(0, size, stride, dtype=torch.float32)
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        shapes = torch.tensor([[side / math.sqrt(r), side * math.sqrt(r), a]
                               for r in (0.5, 1.0, 2.0) for a in (-90.0, 0.0, 90.0)])
        centers = torch.stack([xs.flatten(), ys.flatten()], 1)
        per_anchor = [centers.repeat_interleave(len(shapes), 0), shapes.repeat(len(centers), 1)]
        levels.append(torch.cat(per_anchor, 1))
    return torch.cat(levels)


def clustered(objects: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    """``copies`` detections per object: centre moved and sides scaled by ~10% of the size, angle turned by
    ~10 degrees (Gaussian)."""
    boxes = objects.repeat_interleave(copies, 0)
    noise = torch.randn(len(boxes), 5, generator=generator)
    center = boxes[:, :2] + noise[:, :2] * boxes[:, 2:4].mean(1, keepdim=True) * 0.1
    sides = boxes[:, 2:4] * torch.exp(noise[:, 2:4] * 0.1)
    return torch.cat([center, sides, boxes[:, 4:] + noise[:, 4:] * 10], 1)


def polygons(boxes: torch.Tensor) -> list:
    """Shapely polygons of rotated boxes (the angle is counter-clockwise in the y-down image)."""
    from shapely import affinity
    from shapely.geometry import box

    out = []
    for cx, cy, w, h, angle in boxes.double().tolist():
        rectangle = affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), -angle, origin=(0, 0))
        out.append(affinity.translate(rectangle, cx, cy))
    return out


def shapely_iou(p, q) -> float:
    inter = p.intersection(q).area
    return inter / (p.area + q.area - inter)


def iou_reference(boxes1: torch.Tensor, boxes2: torch.Tensor, ours: torch.Tensor, samples: int,
                  generator: random.Random) -> Tuple[Callable[[], List[float]], float, float, float]:
    """The Shapely loop over ``samples`` random pairs (polygons built beforehand), the factor scaling its time
    to all N x M pairs, the seconds to build the N + M polygons (timed on a sample), and max |ours - Shapely|
    over those pairs plus as many that overlap."""
    n, m = len(boxes1), len(boxes2)
    pairs = [(generator.randrange(n), generator.randrange(m)) for _ in range(samples)]
    start = time.perf_counter()
    built = polygons(boxes1[:samples]) + polygons(boxes2[:samples])
    build = (time.perf_counter() - start) / len(built) * (n + m)
    p1, p2 = polygons(boxes1[[i for i, _ in pairs]]), polygons(boxes2[[j for _, j in pairs]])
    overlapping = torch.nonzero(ours > 0)
    picked = torch.randperm(len(overlapping), generator=torch.Generator().manual_seed(0))[:samples]
    extra = [tuple(pair) for pair in overlapping[picked].tolist()]
    q1, q2 = polygons(boxes1[[i for i, _ in extra]]), polygons(boxes2[[j for _, j in extra]])
    values = [shapely_iou(p, q) for p, q in zip(p1 + q1, p2 + q2)]
    diff = max(abs(float(ours[i, j]) - v) for (i, j), v in zip(pairs + extra, values))
    return (lambda: [shapely_iou(p, q) for p, q in zip(p1, p2)]), n * m / samples, build, diff


def greedy_shapely_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, threshold: float
                       ) -> List[int]:
    """The reference: best score first (ties: lower index), drop the later boxes of its class whose Shapely
    IoU with it is > threshold."""
    shapes = polygons(boxes)
    order = sorted(range(len(boxes)), key=lambda k: (-float(scores[k]), k))
    labels = classes.tolist()
    alive = [True] * len(boxes)
    kept = []
    for position, i in enumerate(order):
        if not alive[i]:
            continue
        kept.append(i)
        for j in order[position + 1:]:
            if alive[j] and labels[j] == labels[i] and shapely_iou(shapes[i], shapes[j]) > threshold:
                alive[j] = False
    return kept


def row(device: str, op: str, setting: str, ours: float, reference: str, ref: float, **extra) -> Dict:
    speedup = ref / ours
    return dict(device=device, op=op, setting=setting, ours_ms=ours * 1e3, reference=reference,
                reference_ms=ref * 1e3, speedup=speedup, target=f">={TARGET:g}x", met=speedup >= TARGET,
                **extra)


def bench_iou(devices: Sequence[str], settings: List[Tuple[str, torch.Tensor, torch.Tensor]], repeats: int,
              samples: int) -> List[Dict]:
    rows = []
    for setting, boxes1, boxes2 in settings:
        ours_cpu = pairwise_iou_rotated(boxes1, boxes2)
        loop, scale, build, diff = iou_reference(boxes1, boxes2, ours_cpu, samples, random.Random(0))
        for device in devices:
            b1, b2 = boxes1.to(device), boxes2.to(device)
            ours, sample = median_times([lambda: pairwise_iou_rotated(b1, b2), loop], repeats, device=device)
            rows.append(row(device, "pairwise IoU", setting, ours, f"Shapely loop ({samples} pairs timed)",
                            sample * scale + build, max_abs_diff=diff))
    return rows


NMSSetting = Tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, float]  # name, boxes, scores, classes, IoU


def bench_nms(devices: Sequence[str], settings: List[NMSSetting], repeats: int) -> List[Dict]:
    rows = []
    for setting, boxes, scores, classes, threshold in settings:
        reference = lambda: greedy_shapely_nms(boxes, scores, classes, threshold)  # noqa: E731
        expected = reference()
        for device in devices:
            b, s, c = boxes.to(device), scores.to(device), classes.to(device)
            run: Callable = lambda: batched_nms_rotated(b, s, c, threshold)  # noqa: E731
            same = run().cpu().tolist() == expected  # also the warm-up
            ours, ref = median_times([run, reference], repeats, warmup=0, device=device)
            rows.append(row(device, "batched NMS", f"{setting}, kept {len(expected)}", ours,
                            "greedy Shapely loop", ref, same_keep=same))
    return rows


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 by default: on shared cores, more only wait for each other)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of ours and the IoU reference (median)")
    p.add_argument("--nms-repeats", type=int, default=3, help="timed runs of ours and the NMS reference")
    p.add_argument("--samples", type=int, default=5000, help="pairs the Shapely IoU loop is timed on")
    p.add_argument("--image", type=int, default=800, help="image side (anchors, boxes), px")
    p.add_argument("--gt", type=int, default=50, help="ground-truth boxes per image")
    p.add_argument("--proposals", type=int, default=2000)
    p.add_argument("--detections", type=int, default=2000, help="boxes of the N x N IoU matrix")
    p.add_argument("--rrpn-levels", type=int, default=5)
    p.add_argument("--rrpn-per-level", type=int, default=1000, help="proposals per level into RRPN's NMS")
    p.add_argument("--merge-objects", type=int, default=200, help="objects of the DOTA merge image")
    p.add_argument("--merge-copies", type=int, default=25, help="detections per object from the patches")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--results", default=RESULTS)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    set_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    generator = torch.Generator().manual_seed(0)
    size = args.image
    gt = dota_boxes(args.gt, size, generator)
    anchors = rrpn_anchors(size)
    proposals = clustered(gt, math.ceil(args.proposals / args.gt), generator)[:args.proposals]
    detections = dota_boxes(args.detections, size, generator)
    iou_settings = [
        (f"{args.gt} GT x {len(anchors)} RRPN anchors, {size} px", gt, anchors),
        (f"{args.gt} GT x {len(proposals)} proposals", gt, proposals),
        (f"{len(detections)} x {len(detections)} boxes, {size} px", detections, detections),
    ]
    rrpn_objects = dota_boxes(args.rrpn_per_level // 10, size, generator)
    rrpn = torch.cat([clustered(rrpn_objects, 10, generator) for _ in range(args.rrpn_levels)])
    levels = torch.arange(args.rrpn_levels).repeat_interleave(len(rrpn) // args.rrpn_levels)
    merge_objects = dota_boxes(args.merge_objects, 4 * size, generator)
    merge = clustered(merge_objects, args.merge_copies, generator)
    merge_classes = torch.randint(0, 15, (args.merge_objects,), generator=generator)
    nms_settings = [
        (f"RRPN: {args.rrpn_levels} levels x {len(rrpn) // args.rrpn_levels} proposals, IoU 0.7", rrpn,
         torch.rand(len(rrpn), generator=generator), levels, 0.7),
        (f"DOTA merge: {len(merge)} detections, 15 classes, IoU 0.3", merge,
         torch.rand(len(merge), generator=generator), merge_classes.repeat_interleave(args.merge_copies),
         0.3),
    ]
    rows = bench_iou(devices, iou_settings, args.repeats, args.samples)
    rows += bench_nms(devices, nms_settings, args.nms_repeats)
    machine = "; ".join(machine_line(d) for d in devices)
    write_csv(os.path.join(args.results, "rotated_ops.csv"), rows, COLUMNS)
    notes = (
        f"Medians of {args.repeats} runs (IoU) and {args.nms_repeats} (NMS), ours and the reference taking "
        "turns so that the shared cores' load hits both alike; ours in float32. Pairwise IoU reference: the "
        f"Shapely loop timed on {args.samples} random pairs and scaled to N x M, plus building the N + M "
        "polygons; max_abs_diff against Shapely on those pairs and as many overlapping ones. NMS reference: "
        "the greedy loop on Shapely IoU, whole; same_keep: identical kept indices in the same order. Load "
        f"average over the last minute at the end: {os.getloadavg()[0]:.1f}. "
        f"Command: python benchmarks/bench_rotated_ops.py {command_line(argv)}"
    )
    text = write_report(os.path.join(args.results, "rotated_ops.md"), "Rotated-box op speed", machine,
                        markdown_table(rows, COLUMNS), notes)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
