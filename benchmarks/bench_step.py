#!/usr/bin/env python
"""Training-step cost of DS2D2: seconds per iteration and peak memory per variant, plus a component breakdown.

    python benchmarks/bench_step.py                  # 512 and 800 px, R-50 and R-101 teachers, both detectors
    python benchmarks/bench_step.py --sizes 512 --teachers 101 --repeats 3 --warmup 1    # reduced
    python benchmarks/bench_step.py --detectors rotated_retinanet rotated_faster_rcnn    # step_rotated.*

Models are the DIOR configs (student R-18, FPN 256, 20 classes; teacher R-50 / R-101 from configs/DIOR;
the authors' DIOR loss weights) with random weights (speed does not depend on them). The rotated families
(``--detectors rotated_retinanet rotated_faster_rcnn``) use the DIOR-R configs (configs/DIOR-R, the same
trunks and their horizontal twin's loss weights) on batches of oriented boxes; their tables go to
step_rotated.{md,csv,png}, so a run of either kind never overwrites the other's. For each detector,
teacher and input size, each variant runs in its own process (so that peak memory is its own): ``alone``
(the student), ``teacher_fwd`` (the distiller with every weight 0: student + teacher forward; check_config
refuses such a config, so it is built with that one check bypassed), ``explicit``
(implicit weights 0), ``implicit`` (explicit weights 0) and ``full``. A step is forward, backward and SGD
update on a random batch with ``--boxes`` ground-truth boxes per image (oriented ones, at random angles, for
a rotated detector). The full variant also times its
components alone on the same batch (forward + backward where a gradient flows): teacher backbone forward,
DISW (all levels), explicit stream (adapter, DWT, DISW, weighted band MSE), full-frequency amplifier (KD
through the teacher head) and high-frequency amplifier (HF features + KD through the amplifier head); the
amplifier components keep the graph between repeats, so they include the RoI pooling backward that the real
step shares with the student.
Target: full <= 1.15 x (teacher_fwd + both amplifier components).
Peak memory (peak_mb, and step_extra_mb: its rise during the steps): on CUDA the allocator's maximum, on CPU
the process's peak RSS (model building included).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional, Tuple
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, RESULTS, bar_plot, machine_line, markdown_table, median_time  # noqa: E402
from benchmarks.common import command_line, set_threads, write_csv, write_report  # noqa: E402

VARIANTS = ("alone", "teacher_fwd", "explicit", "implicit", "full")
WEIGHTS = {  # which of (EXPLICIT_LOW, EXPLICIT_HIGH, IMPLICIT_FULL, IMPLICIT_HIGH) keep the config's value
    "teacher_fwd": (0, 0, 0, 0), "explicit": (1, 1, 0, 0), "implicit": (0, 0, 1, 1), "full": (1, 1, 1, 1),
}
LOSS_KEYS = ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")
# The authors' DIOR weights l1..l4 (docs/method.md), set on the student config like configs/DIOR/ds2d2/*.yaml;
# a rotated family takes its horizontal twin's, as configs/DIOR-R/ds2d2/*.yaml
AUTHORS_DIOR = {"retinanet": (1e-5, 1e-5, 1.0, 1.0), "faster_rcnn": (0.5, 0.5, 1e-5, 1e-5)}
COMPONENTS = ("teacher_fwd_ms", "disw_ms", "explicit_ms", "amp_full_ms", "amp_high_ms")


class Family(NamedTuple):
    """What a detector's rows differ in: the folder of its configs under configs/, whether its boxes are
    oriented (``boxes`` names them in the notes), and the name and title of its report files in --results."""
    configs: str
    oriented: bool
    boxes: str
    report: str
    title: str


HORIZONTAL = Family("DIOR", False, "boxes", "step", "Training-step cost")
ROTATED = Family("DIOR-R", True, "oriented boxes (random angles)", "step_rotated",
                 "Training-step cost, rotated detectors (DIOR-R configs)")
DETECTORS = {"retinanet": HORIZONTAL, "faster_rcnn": HORIZONTAL,
             "rotated_retinanet": ROTATED, "rotated_faster_rcnn": ROTATED}


def cfg_paths(detector: str, depth: int) -> Dict[str, str]:
    base = os.path.join(ROOT, "configs", DETECTORS[detector].configs)
    return {"student": os.path.join(base, f"{detector}_R18.yaml"),
            "teacher": os.path.join(base, f"{detector}_R{depth}.yaml")}


def loss_weights(detector: str) -> Tuple[float, ...]:
    """The authors' DIOR l1..l4 of ``detector`` (of its horizontal twin for a rotated family)."""
    return AUTHORS_DIOR[detector.removeprefix("rotated_")]


def load(path: str, opts: List[str]):
    from ds2d2.config import load_config

    return load_config(path, opts, register=False)


def write_teacher_files(detector: str, depth: int, device: str, folder: str) -> Dict[str, str]:
    """Random teacher (YAML + weights) and amplifier checkpoint of one teacher depth, in ``folder``."""
    from detectron2.modeling import build_model

    names = ("teacher.yaml", "teacher.pth", "amp.pth")
    out = {k: os.path.join(folder, f"{detector}_R{depth}_{k}") for k in names}
    teacher_cfg = load(cfg_paths(detector, depth)["teacher"], ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    with open(out["teacher.yaml"], "w") as f:
        f.write(teacher_cfg.dump())
    torch.save({"model": build_model(teacher_cfg).state_dict()}, out["teacher.pth"])
    detector_name = teacher_cfg.MODEL.META_ARCHITECTURE
    amp_cfg = teacher_cfg.clone()
    amp_cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Amplifier", "MODEL.DS2D2.DETECTOR",
                             detector_name, "MODEL.DS2D2.TEACHER_WEIGHTS", out["teacher.pth"]])
    torch.save({"model": build_model(amp_cfg).state_dict()}, out["amp.pth"])
    return out


def random_batch(num_images: int, size: int, boxes: int, seed: int = 0, oriented: bool = False) -> List[Dict]:
    """``num_images`` random images of ``size`` px with ``boxes`` objects each, sides size/64 to size/6 px:
    horizontal boxes, or (``oriented``) the same rectangles turned about their centres by uniform angles in
    [-90, 90) degrees, in the canonical XYWHA form (ds2d2/rotated/boxes.py)."""
    from detectron2.structures import Boxes, Instances, RotatedBoxes

    from ds2d2.rotated.boxes import canonical_rotated_boxes

    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        side = torch.empty(boxes, 2).uniform_(size / 64, size / 6, generator=generator)
        corner = torch.rand(boxes, 2, generator=generator) * (size - side)
        instances = Instances((size, size))
        if oriented:
            angle = torch.empty(boxes, 1).uniform_(-90, 90, generator=generator)
            xywha = torch.cat([corner + side / 2, side, angle], dim=1)
            instances.gt_boxes = RotatedBoxes(canonical_rotated_boxes(xywha))
        else:
            instances.gt_boxes = Boxes(torch.cat([corner, corner + side], dim=1))
        instances.gt_classes = torch.randint(0, 20, (boxes,), generator=generator)
        image = torch.rand(3, size, size, generator=generator) * 255
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def build_variant(spec: Dict):
    from detectron2.modeling import build_model

    cfg = load(cfg_paths(spec["detector"], spec["depth"])["student"],
               ["MODEL.WEIGHTS", "", "MODEL.DEVICE", spec["device"]])
    if spec["variant"] == "alone":
        return build_model(cfg)
    ds = cfg.MODEL.DS2D2
    ds.DETECTOR, cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE, "DS2D2Distiller"
    ds.TEACHER_CONFIG, ds.TEACHER_WEIGHTS = spec["files"]["teacher.yaml"], spec["files"]["teacher.pth"]
    ds.AMPLIFIER_WEIGHTS = spec["files"]["amp.pth"]
    for key, weight, keep in zip(LOSS_KEYS, loss_weights(spec["detector"]), WEIGHTS[spec["variant"]]):
        ds.LOSS[key] = weight if keep else 0.0
    if spec["variant"] != "teacher_fwd":
        return build_model(cfg)
    # Every weight 0 is refused by check_config (nothing would be distilled); here it is the point: the
    # distiller's own cost, student + teacher forward, with no term built.
    from ds2d2.meta_arch import distiller

    with mock.patch.object(distiller, "check_config", lambda cfg, datasets=(): None):
        return build_model(cfg)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def components(model, batch: List[Dict], repeats: int, device: str) -> Dict[str, float]:
    """Milliseconds of each DS2D2 component alone on ``batch`` (forward + backward where a gradient flows)."""
    from ds2d2.disw import disw_maps
    from ds2d2.losses import explicit_loss_from_bands
    from ds2d2.wavelet import dwt, high_frequency, high_frequency_from_bands

    images = model.student.preprocess_image(batch)
    gt = [x["instances"].to(model.device) for x in batch]
    size = tuple(images.tensor.shape[-2:])
    with torch.no_grad():
        s_feats = model.student.backbone(images.tensor)
    t_feats = model.teacher_features(batch, size)
    leaves = {f: v.detach().requires_grad_() for f, v in s_feats.items()}
    # the student's own targets (so the RoI family reuses pooled features), as in a same-family step
    _, targets, _ = model.student_family.detection_losses(images, leaves, gt)
    family, kd = model.teacher_family, model.terms["DS2D2Implicit"].kd
    heads = family.levels
    boxes = [g.gt_boxes.tensor for g in gt]
    t_bands = {f: dwt(t_feats[f], model.wave) for f in set(model.in_features) | set(heads)}

    def teacher_fwd() -> None:  # normalisation + trunk, no grad
        model.teacher_features(batch, size)

    def disw() -> None:
        disw_maps(boxes, size, [tuple(t_bands[f][0].shape[-2:]) for f in model.in_features])

    def explicit() -> None:
        low, high = explicit_loss_from_bands(
            [dwt(model.adapters[f](leaves[f]), model.wave) for f in model.in_features],
            [t_bands[f] for f in model.in_features], boxes, size,
        )
        (low + high).backward()

    def head_kd(head, student: Dict, teacher: Dict) -> None:
        with torch.no_grad():
            t = family.predict(head, teacher, targets)
        kd(family, family.predict(head, student, targets), t, targets).backward(retain_graph=True)

    def amp_full() -> None:
        head_kd(family.head, leaves, t_feats)

    def amp_high() -> None:
        s_hf = {f: high_frequency(leaves[f], model.wave) for f in heads}
        with torch.no_grad():
            t_hf = {f: high_frequency_from_bands(t_bands[f][1], tuple(t_feats[f].shape[-2:])) for f in heads}
        head_kd(model.terms["DS2D2Implicit"].amplifier_head, s_hf, t_hf)

    parts = dict(teacher_fwd_ms=teacher_fwd, disw_ms=disw, explicit_ms=explicit, amp_full_ms=amp_full,
                 amp_high_ms=amp_high)
    return {name: median_time(fn, repeats, device=device) * 1e3 for name, fn in parts.items()}


def measure(spec: Dict) -> Dict:
    """Time one variant's training step (runs in a worker process)."""
    from detectron2.utils.events import EventStorage

    set_threads(spec["threads"])
    torch.manual_seed(0)
    device = spec["device"]
    model = build_variant(spec)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # learning rate 0: the update costs what it always does, and random weights stay put (no divergence)
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    batch = random_batch(spec["batch"], spec["size"], spec["boxes"],
                         oriented=DETECTORS[spec["detector"]].oriented)
    rss_before = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()

    with EventStorage(0):  # detectors log training statistics into one
        seconds = median_time(step, spec["repeats"], warmup=spec["warmup"], device=device)
        parts = components(model, batch, spec["repeats"], device) if spec["variant"] == "full" else {}
    result = dict(spec, s_per_it=seconds, **parts)
    result.pop("files")
    if device.startswith("cuda"):
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["step_extra_mb"] = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
    else:
        result["peak_mb"], result["step_extra_mb"] = peak_rss_mb(), peak_rss_mb() - rss_before
    return result


def run_worker(spec: Dict) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench_step worker failed for {spec['variant']}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def merge_rounds(results: List[Dict]) -> Dict:
    """One row from the rounds of a variant: median times, largest memory."""
    row = dict(results[0])
    for key in ("s_per_it", *COMPONENTS):
        if key in row:
            row[key] = statistics.median(r[key] for r in results)
    for key in ("peak_mb", "step_extra_mb"):
        row[key] = max(r[key] for r in results)
    return row


def add_ratios(rows: List[Dict]) -> None:
    """Each variant's time as a ratio to the student alone of its group, and the target check on ``full``."""
    key = lambda r: (r["device"], r["detector"], r["depth"], r["size"])  # noqa: E731
    by_group: Dict[tuple, Dict[str, Dict]] = {}
    for row in rows:
        by_group.setdefault(key(row), {})[row["variant"]] = row
    for group in by_group.values():
        alone = group.get("alone")
        for row in group.values():
            if alone:
                row["ratio"] = row["s_per_it"] / alone["s_per_it"]
        full, teacher = group.get("full"), group.get("teacher_fwd")
        if full and teacher:
            bound = teacher["s_per_it"] + (full["amp_full_ms"] + full["amp_high_ms"]) / 1e3
            full["vs_inherent"] = full["s_per_it"] / bound
            full["met"] = full["vs_inherent"] <= 1.15


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detectors", nargs="+", choices=sorted(DETECTORS), default=["retinanet", "faster_rcnn"])
    p.add_argument("--teachers", nargs="+", type=int, choices=[50, 101], default=[50, 101],
                   help="teacher depths")
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 800], help="input sides (px)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--boxes", type=int, default=20, help="ground-truth boxes per image")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per variant, the variants taking turns; times are medians over rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(json.loads(args.worker))), flush=True)
        return ""
    set_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for device in devices:
            for detector in args.detectors:
                for depth in args.teachers:
                    files = write_teacher_files(detector, depth, device, folder)
                    for size in args.sizes:
                        runs: Dict[str, List[Dict]] = {v: [] for v in args.variants}
                        for _ in range(args.rounds):  # variants take turns, so load changes hit them alike
                            for variant in args.variants:
                                spec = dict(device=device, detector=detector, depth=depth, size=size,
                                            variant=variant, batch=args.batch, boxes=args.boxes,
                                            repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                            files=files)
                                runs[variant].append(run_worker(spec))
                                print(f"{device} {detector} R-{depth} {size}px {variant}: "
                                      f"{runs[variant][-1]['s_per_it']:.3f} s/it", flush=True)
                        rows += [merge_rounds(results) for results in runs.values()]
    add_ratios(rows)
    for row in rows:
        row["teacher"] = f"R-{row['depth']}"
    machine = "; ".join(machine_line(d) for d in devices)
    reports = dict.fromkeys(DETECTORS[d] for d in args.detectors)  # in the order asked for
    texts = [write_tables(args, [r for r in rows if DETECTORS[r["detector"]] == family], family, machine)
             for family in reports]
    text = "\n".join(texts)
    print(text, flush=True)
    return text


def write_tables(args: argparse.Namespace, rows: List[Dict], family: Family, machine: str) -> str:
    """``rows`` as <report>.csv, <report>.png (each variant's s/it over the student alone) and <report>.md."""
    name = family.report
    columns = ["device", "detector", "teacher", "size", "variant", "s_per_it", "ratio", "peak_mb",
               "step_extra_mb", *COMPONENTS, "vs_inherent", "met"]
    write_csv(os.path.join(args.results, f"{name}.csv"), rows, columns)
    groups = sorted({(r["device"], r["detector"], r["teacher"], r["size"]) for r in rows}, key=str)
    labels = [f"{d} {det} {t} {s}px" for d, det, t, s in groups]
    pick = {(r["device"], r["detector"], r["teacher"], r["size"], r["variant"]): r for r in rows}
    series = {v: [pick.get(g + (v,), {}).get("ratio", 0.0) for g in groups] for v in args.variants}
    bar_plot(os.path.join(args.results, f"{name}.png"), labels, series, "s/it relative to the student alone",
             f"{family.title} (student R-18)")
    notes = (
        f"Batch {args.batch}, {args.boxes} {family.boxes}/image; median of {args.repeats} steps after "
        f"{args.warmup} warm-up, then median over {args.rounds} round(s) of one process per variant. ratio: "
        "s/it over the student alone; vs_inherent (full only): s/it over teacher_fwd + both amplifier "
        "components (target <= 1.15). Component columns: ms, each measured alone on the same batch. "
        f"Command: python benchmarks/bench_step.py {command_line(args.argv)}"
    )
    return write_report(os.path.join(args.results, f"{name}.md"), family.title, machine,
                        markdown_table(rows, columns), notes)


if __name__ == "__main__":
    main()
