#!/usr/bin/env python
"""Accuracy of DS2D2 against its baselines on synthetic DIOR (CPU, seeded, resumable), all tuned alike.

    python benchmarks/bench_accuracy.py --quick           # RetinaNet, seed 1, x1 only: alone vs full DS2D2
    python benchmarks/bench_accuracy.py --dry-run         # the runs the full table plans now; trains nothing
    python benchmarks/bench_accuracy.py --tables          # the tables of the finished runs; trains nothing
    nohup python benchmarks/bench_accuracy.py > benchmarks/results/accuracy.log 2>&1 &    # the full table
    python benchmarks/bench_accuracy.py --detectors rotated_retinanet rotated_faster_rcnn    # oriented boxes

Per detector: an R-50 teacher (longer schedule) and its high-frequency amplifier are trained once; then R-18
students with one schedule: alone, the baselines FitNet, FGD, PKD, MGD, CrossKD
(configs/synthetic/baselines/, their published weights; FitNet, which has none, the term's default 1),
DS2D2 explicit only, implicit only, full DS2D2 (configs/synthetic/<detector>_R50_to_R18.yaml).
The detectors: retinanet and faster_rcnn (the default), and the rotated families rotated_retinanet and
rotated_faster_rcnn (configs/synthetic/rotated_*, asked for by name).

Tuning, the same small budget for every method: each of FitNet, FGD, PKD, MGD, CrossKD and DS2D2 multiplies
all of its loss weights (read from the run's own config: FGD's alpha, beta, gamma, lambda; DS2D2's l1..l4;
...) by one multiplier x of --grid (default 0.1 1 10). The first seed trains at every x; the x with the best
synthetic_dior_val AP50 is chosen (ties: the x closest to 1, on a log scale; test is never read for it), and
the other seeds train at that x only. DS2D2 explicit only and implicit only use DS2D2's x (asked for without
ds2d2, they still train its grid). The student alone has no loss weight: its one knob, chosen the same way, is
its learning rate, x of --alone-lr-grid (default 0.25 1) times its config's SOLVER.BASE_LR (the RetinaNet
student alone trains at 4x the DS2D2 student's rate, as the authors'; x0.25 is the DS2D2 student's rate).
--fitnet-weight, --explicit-weight and --implicit-weight replace a config's weight as the x1 value. Folder
names: x1 keeps the untuned benchmark's (ds2d2_it1000_t6000_s1), another x adds _x<x>
(ds2d2_x10_it1000_t6000_s1), _lr<x> for the student alone (alone_lr0.25_it1000_t6000_s1); FitNet's names carry
its absolute weight (fitnet10_... is FitNet at weight 10, whichever base and x give it).

Everything trains on synthetic_dior_train; the table reports synthetic_dior_test for the chosen runs, and val
next to it. The rotated detectors train on synthetic_diorr_train (the same generated images, oriented boxes),
choose on synthetic_diorr_val and report synthetic_diorr_test by the DOTA Task-1 rule, the VOC07 11-point
AP50 on the rotated IoU (mAP50, what the choice reads), with COCO-style AP on the rotated IoU beside it; their
tables go to accuracy_oriented* (the horizontal ones to accuracy*, so neither overwrites the other; --suffix
names a rerun's, e.g. accuracy_second_pass*).

Each run is a ``train_net.py`` process in WORK/<detector>/<run>; a run whose eval_results.json exists is
kept and skipped, an unfinished one resumes from its last checkpoint, so the command can be re-run after an
interruption at any point. The Markdown/CSV/PNG tables are rewritten after every run.

--device (default cpu; cuda on a GPU machine) is every run's MODEL.DEVICE, recorded in its bench_time.json
(the runs CSV's ``device`` column; the notes count the runs per device); it is not in the folder names, so a
run finished on one device is kept by a command on another. --parallel N trains up to N runs at once, each a
process with --threads torch threads (N x --threads should not exceed the cores; on a GPU the N trainings
share the card); a run starts once the runs whose weights it loads have finished (ready_runs). A failed run
lets the others finish, then stops the command naming its folder; Ctrl-C or SIGTERM stops the running
trainings, which resume from their checkpoints next time.
"""
import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Collection, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, RESULTS, bar_plot, machine_line, markdown_table, set_threads  # noqa: E402
from benchmarks.common import command_line, write_csv, write_report  # noqa: E402

METRICS = ("AP", "AP50", "AP75", "APs")  # COCO-style, of the evaluator's "bbox" results
METHODS = ("alone", "fitnet", "fgd", "pkd", "mgd", "crosskd", "explicit", "implicit", "ds2d2")
# their configs: configs/synthetic/baselines/<detector>_R50_to_R18_<method>.yaml
BASELINES = ("fitnet", "fgd", "pkd", "mgd", "crosskd")
# methods with their own multiplier, chosen on val; explicit and implicit (DS2D2's ablations) use DS2D2's
TUNED = ("fitnet", "fgd", "pkd", "mgd", "crosskd", "ds2d2")
FOLLOW_DS2D2 = ("explicit", "implicit")
STAGES = ("R50_teacher", "R50_amplifier", "R18_student", "R50_to_R18")
VAL, TEST = "synthetic_dior_val", "synthetic_dior_test"  # the horizontal detectors' (HORIZONTAL)


class Scoring(NamedTuple):
    """How the runs of one kind of detector are trained and scored: on ``train``, the tuning choice on
    ``val`` by the ``headline`` metric, the table on ``test``. ``metrics``: the table's (column, evaluator,
    field) in eval_results.json; ``opts``: overrides of every run; ``report``: the name of the report files
    in --results, ``title`` their title, ``metric_note`` the notes' first words."""
    train: str
    val: str
    test: str
    metrics: Tuple[Tuple[str, str, str], ...]
    headline: str
    opts: Tuple[str, ...]
    report: str
    title: str
    metric_note: str

    @property
    def columns(self) -> Tuple[str, ...]:
        return tuple(column for column, _, _ in self.metrics)

    def read(self, results: Dict, split: str) -> Dict[str, float]:
        """Every metric of ``split`` (one of the run's DATASETS.TEST) from a run's eval_results.json."""
        return {column: float(results[split][evaluator][field]) for column, evaluator, field in self.metrics}


BOX_AP = tuple((m, "bbox", m) for m in METRICS)
HORIZONTAL = Scoring("synthetic_dior_train", VAL, TEST, BOX_AP, "AP50", (), "accuracy",
                     "Accuracy on synthetic DIOR", "COCO-style box AP")
# The DOTA Task-1 rule (the VOC07 11-point AP50 on the rotated IoU) heads the rotated detectors' table;
# COCO-style AP on the rotated IoU (RotatedCOCOEvaluator's "bbox") is kept beside it.
ORIENTED = Scoring(
    "synthetic_diorr_train", "synthetic_diorr_val", "synthetic_diorr_test",
    (("mAP50", "voc_rotated_ap50", "mAP50"),) + BOX_AP, "mAP50", ("TEST.VOC_USE_07_METRIC", "True"),
    "accuracy_oriented", "Accuracy of the rotated detectors on synthetic DIOR-R",
    "mAP50: the DOTA Task-1 rule (VOC07 11-point AP50 on the rotated IoU, TEST.VOC_USE_07_METRIC True), "
    "the headline; AP, AP50, AP75, APs: COCO-style box AP on the rotated IoU (RotatedCOCOEvaluator); all",
)
SCORING = {"retinanet": HORIZONTAL, "faster_rcnn": HORIZONTAL,
           "rotated_retinanet": ORIENTED, "rotated_faster_rcnn": ORIENTED}
DETECTORS = tuple(SCORING)
DEFAULT_DETECTORS = ("retinanet", "faster_rcnn")  # the rotated ones are asked for by name
LR = "SOLVER.BASE_LR"  # the student alone's tuned value
# The loss weights of each distillation term (MODEL.DS2D2.TERMS): a multiplier scales every one of them.
TERM_WEIGHTS = {
    "DS2D2Explicit": ("MODEL.DS2D2.LOSS.EXPLICIT_LOW", "MODEL.DS2D2.LOSS.EXPLICIT_HIGH"),
    "DS2D2Implicit": ("MODEL.DS2D2.LOSS.IMPLICIT_FULL", "MODEL.DS2D2.LOSS.IMPLICIT_HIGH"),
    "FitNet": ("MODEL.DS2D2.FITNET.WEIGHT",),
    "FGD": tuple(f"MODEL.DS2D2.FGD.{k}" for k in ("ALPHA", "BETA", "GAMMA", "LAMBDA")),
    "PKD": ("MODEL.DS2D2.PKD.WEIGHT",),
    "MGD": ("MODEL.DS2D2.MGD.WEIGHT",),
    "CrossKD": ("MODEL.DS2D2.CROSSKD.CLS_WEIGHT", "MODEL.DS2D2.CROSSKD.BOX_WEIGHT"),
}
LOSS_TERMS = ("total_loss", "loss_ds2d2_ex_low", "loss_ds2d2_ex_high", "loss_ds2d2_im_full",
              "loss_ds2d2_im_high", "loss_fitnet", "loss_fgd_fea", "loss_fgd_att", "loss_fgd_global",
              "loss_pkd", "loss_mgd", "loss_crosskd_cls", "loss_crosskd_box")
ZERO_IMPLICIT = ["MODEL.DS2D2.LOSS.IMPLICIT_FULL", "0.0", "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", "0.0"]
ZERO_EXPLICIT = ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", "0.0", "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", "0.0"]
TEACHER_WEIGHTS, AMPLIFIER_WEIGHTS = "MODEL.DS2D2.TEACHER_WEIGHTS", "MODEL.DS2D2.AMPLIFIER_WEIGHTS"
IMPLICIT_HIGH = "MODEL.DS2D2.LOSS.IMPLICIT_HIGH"  # the distiller loads the amplifier only when it is > 0
DEVICE = re.compile(r"cpu|cuda(:\d+)?")  # what --device takes


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--device and --parallel, of every benchmark that trains through run_training / train_plan."""
    p.add_argument("--device", default="cpu",
                   help="MODEL.DEVICE of every training (cpu, cuda, cuda:1), recorded in its "
                        "bench_time.json; not part of the run folders' names")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="train up to N runs at once, each with --threads torch threads (N x threads should "
                        "not exceed the cores; on a GPU the trainings share the card); a run waits for the "
                        "runs whose weights it loads")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the .pth files of finished student runs (by default deleted once the run is "
                        "evaluated: the tables read only its logs and results, ~290 MB per Faster R-CNN run)")


def check_run_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a --device torch would not take, or a --parallel below 1."""
    if not DEVICE.fullmatch(args.device):
        p.error(f"--device takes cpu, cuda or cuda:<index>; got {args.device!r}")
    if args.parallel < 1:
        p.error(f"--parallel takes a number of trainings >= 1; got {args.parallel}")


def add_tuning_flags(p: argparse.ArgumentParser) -> None:
    """--seeds, --grid and --alone-lr-grid, of every benchmark that tunes as this one."""
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                   help="student seeds; the first one trains the tuning grid (teacher: seed 1)")
    p.add_argument("--grid", nargs="+", type=float, default=[0.1, 1.0, 10.0], metavar="X",
                   help="multipliers of a method's loss weights tried on the first seed (chosen on val AP50)")
    p.add_argument("--alone-lr-grid", nargs="+", type=float, default=[0.25, 1.0], metavar="X",
                   help="multipliers of the student alone's SOLVER.BASE_LR tried on the first seed "
                        "(chosen on val AP50)")


def check_tuning_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a multiplier of --grid or --alone-lr-grid that is not positive and finite; sort each, without
    repeats."""
    for flag in ("grid", "alone_lr_grid"):
        values = getattr(args, flag)
        if any(not x > 0 or math.isinf(x) for x in values):
            p.error(f"--{flag.replace('_', '-')} takes positive finite multipliers; got {values}")
        setattr(args, flag, sorted(set(values)))


def add_mode_flags(p: argparse.ArgumentParser, quick: str) -> None:
    """--quick (``quick``: what it trains), --dry-run and --tables of the benchmarks that plan like this."""
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs planned now (name, config, overrides) and those waiting; no training")
    p.add_argument("--tables", action="store_true",
                   help="rewrite the tables from the planned runs that have finished (e.g. while another "
                        "process trains the rest); no training")
    p.add_argument("--suffix", default="",
                   help="appended to the report files' names (e.g. _second_pass: accuracy_second_pass.md), "
                        "so that a rerun keeps the tables it is compared with")


def report_name(args: argparse.Namespace, base: str) -> str:
    """The stem of a report's files in --results: ``base``, then --suffix, then _quick under --quick."""
    return base + args.suffix + ("_quick" if args.quick else "")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_flags(p, "RetinaNet (or --detectors), one seed, alone vs full DS2D2, --grid 1")
    p.add_argument("--detectors", nargs="+", choices=DETECTORS, default=None,
                   help=f"default: {' '.join(DEFAULT_DETECTORS)} (--quick: retinanet); the rotated ones, "
                        "asked for by name, report to accuracy_oriented*")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add_tuning_flags(p)
    p.add_argument("--teacher-iters", type=int, default=6000,
                   help="RetinaNet teacher val AP50 25 / 44 / 55 after 1.5k / 3k / 4.5k of 6k iterations")
    p.add_argument("--amplifier-iters", type=int, default=1000)
    p.add_argument("--student-iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4, help="images per iteration")
    p.add_argument("--fitnet-weight", type=float, default=None,
                   help="x1 weight of the FitNet feature MSE (default: the config's FITNET.WEIGHT)")
    p.add_argument("--explicit-weight", nargs="+", default=[], metavar="DETECTOR=W",
                   help="x1 l1 = l2 = W for the explicit and ds2d2 runs of DETECTOR (default: the config's)")
    p.add_argument("--implicit-weight", nargs="+", default=[], metavar="DETECTOR=W",
                   help="x1 l3 = l4 = W for the implicit and ds2d2 runs of DETECTOR (default: the config's)")
    p.add_argument("--num-images", type=int, default=1000,
                   help="synthetic DIOR images (50%% train, 20%% val, 30%% test)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every training process")
    p.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    add_run_flags(p)
    p.add_argument("--work", default=os.path.join(ROOT, "output", "benchmarks", "accuracy"),
                   help="folder of the runs and the generated data")
    p.add_argument("--results", default=RESULTS, help="where the Markdown/CSV/PNG tables go")
    args = p.parse_args(argv)
    check_run_flags(p, args)
    # the command that trains what the tables show (--tables only rewrites them)
    args.command = " ".join(a for a in command_line(argv).split(" ") if a != "--tables")
    for flag in ("explicit_weight", "implicit_weight"):
        pairs = [item.split("=", 1) for item in getattr(args, flag)]
        if any(len(pair) != 2 or pair[0] not in DETECTORS for pair in pairs):
            p.error(f"--{flag.replace('_', '-')} takes DETECTOR=W, DETECTOR in {DETECTORS}; "
                    f"got {getattr(args, flag)}")
        setattr(args, flag, {detector: float(weight) for detector, weight in pairs})
    check_tuning_flags(p, args)
    if args.detectors is None:
        args.detectors = ["retinanet"] if args.quick else list(DEFAULT_DETECTORS)
    if args.quick:
        args.methods, args.seeds = ["alone", "ds2d2"], args.seeds[:1]
        args.grid = args.alone_lr_grid = [1.0]
    return args


def schedule(iters: int) -> List[str]:
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)",
            "SOLVER.WARMUP_ITERS", str(min(50, iters)), "SOLVER.CHECKPOINT_PERIOD", "100"]


# ------------------------------------------------------------------------------------------------------------
# Loss weights: read from the run's config, scaled by the multiplier
# ------------------------------------------------------------------------------------------------------------

_CONFIGS: Dict[Tuple[str, Tuple[str, ...]], object] = {}


def load_config(config: str, opts: Sequence[str]):
    """The project's config of ``config`` (relative to the repository root) with the overrides ``opts``,
    cached: the plan is rebuilt after every run."""
    key = (config, tuple(opts))
    if key not in _CONFIGS:
        from ds2d2.config import load_config as loader

        _CONFIGS[key] = loader(os.path.join(ROOT, config), list(opts), register=False)
    return _CONFIGS[key]


def base_weights(config: str, opts: Sequence[str]) -> Dict[str, float]:
    """Every loss weight of the terms the run's config uses (MODEL.DS2D2.TERMS), as the config and ``opts``
    set them: the x1 weights."""
    cfg = load_config(config, opts)
    terms = list(cfg.MODEL.DS2D2.TERMS)
    unknown = [t for t in terms if t not in TERM_WEIGHTS]
    if unknown:
        raise KeyError(f"{config}: no loss weights known for the terms {unknown}; add them to TERM_WEIGHTS")
    weights = {}
    for term in terms:
        for key in TERM_WEIGHTS[term]:
            node = cfg
            for part in key.split("."):
                node = node[part]
            weights[key] = float(node)
    return weights


def weight_text(value: float) -> str:
    """A float override that reads back as a float (never an int: '5.0', '1e-06'), without rounding noise."""
    return repr(float(f"{value:.10g}"))


def scale(weights: Dict[str, float], multiplier: float) -> Dict[str, float]:
    return {key: float(weight_text(w * multiplier)) for key, w in weights.items()}


def x_text(multiplier: Optional[float]) -> str:
    return "" if multiplier is None else f"{multiplier:g}"


# ------------------------------------------------------------------------------------------------------------
# Runs: names, configs, overrides
# ------------------------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace, detector: str) -> Dict[str, Tuple[str, List[str]]]:
    """(config, overrides before any weight scaling) of every student method."""
    student, distiller = (f"configs/synthetic/{detector}_{s}.yaml" for s in STAGES[2:])
    explicit, implicit = [], []
    if detector in args.explicit_weight:
        weight = weight_text(args.explicit_weight[detector])
        explicit = ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", weight, "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", weight]
    if detector in args.implicit_weight:
        weight = weight_text(args.implicit_weight[detector])
        implicit = ["MODEL.DS2D2.LOSS.IMPLICIT_FULL", weight, "MODEL.DS2D2.LOSS.IMPLICIT_HIGH", weight]
    found = {
        "alone": (student, []),
        "explicit": (distiller, ZERO_IMPLICIT + explicit),
        "implicit": (distiller, ZERO_EXPLICIT + implicit),
        "ds2d2": (distiller, explicit + implicit),
    }
    for method in BASELINES:
        found[method] = (f"configs/synthetic/baselines/{detector}_R50_to_R18_{method}.yaml", [])
    if args.fitnet_weight is not None:
        found["fitnet"][1].extend(["MODEL.DS2D2.FITNET.WEIGHT", weight_text(args.fitnet_weight)])
    return found


def method_part(args: argparse.Namespace, detector: str, method: str, multiplier: float = 1.0) -> str:
    """The method's part of a run's folder name. x1 keeps the names of the untuned benchmark; another x adds
    ``_x<x>`` (``_lr<x>`` for the student alone, whose x scales its learning rate), except FitNet, whose name
    carries its absolute weight (fitnet10 = FitNet at weight 10)."""
    if method == "alone":
        return "alone" + ("" if multiplier == 1 else f"_lr{multiplier:g}")
    if method == "fitnet":
        config, opts = variants(args, detector)["fitnet"]
        weight = base_weights(config, opts)["MODEL.DS2D2.FITNET.WEIGHT"] * multiplier
        return f"fitnet{float(weight_text(weight)):g}"
    part = method
    if method in ("explicit", "ds2d2") and detector in args.explicit_weight:
        part += f"_ex{args.explicit_weight[detector]:g}"
    if method in ("implicit", "ds2d2") and detector in args.implicit_weight:
        part += f"_im{args.implicit_weight[detector]:g}"
    return part + ("" if multiplier == 1 else f"_x{multiplier:g}")


def run_names(args: argparse.Namespace, detector: str, multiplier: float = 1.0) -> Dict[str, str]:
    """Folder names (without the seed) that carry the schedules and the weights: a run is reused only by a
    command that would train it the same way."""
    t, a, st = args.teacher_iters, args.amplifier_iters, args.student_iters
    names = {"teacher": f"teacher_it{t}", "amplifier": f"amplifier_it{a}_t{t}"}
    for method in METHODS:
        names[method] = f"{method_part(args, detector, method, multiplier)}_it{st}_t{t}"
    return names


def student_run(args: argparse.Namespace, detector: str, method: str, seed: int, multiplier: float) -> Dict:
    """One student run: ``multiplier`` scales the method's loss weights (the student alone's: its LR)."""
    work = os.path.join(args.work, detector)
    config, opts = variants(args, detector)[method]
    run = dict(detector=detector, method=method, seed=seed, x=multiplier, config=config)
    if method == "alone":
        run["base_weights"] = {LR: float(load_config(config, opts).SOLVER.BASE_LR)}
        run["weights"] = scale(run["base_weights"], multiplier)
        opts = opts + [LR, weight_text(run["weights"][LR])]
    else:
        t_weights = os.path.join(work, run_names(args, detector)["teacher"], "model_final.pth")
        a_weights = os.path.join(work, run_names(args, detector)["amplifier"], "model_final.pth")
        opts = ["MODEL.DS2D2.TEACHER_WEIGHTS", t_weights, "MODEL.DS2D2.AMPLIFIER_WEIGHTS", a_weights] + opts
        run["base_weights"] = base_weights(config, opts)
        run["weights"] = scale(run["base_weights"], multiplier)
        for key, weight in run["weights"].items():
            opts = opts + [key, weight_text(weight)]
    run["opts"] = schedule(args.student_iters) + ["SEED", str(seed)] + opts
    base = run_names(args, detector, multiplier)[method]
    run["name"] = f"{base}_s{seed}"
    run["output"] = os.path.join(work, run["name"])
    return run


def val_score(output: str, scoring: Scoring) -> Optional[float]:
    """The headline metric on val of a finished run (None if unfinished): scoring.val only, never the test
    set."""
    path = os.path.join(output, "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return scoring.read(json.load(f), scoring.val)[scoring.headline]


def grid_of(args: argparse.Namespace, method: str) -> List[float]:
    """The multipliers the first seed tries for ``method``: of its learning rate for the student alone, else
    of its loss weights."""
    return args.alone_lr_grid if method == "alone" else args.grid


def choose(grid: Sequence[Dict], scoring: Scoring = HORIZONTAL) -> Optional[float]:
    """The multiplier of the grid run with the best val headline metric (AP50; mAP50 for the rotated
    detectors) (ties: the one closest to x1 on a log scale, then the smaller); None while a grid run is
    unfinished. A one-value grid needs no result."""
    if len(grid) == 1:
        return grid[0]["x"]
    scores = [(val_score(run["output"], scoring), run["x"]) for run in grid]
    if any(score is None for score, _ in scores):
        return None
    return min(scores, key=lambda s: (-s[0], abs(math.log(s[1])), s[1]))[1]


def plan(args: argparse.Namespace, detector: str, waiting: Optional[List[Tuple]] = None) -> List[Dict]:
    """The runs of one detector known now, in training order: teacher, amplifier, the first seed's grid (every
    tuned method at every x, the student alone at every learning rate), explicit/implicit of the first seed at
    DS2D2's x, then
    the other seeds at each method's chosen x. A run whose x waits on an unfinished grid is left out (and,
    with ``waiting``, appended there as (detector, method, seed)); rebuild the plan once the grid has
    finished.
    Each run's ``chosen`` says whether it is one the summary shows."""
    teacher, amplifier = (f"configs/synthetic/{detector}_{s}.yaml" for s in STAGES[:2])
    work, names = os.path.join(args.work, detector), run_names(args, detector)
    t_weights = os.path.join(work, names["teacher"], "model_final.pth")
    runs = [
        dict(method="teacher", seed=1, config=teacher, opts=schedule(args.teacher_iters) + ["SEED", "1"]),
        dict(method="amplifier", seed=1, config=amplifier,
             opts=schedule(args.amplifier_iters) + ["SEED", "1", "MODEL.DS2D2.TEACHER_WEIGHTS", t_weights]),
    ]
    for run in runs:
        run.update(detector=detector, x=None, role=run["method"], chosen=True, name=names[run["method"]])
        run["output"] = os.path.join(work, run["name"])
    first = args.seeds[0]
    methods = list(dict.fromkeys(args.methods))
    # explicit/implicit need DS2D2's choice: its grid is trained (not shown in the summary) even if not asked
    grid_methods = [m for m in methods if m in TUNED or m == "alone"]
    if "ds2d2" not in methods and any(m in FOLLOW_DS2D2 for m in methods):
        grid_methods.append("ds2d2")
    chosen: Dict[str, Optional[float]] = {}

    def add(method: str, seed: int, multiplier: Optional[float], role: str) -> None:
        run = student_run(args, detector, method, seed, multiplier)
        run.update(role=role, chosen=role != "grid")
        runs.append(run)

    for method in methods + [m for m in grid_methods if m not in methods]:
        if method in grid_methods:
            start = len(runs)
            for multiplier in grid_of(args, method):
                add(method, first, multiplier, "grid")
            chosen[method] = choose(runs[start:], SCORING[detector])
            for run in runs[start:]:
                run["picked"] = run["x"] == chosen[method]
                run["chosen"] = run["picked"] and method in methods
    for seed in args.seeds:
        for method in methods:
            if seed == first and method not in FOLLOW_DS2D2:
                continue  # in the grid above
            multiplier = chosen["ds2d2" if method in FOLLOW_DS2D2 else method]
            if multiplier is None:
                if waiting is not None:
                    waiting.append((detector, method, seed))
                continue
            add(method, seed, multiplier, "seed")
    needs_amplifier = any(m in ("implicit", "ds2d2") for m in methods + grid_methods)
    return [r for r in runs if r["method"] != "amplifier" or needs_amplifier]


def full_plan(args: argparse.Namespace) -> Tuple[List[Dict], List[Tuple]]:
    waiting: List[Tuple] = []
    runs = [run for detector in args.detectors for run in plan(args, detector, waiting)]
    return runs, waiting


def describe(args: argparse.Namespace) -> str:
    """The dry run: every run planned now (done or to train) with its config and overrides, then the runs
    that wait on a grid."""
    runs, waiting = full_plan(args)
    lines = []
    for i, run in enumerate(runs, 1):
        done = os.path.isfile(os.path.join(run["output"], "eval_results.json"))
        lines.append(f"{i:3d} [{'done' if done else 'to train'}] {run['detector']}/{run['name']} "
                     f"({run['role']}, x {x_text(run['x']) or '-'}): {run['config']} {' '.join(run['opts'])}")
    for detector, method, seed in waiting:
        of = "ds2d2" if method in FOLLOW_DS2D2 else method
        lines.append(f"    [waiting] {detector} {method} seed {seed}: at the x chosen by {of}'s grid "
                     f"(seed {args.seeds[0]}, x {' '.join(x_text(x) for x in grid_of(args, of))})")
    todo = sum(not os.path.isfile(os.path.join(r["output"], "eval_results.json")) for r in runs)
    lines.append(f"{len(runs)} runs planned now ({todo} to train), {len(waiting)} waiting on a grid: "
                 f"{len(runs) + len(waiting)} in all")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Training and results
# ------------------------------------------------------------------------------------------------------------


_CHILDREN: set = set()  # the training processes running now (stop_trainings ends them)
_CHILDREN_LOCK = threading.Lock()


@contextlib.contextmanager
def _registered(child: subprocess.Popen) -> Iterator[None]:
    with _CHILDREN_LOCK:
        _CHILDREN.add(child)
    try:
        yield
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(child)


def stop_trainings(grace_s: float = 10.0) -> None:
    """SIGTERM every running training's process group (train_net.py and its data loader workers), SIGKILL
    what is left after ``grace_s`` seconds; they resume from their last checkpoint next time."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
        deadline = time.time() + grace_s
        while any(child.poll() is None for child in children) and time.time() < deadline:
            time.sleep(0.1)


def run_training(args: argparse.Namespace, run: Dict, data_root: str) -> None:
    """Train and evaluate one run in its folder on ``args.device`` (resuming from its checkpoint if any); log
    in stdout.txt; seconds, resumption and device in bench_time.json. Raises naming the folder and the log if
    train_net.py fails."""
    os.makedirs(run["output"], exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", run["config"]]
    if os.path.isfile(os.path.join(run["output"], "last_checkpoint")):
        cmd.append("--resume")
    scoring = SCORING[run["detector"]]
    cmd += run["opts"] + list(scoring.opts) + [
        "DATASETS.TRAIN", f"('{scoring.train}',)",
        "DATASETS.TEST", f"('{scoring.val}', '{scoring.test}')",
        "SOLVER.IMS_PER_BATCH", str(args.batch), "DATALOADER.NUM_WORKERS", str(args.workers),
        "MODEL.DEVICE", args.device, "OUTPUT_DIR", run["output"],
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=data_root)
    start = time.time()
    log_path = os.path.join(run["output"], "stdout.txt")
    with open(log_path, "a") as log:
        # its own process group: stop_trainings ends it with its data loader workers
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        with _registered(child):
            code = child.wait()
    if code != 0:
        raise RuntimeError(f"{run['output']}: train_net.py exited with code {code}; its log: {log_path}")
    with open(os.path.join(run["output"], "bench_time.json"), "w") as f:
        json.dump({"seconds": time.time() - start, "resumed": "--resume" in cmd, "device": args.device}, f)


def overrides_of(run: Dict) -> Dict[str, str]:
    """A run's KEY VALUE overrides as a dict (the last value of a key wins, as in merge_from_list)."""
    return dict(zip(run["opts"][::2], run["opts"][1::2]))


def needed_folders(run: Dict) -> List[str]:
    """The run folders whose model_final.pth ``run`` loads: its teacher's (MODEL.DS2D2.TEACHER_WEIGHTS) and
    its amplifier's (MODEL.DS2D2.AMPLIFIER_WEIGHTS) where the distiller loads it, i.e. where the run's loss
    weights (its ``weights``, from its terms) put IMPLICIT_HIGH above 0 (DS2D2 and implicit, not explicit,
    nor a baseline, which are handed the path too); a run with no ``weights`` waits for both."""
    opts = overrides_of(run)
    keys = [TEACHER_WEIGHTS]
    if run.get("weights", {IMPLICIT_HIGH: 1.0}).get(IMPLICIT_HIGH, 0.0) > 0:
        keys.append(AMPLIFIER_WEIGHTS)
    return [os.path.dirname(opts[key]) for key in keys if opts.get(key)]


def ready_runs(runs: Sequence[Dict], done: Collection[str], running: Collection[str], slots: int
               ) -> List[Dict]:
    """The runs of ``runs`` (a plan, in its order) to start now: not in ``done`` nor ``running`` (sets of run
    folders), and every run of the plan whose weights they load (needed_folders) in ``done``; at most
    ``slots`` minus the running ones, the first in plan order. Weights from outside the plan are not waited
    for."""
    planned = {run["output"] for run in runs}
    start: List[Dict] = []
    for run in runs:
        if len(start) >= slots - len(running):
            break
        if run["output"] in done or run["output"] in running:
            continue
        if all(folder in done for folder in needed_folders(run) if folder in planned):
            start.append(run)
    return start


def devices_note(rows: Sequence[Dict]) -> str:
    """How many of ``rows`` trained on each device, e.g. 'runs on cpu: 30, cuda: 12'."""
    counts: Dict[str, int] = {}
    for row in rows:
        device = row.get("device") or "unknown"
        counts[device] = counts.get(device, 0) + 1
    return "runs on " + ", ".join(f"{device}: {n}" for device, n in counts.items()) if counts else "no runs"


def training_device(args: argparse.Namespace) -> str:
    """The device the machine line names: --device's GPU where torch sees one, else the CPU."""
    return args.device if args.device != "cpu" and torch.cuda.is_available() else "cpu"


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


PRUNED_ROLES = ("grid", "seed")  # student runs: no other run loads their weights


def prune_checkpoints(run: Dict) -> None:
    """Delete the checkpoints (``*.pth``, ``last_checkpoint``) of a finished student run (role grid or
    seed); a teacher's or amplifier's, which other runs load, are kept. Its logs and results stay."""
    if run.get("role") not in PRUNED_ROLES or not finished(run):
        return
    for name in os.listdir(run["output"]):
        if name.endswith(".pth") or name == "last_checkpoint":
            os.remove(os.path.join(run["output"], name))


def train_plan(args: argparse.Namespace, plan_now: Callable[[], Tuple[List[Dict], str]],
               write_tables: Callable[[List[Dict]], object], data_root: str,
               train: Optional[Callable[[argparse.Namespace, Dict, str], None]] = None) -> List[Dict]:
    """Train every run of the plan, up to ``args.parallel`` at once, each as soon as ready_runs allows.
    ``plan_now()`` gives (the runs known now in training order, the note of those waiting, e.g. '+3 waiting
    on a grid'); it is called again after every finished run, as the plan grows when grids finish.
    ``write_tables(finished runs)`` rewrites the tables after every finished run. ``train(args, run,
    data_root)`` (default run_training) trains one run, in a thread of this process. A failed run lets the
    running ones finish, then raises naming its folder; Ctrl-C / SIGTERM stops the running trainings.
    Returns the final plan's runs, all finished."""
    if args.device != "cpu" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: torch sees no CUDA device on this machine; "
                           "train with --device cpu")
    kept: set = set()
    failed: List[str] = []
    running: Dict[Future, Dict] = {}
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main else None
    if args.parallel > 1 and args.parallel * args.threads > (os.cpu_count() or 1):
        print(f"note: --parallel {args.parallel} x --threads {args.threads} exceeds the {os.cpu_count()} "
              f"cores: the trainings slow each other down", flush=True)
    pool = ThreadPoolExecutor(max_workers=args.parallel)
    try:
        while True:  # the plan grows as grids finish: rebuild it after every run
            runs, waiting = plan_now()
            for i, run in enumerate(runs, 1):
                if run["output"] not in kept and finished(run):
                    kept.add(run["output"])
                    print(f"run {i}/{len(runs)}: {run['detector']} {run['name']} already done, kept",
                          flush=True)
            if not failed:
                busy = {run["output"] for run in running.values()}
                done = {run["output"] for run in runs if finished(run)}
                for run in ready_runs(runs, done, busy, args.parallel):
                    i = runs.index(run) + 1
                    print(f"[{time.strftime('%H:%M:%S')}] run {i}/{len(runs)} ({waiting}): {run['detector']} "
                          f"{run['name']}", flush=True)
                    running[pool.submit(train or run_training, args, run, data_root)] = run
            if not running:
                todo = [run["output"] for run in runs if not finished(run)]
                if failed or not todo:
                    break
                raise RuntimeError(f"no run can start (each waits for another's weights): {todo}")
            for future in wait(running, return_when=FIRST_COMPLETED)[0]:
                run = running.pop(future)
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # e.g. KeyboardInterrupt
                if error is None and not finished(run):
                    error = RuntimeError(f"{run['output']}: training finished without eval_results.json")
                if error is not None:
                    failed.append(str(error))
                    print(f"[{time.strftime('%H:%M:%S')}] FAILED {run['detector']} {run['name']}: {error}",
                          flush=True)
                    continue
                kept.add(run["output"])
                if not args.keep_checkpoints:
                    prune_checkpoints(run)
                if args.parallel > 1:
                    print(f"[{time.strftime('%H:%M:%S')}] finished {run['detector']} {run['name']} "
                          f"({len(running)} running)", flush=True)
                write_tables([r for r in plan_now()[0] if finished(r)])
    except BaseException:
        stop_trainings()
        raise
    finally:
        pool.shutdown(wait=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed, the others finished: " + "; ".join(failed))
    return runs


def read_result(run: Dict) -> Optional[Dict]:
    """Test metrics (and the val headline metric, train seconds, multiplier, weights) of a finished run, else
    None."""
    path = os.path.join(run["output"], "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f)
    scoring = SCORING[run["detector"]]
    row = {k: run[k] for k in ("detector", "method", "seed", "role", "chosen", "name")}
    row["x"] = ("lr " if run["method"] == "alone" else "") + x_text(run["x"])
    row["picked"] = run.get("picked", False)
    row["base_weights"] = run.get("base_weights")
    row["weights"] = " ".join(f"{k.split('.')[-1]}={w:g}" for k, w in run.get("weights", {}).items())
    row.update(scoring.read(results, scoring.test))
    row[f"val_{scoring.headline}"] = val_score(run["output"], scoring)
    time_file = os.path.join(run["output"], "bench_time.json")
    row["device"] = ""
    if os.path.isfile(time_file):
        with open(time_file) as f:
            timing = json.load(f)
        row["train_s"] = timing["seconds"]
        row["device"] = timing.get("device", "cpu")  # runs timed before --device all trained on the CPU
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


def seed_statistics(members: Sequence[Dict], metrics: Sequence[str]) -> Dict[str, float]:
    """Over the seeds ``members`` (rows of one method): each metric's mean and ``<metric>_std`` (population
    std, 0 for one seed), and ``s_per_it``, the fastest seed's (other jobs only ever slow a run down)."""
    out: Dict[str, float] = {}
    for m in metrics:
        values = [r[m] for r in members]
        out[m] = statistics.mean(values)
        out[f"{m}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    speeds = [r["s_per_it"] for r in members if "s_per_it" in r]
    if speeds:
        out["s_per_it"] = min(speeds)
    return out


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and spread (population std over seeds) per (detector, method) of the chosen runs, of each metric
    of the detector's scoring and of its val headline; d<headline> (dAP50, dmAP50): the headline's gain over
    the student alone; x: the method's chosen multiplier; s_per_it: the fastest seed's median seconds per
    iteration (other jobs on the machine only ever slow a run down)."""
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        if row.get("chosen", True):
            groups.setdefault((row["detector"], row["method"]), []).append(row)
    summary = []
    for (detector, method), members in groups.items():
        entry = {"detector": detector, "method": method, "x": members[0].get("x", ""), "seeds": len(members)}
        scoring = SCORING[detector]
        entry.update(seed_statistics(members, scoring.columns + (f"val_{scoring.headline}",)))
        summary.append(entry)
    order = ("teacher", "amplifier") + METHODS  # per detector, in the order of the runs' first appearance
    detectors = list(dict.fromkeys(e["detector"] for e in summary))
    summary.sort(key=lambda e: (detectors.index(e["detector"]), order.index(e["method"])))
    for entry in summary:
        alone = [e for e in summary if e["detector"] == entry["detector"] and e["method"] == "alone"]
        if alone and entry["method"] not in ("teacher", "amplifier"):
            headline = SCORING[entry["detector"]].headline
            entry[f"d{headline}"] = entry[headline] - alone[0][headline]
    return summary


def weights_note(rows: List[Dict]) -> str:
    """The x1 loss weights of every method in ``rows``, as read from the configs (and the weight flags)."""
    seen: Dict[Tuple[str, str], str] = {}
    for row in rows:
        base = row.get("base_weights")
        if base and (row["detector"], row["method"]) not in seen:
            seen[row["detector"], row["method"]] = ", ".join(
                f"{k.split('.')[-1]} {w:g}" for k, w in base.items() if w != 0)
    return "; ".join(f"{d} {m}: {text}" for (d, m), text in seen.items())


def report(args: argparse.Namespace, rows: List[Dict], machine: str) -> str:
    """The tables of ``rows``: one report per scoring of the detectors asked for (accuracy* for the horizontal
    detectors, accuracy_oriented* for the rotated ones), so that neither kind overwrites the other's."""
    scorings = dict.fromkeys(SCORING[d] for d in args.detectors)
    texts = [scoring_report(args, [r for r in rows if SCORING[r["detector"]] == scoring], scoring, machine)
             for scoring in scorings]
    return "\n".join(texts)


def scoring_report(args: argparse.Namespace, rows: List[Dict], scoring: Scoring, machine: str) -> str:
    """The Markdown, CSV and PNG tables of the ``rows`` of one scoring's detectors."""
    name = report_name(args, scoring.report)
    h = scoring.headline
    val, gain = f"val_{h}", f"d{h}"  # val_AP50, dAP50 for the horizontal detectors
    columns = ["detector", "method", "x", "seed", "role", "chosen", "name", *scoring.columns, val, "train_s",
               "s_per_it", "device", "weights", *LOSS_TERMS]
    write_csv(os.path.join(args.results, f"{name}_runs.csv"), rows, columns)
    summary = summarise(rows)
    shown = scoring.columns + (val,)
    show = [dict(e, **{m: f"{e[m]:.1f} ± {e[m + '_std']:.1f}" for m in shown}) for e in summary]
    for e in show:
        e[gain] = f"{e[gain]:+.1f}" if gain in e else ""
    table_cols = ["detector", "method", "x", "seeds", *shown, gain, "s_per_it"]
    csv_cols = ["detector", "method", "x", "seeds"] + [c for m in shown for c in (m, m + "_std")]
    csv_cols += table_cols[-2:]
    write_csv(os.path.join(args.results, f"{name}.csv"), summary, csv_cols)
    grid = [dict(r, chosen="yes" if r["picked"] else "") for r in rows if r.get("role") == "grid"]
    grid_cols = ["detector", "method", "x", val, "chosen", "weights"]
    write_csv(os.path.join(args.results, f"{name}_grid.csv"), grid, grid_cols)
    first = args.seeds[0]
    table = markdown_table(show, table_cols)
    if grid:
        table += (f"\n\nTuning grid: val {h} ({scoring.val}) of seed {first} at each multiplier x of "
                  f"the method's loss weights (weights: the values trained with).\n\n"
                  + markdown_table(grid, grid_cols))
    notes = (f"{scoring.metric_note} on {scoring.test} (mean ± std over seeds {args.seeds}) of each method "
             f"at its chosen x; {val} on {scoring.val}; {gain} = {h} gain over the student alone; "
             f"s_per_it: median training seconds per iteration on this (shared) machine, of the fastest "
             f"seed ({devices_note(rows)}). x multiplies every loss weight of the method; it is chosen per "
             f"detector among {[float(x) for x in args.grid]} by the best val {h} of seed {first} (ties: the "
             f"x closest to 1), never on test; explicit and implicit use DS2D2's x; for the student alone x "
             f"(lr) multiplies SOLVER.BASE_LR, among {[float(x) for x in args.alone_lr_grid]}. Loss weights "
             f"at x1 (the configs', with the weight flags given; zero weights left out): "
             f"{weights_note(rows) or '-'}. Teacher R-50 {args.teacher_iters} iterations, amplifier "
             f"{args.amplifier_iters}, students R-18 {args.student_iters}, batch {args.batch}, 128 px, "
             f"{args.num_images} images. Command: python benchmarks/bench_accuracy.py {args.command}")
    text = write_report(os.path.join(args.results, f"{name}.md"), scoring.title, machine, table, notes)
    students = [e for e in summary if e["method"] not in ("amplifier",)]
    if students:
        methods = [m for m in ("teacher",) + METHODS if any(e["method"] == m for e in students)]
        detectors = sorted({e["detector"] for e in students})
        pick = {(e["detector"], e["method"]): e for e in students}
        series = {d: [pick.get((d, m), {}).get(h, 0.0) for m in methods] for d in detectors}
        errors = {d: [pick.get((d, m), {}).get(f"{h}_std", 0.0) for m in methods] for d in detectors}
        bar_plot(os.path.join(args.results, f"{name}.png"), methods, series, f"{h} ({scoring.test})",
                 f"{scoring.title} (each method at its chosen x; mean ± std over seeds)", errors=errors)
    return text


def finished(run: Dict) -> bool:
    return os.path.isfile(os.path.join(run["output"], "eval_results.json"))


def prepare_training(args: argparse.Namespace) -> str:
    """Set this process's torch threads and write the synthetic DIOR images the runs train on (kept if
    there); returns the folder DETECTRON2_DATASETS points the trainings to."""
    set_threads(args.threads)
    data_root = os.path.join(args.work, "datasets")
    from ds2d2.data.synthetic import write_synthetic_dior

    write_synthetic_dior(os.path.join(data_root, "synthetic_dior"), args.num_images, args.data_seed)
    return data_root


def run_modes(args: argparse.Namespace, describe: Callable[[argparse.Namespace], str],
              plan_now: Callable[[], Tuple[List[Dict], str]], read_result: Callable[[Dict], Dict],
              report: Callable[[argparse.Namespace, List[Dict], str], str]) -> str:
    """What an accuracy benchmark's main does with its flags: --dry-run prints ``describe(args)``;
    --tables rewrites the report from the finished runs of ``plan_now()``; else trains the plan
    (train_plan), rewriting the report after every run. Returns the report's text."""
    if args.dry_run:
        text = describe(args)
        print(text, flush=True)
        return text
    machine = machine_line(training_device(args))

    def write_tables(runs: List[Dict]) -> str:
        return report(args, [read_result(run) for run in runs], machine)

    if args.tables:
        return write_tables([run for run in plan_now()[0] if finished(run)])
    text = write_tables(train_plan(args, plan_now, write_tables, prepare_training(args)))
    print(text, flush=True)
    return text


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)

    def plan_now() -> Tuple[List[Dict], str]:
        runs, waiting = full_plan(args)
        return runs, f"+{len(waiting)} waiting on a grid"

    return run_modes(args, describe, plan_now, read_result, report)


if __name__ == "__main__":
    main()
