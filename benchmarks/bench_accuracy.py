#!/usr/bin/env python
"""Accuracy of DS2D2 against its baselines on synthetic DIOR (CPU, seeded, resumable).

    python benchmarks/bench_accuracy.py --quick           # RetinaNet, seed 1: student alone vs full DS2D2
    nohup python benchmarks/bench_accuracy.py > benchmarks/results/accuracy.log 2>&1 &    # the full table

Per detector: an R-50 teacher (longer schedule) and its high-frequency amplifier are trained once; then,
for each seed, R-18 students with one schedule: alone, FitNet (feature MSE, the FitNet term), the baselines
FGD, PKD, MGD, CrossKD (configs/synthetic/baselines/, their published weights), DS2D2 explicit only,
implicit only, full DS2D2 (the configs' loss weights unless --explicit-weight sets l1 = l2 or
--implicit-weight sets l3 = l4; a zero weight turns a term off).
Everything trains on synthetic_dior_train; the table reports synthetic_dior_test, and val (for choices) next
to it. Each run is a ``train_net.py`` process in WORK/<detector>/<run>; a run whose eval_results.json
exists is kept and skipped, an unfinished one resumes from its last checkpoint, so the command can be re-run
after an interruption. The Markdown/CSV/PNG tables are rewritten after every run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, RESULTS, bar_plot, machine_line, markdown_table, set_threads  # noqa: E402
from benchmarks.common import command_line, write_csv, write_report  # noqa: E402

METRICS = ("AP", "AP50", "AP75", "APs")
METHODS = ("alone", "fitnet", "fgd", "pkd", "mgd", "crosskd", "explicit", "implicit", "ds2d2")
# their configs: configs/synthetic/baselines/<detector>_R50_to_R18_<method>.yaml
BASELINES = ("fgd", "pkd", "mgd", "crosskd")
DETECTORS = ("retinanet", "faster_rcnn")
STAGES = ("R50_teacher", "R50_amplifier", "R18_student", "R50_to_R18")
LOSS_TERMS = ("total_loss", "loss_ds2d2_ex_low", "loss_ds2d2_ex_high", "loss_ds2d2_im_full",
              "loss_ds2d2_im_high", "loss_fitnet", "loss_fgd_fea", "loss_fgd_att", "loss_fgd_global",
              "loss_pkd", "loss_mgd", "loss_crosskd_cls", "loss_crosskd_box")
ZERO_IMPLICIT = ["MODEL.DS2D2.LOSS.IMPLICIT_FULL", "0.0", "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", "0.0"]
ZERO_EXPLICIT = ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", "0.0", "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", "0.0"]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="RetinaNet, one seed, alone vs full DS2D2")
    p.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="student seeds (teacher: seed 1)")
    p.add_argument("--teacher-iters", type=int, default=6000,
                   help="RetinaNet teacher val AP50 25 / 44 / 55 after 1.5k / 3k / 4.5k of 6k iterations")
    p.add_argument("--amplifier-iters", type=int, default=1000)
    p.add_argument("--student-iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4, help="images per iteration")
    p.add_argument("--fitnet-weight", type=float, default=1.0, help="weight of the FitNet feature MSE")
    p.add_argument("--explicit-weight", nargs="+", default=[], metavar="DETECTOR=W",
                   help="l1 = l2 = W for the explicit and ds2d2 runs of DETECTOR (default: the config's)")
    p.add_argument("--implicit-weight", nargs="+", default=[], metavar="DETECTOR=W",
                   help="l3 = l4 = W for the implicit and ds2d2 runs of DETECTOR (default: the config's)")
    p.add_argument("--num-images", type=int, default=1000,
                   help="synthetic DIOR images (50%% train, 20%% val, 30%% test)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every training process")
    p.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--work", default=os.path.join(ROOT, "output", "benchmarks", "accuracy"),
                   help="folder of the runs and the generated data")
    p.add_argument("--results", default=RESULTS, help="where the Markdown/CSV/PNG tables go")
    args = p.parse_args(argv)
    args.command = command_line(argv)
    for flag in ("explicit_weight", "implicit_weight"):
        pairs = [item.split("=", 1) for item in getattr(args, flag)]
        if any(len(pair) != 2 or pair[0] not in DETECTORS for pair in pairs):
            p.error(f"--{flag.replace('_', '-')} takes DETECTOR=W, DETECTOR in {DETECTORS}; "
                    f"got {getattr(args, flag)}")
        setattr(args, flag, {detector: float(weight) for detector, weight in pairs})
    if args.quick:
        args.detectors, args.methods, args.seeds = ["retinanet"], ["alone", "ds2d2"], args.seeds[:1]
    return args


def schedule(iters: int) -> List[str]:
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)",
            "SOLVER.WARMUP_ITERS", str(min(50, iters)), "SOLVER.CHECKPOINT_PERIOD", "100"]


def run_names(args: argparse.Namespace, detector: str) -> Dict[str, str]:
    """Folder names that carry the schedules (and the FitNet weight): a run is reused only by a command that
    would train it the same way."""
    t, a, st = args.teacher_iters, args.amplifier_iters, args.student_iters
    names = {"teacher": f"teacher_it{t}", "amplifier": f"amplifier_it{a}_t{t}"}
    names.update({m: f"{m}_it{st}_t{t}" for m in METHODS})
    names["fitnet"] = f"fitnet{args.fitnet_weight:g}_it{st}_t{t}"
    tags = {m: "" for m in METHODS}
    if detector in args.explicit_weight:
        for method in ("explicit", "ds2d2"):
            tags[method] += f"_ex{args.explicit_weight[detector]:g}"
    if detector in args.implicit_weight:
        for method in ("implicit", "ds2d2"):
            tags[method] += f"_im{args.implicit_weight[detector]:g}"
    for method in ("explicit", "implicit", "ds2d2"):
        names[method] = f"{method}{tags[method]}_it{st}_t{t}"
    return names


def plan(args: argparse.Namespace, detector: str) -> List[Dict]:
    """The runs of one detector, in order: teacher, amplifier, then every (seed, method)."""
    teacher, amplifier, student, distiller = (f"configs/synthetic/{detector}_{s}.yaml" for s in STAGES)
    work, names = os.path.join(args.work, detector), run_names(args, detector)
    t_weights = os.path.join(work, names["teacher"], "model_final.pth")
    a_weights = os.path.join(work, names["amplifier"], "model_final.pth")
    with_teacher = ["MODEL.DS2D2.TEACHER_WEIGHTS", t_weights, "MODEL.DS2D2.AMPLIFIER_WEIGHTS", a_weights]
    explicit, implicit = [], []
    if detector in args.explicit_weight:
        weight = str(args.explicit_weight[detector])
        explicit = ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", weight, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", weight]
    if detector in args.implicit_weight:
        weight = str(args.implicit_weight[detector])
        implicit = ["MODEL.DS2D2.LOSS.IMPLICIT_FULL", weight, "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", weight]
    runs = [
        dict(method="teacher", seed=1, config=teacher, opts=schedule(args.teacher_iters) + ["SEED", "1"]),
        dict(method="amplifier", seed=1, config=amplifier,
             opts=schedule(args.amplifier_iters) + ["SEED", "1", "MODEL.DS2D2.TEACHER_WEIGHTS", t_weights]),
    ]
    variants = {
        "alone": (student, []),
        "fitnet": (distiller, with_teacher + ["MODEL.DS2D2.TERMS", "['FitNet']",
                                              "MODEL.DS2D2.FITNET.WEIGHT", str(args.fitnet_weight)]),
        "explicit": (distiller, with_teacher + ZERO_IMPLICIT + explicit),
        "implicit": (distiller, with_teacher + ZERO_EXPLICIT + implicit),
        "ds2d2": (distiller, with_teacher + explicit + implicit),
    }
    for method in BASELINES:
        variants[method] = (f"configs/synthetic/baselines/{detector}_R50_to_R18_{method}.yaml", with_teacher)
    for seed in args.seeds:
        for method in args.methods:
            config, opts = variants[method]
            runs.append(dict(method=method, seed=seed, config=config,
                             opts=schedule(args.student_iters) + ["SEED", str(seed)] + opts))
    needs_amplifier = any(r["method"] in ("implicit", "ds2d2") for r in runs)
    for run in runs:
        run["detector"] = detector
        shared = run["method"] in ("teacher", "amplifier")
        run["name"] = names[run["method"]] + ("" if shared else f"_s{run['seed']}")
        run["output"] = os.path.join(work, run["name"])
    return [r for r in runs if r["method"] != "amplifier" or needs_amplifier]


def run_training(args: argparse.Namespace, run: Dict, data_root: str) -> None:
    """Train and evaluate one run in its folder (resuming from its checkpoint if any); log in stdout.txt."""
    os.makedirs(run["output"], exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", run["config"]]
    if os.path.isfile(os.path.join(run["output"], "last_checkpoint")):
        cmd.append("--resume")
    cmd += run["opts"] + [
        "DATASETS.TRAIN", "('synthetic_dior_train',)",
        "DATASETS.TEST", "('synthetic_dior_val', 'synthetic_dior_test')",
        "SOLVER.IMS_PER_BATCH", str(args.batch), "DATALOADER.NUM_WORKERS", str(args.workers),
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", run["output"],
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=data_root)
    start = time.time()
    with open(os.path.join(run["output"], "stdout.txt"), "a") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(os.path.join(run["output"], "bench_time.json"), "w") as f:
        json.dump({"seconds": time.time() - start, "resumed": "--resume" in cmd}, f)


def read_result(run: Dict) -> Optional[Dict]:
    """Test metrics (and val AP50, train seconds) of a finished run, else None."""
    path = os.path.join(run["output"], "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f)
    test, val = results["synthetic_dior_test"]["bbox"], results["synthetic_dior_val"]["bbox"]
    row = {k: run[k] for k in ("detector", "method", "seed")}
    row.update({m: float(test[m]) for m in METRICS})
    row["val_AP50"] = float(val["AP50"])
    time_file = os.path.join(run["output"], "bench_time.json")
    if os.path.isfile(time_file):
        with open(time_file) as f:
            row["train_s"] = json.load(f)["seconds"]
    row.update(training_log(run["output"]))
    return row


def training_log(folder: str, last: int = 3) -> Dict[str, float]:
    """From a run's metrics.json: median seconds per iteration, and each loss term averaged over the ``last``
    logged windows (the scale of every term at the end of training)."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    entries = [e for e in entries if "total_loss" in e]
    if not entries:
        return {}
    times = [e["time"] for e in entries if "time" in e]
    out = {"s_per_it": statistics.median(times)} if times else {}
    for key in LOSS_TERMS:
        values = [e[key] for e in entries[-last:] if key in e]
        if values:
            out[key] = statistics.mean(values)
    return out


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and spread (population std over seeds) per (detector, method); dAP50: AP50 gain over the student
    alone."""
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["detector"], row["method"]), []).append(row)
    summary = []
    for (detector, method), members in groups.items():
        entry = {"detector": detector, "method": method, "seeds": len(members)}
        for m in METRICS + ("val_AP50",):
            values = [r[m] for r in members]
            entry[m] = statistics.mean(values)
            entry[f"{m}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        speeds = [r["s_per_it"] for r in members if "s_per_it" in r]
        if speeds:
            entry["s_per_it"] = statistics.mean(speeds)
        summary.append(entry)
    for entry in summary:
        alone = [e for e in summary if e["detector"] == entry["detector"] and e["method"] == "alone"]
        if alone and entry["method"] not in ("teacher", "amplifier"):
            entry["dAP50"] = entry["AP50"] - alone[0]["AP50"]
    return summary


def report(args: argparse.Namespace, rows: List[Dict], machine: str) -> str:
    name = "accuracy_quick" if args.quick else "accuracy"
    columns = ["detector", "method", "seed", *METRICS, "val_AP50", "train_s", "s_per_it", *LOSS_TERMS]
    write_csv(os.path.join(args.results, f"{name}_runs.csv"), rows, columns)
    summary = summarise(rows)
    shown = METRICS + ("val_AP50",)
    show = [dict(e, **{m: f"{e[m]:.1f} ± {e[m + '_std']:.1f}" for m in shown}) for e in summary]
    for e in show:
        e["dAP50"] = f"{e['dAP50']:+.1f}" if "dAP50" in e else ""
    table_cols = ["detector", "method", "seeds", *shown, "dAP50", "s_per_it"]
    csv_cols = ["detector", "method", "seeds"] + [c for m in shown for c in (m, m + "_std")] + table_cols[-2:]
    write_csv(os.path.join(args.results, f"{name}.csv"), summary, csv_cols)
    notes = (f"COCO-style box AP on synthetic_dior_test (mean ± std over seeds {args.seeds}); val_AP50 on "
             f"synthetic_dior_val; dAP50 = AP50 gain over the student alone; s_per_it: median training "
             f"seconds per iteration on this (shared) machine. Teacher R-50 "
             f"{args.teacher_iters} iterations, amplifier {args.amplifier_iters}, students R-18 "
             f"{args.student_iters}, batch {args.batch}, 128 px, {args.num_images} images. FitNet weight "
             f"{args.fitnet_weight:g}; explicit l1 = l2: "
             f"{args.explicit_weight or 'the configs (RetinaNet 1e-5, Faster R-CNN 0.5)'}; implicit l3 = l4: "
             f"{args.implicit_weight or 'the configs (RetinaNet 1, Faster R-CNN 1e-5)'}. "
             f"Command: python benchmarks/bench_accuracy.py {args.command}")
    text = write_report(os.path.join(args.results, f"{name}.md"), "Accuracy on synthetic DIOR", machine,
                        markdown_table(show, table_cols), notes)
    students = [e for e in summary if e["method"] not in ("amplifier",)]
    if students:
        methods = [m for m in ("teacher",) + METHODS if any(e["method"] == m for e in students)]
        detectors = sorted({e["detector"] for e in students})
        pick = {(e["detector"], e["method"]): e for e in students}
        series = {d: [pick.get((d, m), {}).get("AP50", 0.0) for m in methods] for d in detectors}
        errors = {d: [pick.get((d, m), {}).get("AP50_std", 0.0) for m in methods] for d in detectors}
        bar_plot(os.path.join(args.results, f"{name}.png"), methods, series, "AP50 (synthetic_dior_test)",
                 "Accuracy on synthetic DIOR (mean ± std over seeds)", errors=errors)
    return text


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    set_threads(args.threads)
    machine = machine_line()
    data_root = os.path.join(args.work, "datasets")
    from ds2d2.data.synthetic import write_synthetic_dior

    write_synthetic_dior(os.path.join(data_root, "synthetic_dior"), args.num_images, args.data_seed)
    runs = [run for detector in args.detectors for run in plan(args, detector)]
    rows: List[Dict] = []
    text = ""
    for i, run in enumerate(runs, 1):
        row = read_result(run)
        if row is None:
            now = time.strftime("%H:%M:%S")
            print(f"[{now}] run {i}/{len(runs)}: {run['detector']} {run['name']}", flush=True)
            run_training(args, run, data_root)
            row = read_result(run)
            if row is None:
                raise RuntimeError(f"{run['output']}: training finished without eval_results.json")
        else:
            print(f"run {i}/{len(runs)}: {run['detector']} {run['name']} already done, kept", flush=True)
        rows.append(row)
        text = report(args, rows, machine)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
