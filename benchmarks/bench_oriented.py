#!/usr/bin/env python
"""Rotated detectors against their horizontal twins on the same synthetic images (CPU, seeded, resumable).

    python benchmarks/bench_oriented.py --dry-run          # the planned runs; trains nothing
    python benchmarks/bench_oriented.py --tables           # the tables of the finished runs; trains nothing
    nohup python benchmarks/bench_oriented.py > benchmarks/results/oriented.log 2>&1 &

One synthetic dataset in DIOR's layout (``ds2d2.data.synthetic.write_synthetic_dior``) holds every object's
horizontal box (``synthetic_dior_*``) and its oriented box (``synthetic_diorr_*``). For each detector
(RetinaNet, Faster R-CNN), each box kind (horizontal: configs/synthetic/<detector>_*.yaml; oriented:
configs/synthetic/rotated_<detector>_*.yaml) and each seed, the R-50 (the teachers' config) and the R-18
(the students' config, alone) train on the train split with one schedule (--iters), and are scored on val
and test by the DOTA devkit's rules: VOC07 11-point AP50, difficult objects ignored, on the rotated IoU for
oriented boxes (DOTA Task 1) and the box IoU for horizontal ones (Task 2); COCO-style AP (Detectron2's
COCOEvaluator / RotatedCOCOEvaluator) beside it. The R-18's learning rate is its config's times
--student-lr-x (per detector: the student alone's multiplier that benchmarks/bench_accuracy.py chose on val,
RetinaNet 0.25, Faster R-CNN 1), the same for both box kinds. Nothing is chosen on test.

Each run is a ``train_net.py`` process in WORK/<kind>_<detector>/<run>; a finished one (eval_results.json)
is kept, an unfinished one resumes, so the command can be re-run at any point. --parallel N trains up to N
runs at once (bench_accuracy.train_plan; N x --threads should not exceed the cores), --device picks every
run's MODEL.DEVICE (recorded per run). ``--only`` splits the plan between processes; the tables always cover
every finished run of the plan.
"""
import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_accuracy import add_run_flags, check_run_flags, devices_note, load_config  # noqa: E402
from benchmarks.bench_accuracy import run_training, schedule, train_plan, training_device  # noqa: E402
from benchmarks.bench_accuracy import training_log  # noqa: E402
from benchmarks.common import ROOT, RESULTS, bar_plot, command_line, machine_line  # noqa: E402
from benchmarks.common import markdown_table, set_threads, write_csv, write_report  # noqa: E402

DETECTORS = ("retinanet", "faster_rcnn")
KINDS = ("horizontal", "oriented")
MODELS = {"R50": "R50_teacher", "R18": "R18_student"}  # depth -> config suffix
SCORING_KEY = {"horizontal": "", "oriented": "rotated_"}  # + detector: its key in bench_accuracy.SCORING
DATASET = {"horizontal": "synthetic_dior", "oriented": "synthetic_diorr"}
VOC_KEY = {"horizontal": "voc_ap50", "oriented": "voc_rotated_ap50"}
VOC07 = ["TEST.VOC_USE_07_METRIC", "True"]  # the DOTA devkit's AP rule, for both box kinds
STUDENT_LR_X = {"retinanet": 0.25, "faster_rcnn": 1.0}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the planned runs; no training")
    p.add_argument("--tables", action="store_true", help="rewrite the tables from the finished runs")
    p.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--only", nargs="+", default=None, metavar="KIND_DETECTOR",
                   help="train only these of the plan (e.g. oriented_retinanet); tables still cover all")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--iters", type=int, default=1000, help="iterations of every run (R-50 and R-18)")
    p.add_argument("--student-lr-x", nargs="+", default=[], metavar="DETECTOR=X",
                   help=f"the R-18's SOLVER.BASE_LR multiplier (default {STUDENT_LR_X})")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--num-images", type=int, default=1000,
                   help="synthetic images (50%% train, 20%% val, 30%% test)")
    p.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every training process")
    add_run_flags(p)
    p.add_argument("--work", default=os.path.join(ROOT, "output", "benchmarks", "oriented"))
    p.add_argument("--results", default=RESULTS)
    args = p.parse_args(argv)
    check_run_flags(p, args)
    args.command = " ".join(a for a in command_line(argv).split(" ") if a != "--tables")
    lr_x = dict(STUDENT_LR_X)
    for item in args.student_lr_x:
        detector, _, value = item.partition("=")
        if detector not in DETECTORS or not value:
            p.error(f"--student-lr-x takes DETECTOR=X with DETECTOR in {DETECTORS}; got {item!r}")
        lr_x[detector] = float(value)
    args.lr_x = lr_x
    return args


def config_of(kind: str, detector: str, depth: str) -> str:
    prefix = "rotated_" if kind == "oriented" else ""
    return f"configs/synthetic/{prefix}{detector}_{MODELS[depth]}.yaml"


def plan(args: argparse.Namespace) -> List[Dict]:
    """Every run, seed-major (so that a partial table has every row at its first seeds)."""
    runs = []
    for seed in args.seeds:
        for detector in args.detectors:
            for kind in args.kinds:
                for depth in MODELS:
                    config = config_of(kind, detector, depth)
                    opts = schedule(args.iters) + ["SEED", str(seed)]
                    opts += VOC07 if kind == "horizontal" else []  # bench_accuracy sets it for oriented runs
                    if depth == "R18":
                        base_lr = float(load_config(config, []).SOLVER.BASE_LR)
                        opts += ["SOLVER.BASE_LR", f"{base_lr * args.lr_x[detector]:g}"]
                    group = f"{kind}_{detector}"
                    name = f"{depth}_it{args.iters}_s{seed}"
                    runs.append(dict(kind=kind, detector=detector, depth=depth, seed=seed, config=config,
                                     opts=opts, group=group, name=name,
                                     output=os.path.join(args.work, group, name)))
    return runs


def training_run(run: Dict) -> Dict:
    """``run`` as bench_accuracy's runner takes it: ``detector`` its key in SCORING (the box kind's datasets),
    e.g. rotated_retinanet."""
    return dict(run, detector=SCORING_KEY[run["kind"]] + run["detector"])


def train(args: argparse.Namespace, run: Dict, data_root: str) -> None:
    """Train and score one run (a training_run) with bench_accuracy's runner, then delete its checkpoints:
    nothing reuses them."""
    run_training(args, run, data_root)
    for name in os.listdir(run["output"]):
        if name.startswith("model_") and name.endswith(".pth"):
            os.remove(os.path.join(run["output"], name))


def read_result(run: Dict) -> Optional[Dict]:
    path = os.path.join(run["output"], "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f)
    data, voc = DATASET[run["kind"]], VOC_KEY[run["kind"]]
    row = {k: run[k] for k in ("kind", "detector", "depth", "seed", "name")}
    row["mAP50"] = float(results[f"{data}_test"][voc]["mAP50"])
    row["val_mAP50"] = float(results[f"{data}_val"][voc]["mAP50"])
    row["AP"] = float(results[f"{data}_test"]["bbox"]["AP"])
    time_file = os.path.join(run["output"], "bench_time.json")
    if os.path.isfile(time_file):
        with open(time_file) as f:
            row["device"] = json.load(f).get("device", "cpu")  # runs timed before --device: on the CPU
    row.update({k: v for k, v in training_log(run["output"]).items() if k == "s_per_it"})
    return row


def summarise(rows: List[Dict]) -> List[Dict]:
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["detector"], row["depth"], row["kind"]), []).append(row)
    summary = []
    for (detector, depth, kind), members in sorted(groups.items(), key=lambda kv: (
            DETECTORS.index(kv[0][0]), list(MODELS).index(kv[0][1]), KINDS.index(kv[0][2]))):
        entry = {"detector": detector, "model": depth, "boxes": kind, "seeds": len(members)}
        for metric in ("mAP50", "AP", "val_mAP50"):
            values = [r[metric] for r in members]
            entry[metric] = statistics.mean(values)
            entry[f"{metric}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        speeds = [r["s_per_it"] for r in members if "s_per_it" in r]
        entry["s_per_it"] = min(speeds) if speeds else float("nan")
        summary.append(entry)
    return summary


def report(args: argparse.Namespace, rows: List[Dict], machine: str) -> str:
    write_csv(os.path.join(args.results, "oriented_runs.csv"), rows,
              ["kind", "detector", "depth", "seed", "name", "mAP50", "val_mAP50", "AP", "s_per_it", "device"])
    summary = summarise(rows)
    metrics = ("mAP50", "AP", "val_mAP50")
    write_csv(os.path.join(args.results, "oriented.csv"), summary,
              ["detector", "model", "boxes", "seeds"] + [c for m in metrics for c in (m, m + "_std")]
              + ["s_per_it"])
    shown = [dict(e, **{m: f"{e[m]:.1f} ± {e[m + '_std']:.1f}" for m in metrics}) for e in summary]
    table = markdown_table(shown, ["detector", "model", "boxes", "seeds", *metrics, "s_per_it"])
    lr = ", ".join(f"{d} x{x:g}" for d, x in args.lr_x.items())
    notes = (f"mAP50: the DOTA devkit's rules (VOC07 11-point AP50, difficult objects ignored) on "
             f"{DATASET['oriented']}_test with the rotated IoU (Task 1) for oriented boxes, on "
             f"{DATASET['horizontal']}_test with the box IoU (Task 2) for horizontal ones; val_mAP50 the "
             f"same on val; AP: COCO-style AP@[.5:.95] (RotatedCOCOEvaluator for oriented boxes). Mean ± std "
             f"over seeds {args.seeds}. Every run {args.iters} iterations, batch {args.batch}, 128 px, "
             f"{args.num_images} images, from scratch; R-50 at its config's learning rate, R-18 at its "
             f"config's times ({lr}). "
             f"s_per_it: median training seconds per iteration of the fastest seed on this shared machine "
             f"({devices_note(rows)}). "
             f"Command: python benchmarks/bench_oriented.py {args.command}")
    title = "Rotated detectors and their horizontal twins on synthetic data"
    text = write_report(os.path.join(args.results, "oriented.md"), title, machine, table, notes)
    if summary:
        labels = [f"{e['detector']} {e['model']}" for e in summary if e["boxes"] == summary[0]["boxes"]]
        series = {kind: [e["mAP50"] for e in summary if e["boxes"] == kind] for kind in KINDS}
        errors = {kind: [e["mAP50_std"] for e in summary if e["boxes"] == kind] for kind in KINDS}
        if all(len(v) == len(labels) for v in series.values()):
            bar_plot(os.path.join(args.results, "oriented.png"), labels, series, "mAP50 (DOTA rules, test)",
                     "Rotated detectors vs horizontal twins (mean ± std over seeds)", errors=errors)
    return text


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    runs = plan(args)
    if args.dry_run:
        text = "\n".join(f"{r['group']}/{r['name']}: {r['config']} {' '.join(r['opts'])}" for r in runs)
        print(text, flush=True)
        return text
    set_threads(args.threads)  # the machine line names the runs' threads, also when --tables rewrites it
    machine = machine_line(training_device(args))
    if not args.tables:
        data_root = os.path.join(args.work, "datasets")
        from ds2d2.data.synthetic import write_synthetic_dior

        write_synthetic_dior(os.path.join(data_root, "synthetic_dior"), args.num_images, args.data_seed)
        mine = [training_run(r) for r in runs if args.only is None or r["group"] in args.only]

        def write_tables(finished: List[Dict]) -> str:  # every finished run of the plan, --only's or not
            return report(args, [r for r in map(read_result, runs) if r is not None], machine)

        train_plan(args, lambda: (mine, f"{len(runs)} in the plan"), write_tables, data_root, train)
    text = report(args, [r for r in map(read_result, runs) if r is not None], machine)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
