#!/usr/bin/env python
"""The table a user deploys from (issue 23): the R-18 and the deployment students of both families on
synthetic DIOR, alone, distilled by DS2D2 and by the best baseline, from the teacher of their own family and
from the other family's, tuned as bench_accuracy.py tunes (seeded, resumable; CPU or --device), with each
student's CPU latency from bench_deploy.py beside its accuracy.

    python benchmarks/bench_deploy_accuracy.py --dry-run     # the runs planned now, and those waiting
    python benchmarks/bench_deploy_accuracy.py --tables      # the tables of the finished runs; trains nothing
    nohup python benchmarks/bench_deploy_accuracy.py > benchmarks/results/deploy_accuracy.log 2>&1 &
    python benchmarks/bench_deploy_accuracy.py --quick       # RetinaNet students, own teacher, alone vs DS2D2

Students (--students): retinanet_R18, faster_rcnn_R18 (configs/synthetic/<family>_R18_student.yaml) and the
deployment students retinanet_deploy, faster_rcnn_deploy (<family>_R18_deploy_student.yaml: a 32-channel FPN,
a slimmer head). Teachers (--teachers): ``same``, the R-50 teacher of the student's family, and ``cross``, the
other family's. Rows per student: alone; DS2D2 from each teacher (<family>_R50_to_R18[_deploy].yaml,
mixed/<teacher>_R50_to_<family>_R18[_deploy].yaml); the best baseline from each teacher (baselines/,
mixed/<teacher>_R50_to_<family>_R18_<method>.yaml).

Shared with bench_accuracy.py (same flags, defaults and --work folder, its functions): the teachers and
amplifiers (WORK/<family>/teacher_it<T>, amplifier_it<A>_t<T>) and the R-18 students' same-family runs
(alone, DS2D2, the five baselines) ARE its runs: finished ones are reused, missing ones trained as it trains
them. Do not train the same work folder from both scripts at once.

The best baseline of a student family: among FitNet, FGD, PKD, MGD and CrossKD, the one with the best mean
synthetic_dior_val AP50 over the seeds of its chosen x in bench_accuracy's R-18 table of that family (ties:
the first in that order); test is never read for it. Those runs are planned here too, and the baseline rows
wait until all of them have finished. Where that baseline cannot run (``refusal``: CrossKD across families or
on a RetinaNet student whose head is narrower or shallower than the teacher's; PKD on a student narrower than
the teacher), the best one that can is used and the notes say so. The deployment student's baseline runs:
the R-18 baseline config plus the deployment student's own keys (its YAML minus _BASE_ and OUTPUT_DIR), and
MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD False where the config sets it True (no teacher tensor has the narrow
student's shape: the distiller refuses the key).

Tuning, as bench_accuracy: each new (student, teacher, method) trains the first seed at every x of --grid (the
deployment student alone: at every x of --alone-lr-grid, times its SOLVER.BASE_LR), the x with the best val
AP50 is chosen (bench_accuracy.choose), the other seeds train at that x.

Folder names of the new runs, in WORK/<student family>/:
``[deploy_][from_<teacher family>_]<method>[_x<x>|_lr<x>]_it<S>_t<T>_s<seed>``: ``deploy_`` for the deployment
student (none for R-18), ``from_<teacher family>_`` for the other family's teacher (none for the student's
own), <method> alone, ds2d2 or the baseline's name, no x part at x1, S and T the student's and the teacher's
iterations; e.g. deploy_ds2d2_x10_it1000_t6000_s2, from_faster_rcnn_ds2d2_it1000_t6000_s1,
deploy_alone_lr0.25_it1000_t6000_s1, deploy_from_retinanet_fgd_x0.1_it1000_t6000_s3.

Latency: the student's CPU ms per image from --latency-csv (bench_deploy.py's deploy.csv), rows "student
R-18" / "deploy R-18" of its family, PyTorch fp32 and onnxruntime, at one input (a synthetic one if there,
else the file's first) and one thread count (--threads if there, else the most).

A run whose eval_results.json exists is kept, an unfinished one resumes from its last checkpoint; the tables
(deploy_accuracy.{md,csv,png}, deploy_accuracy_runs.csv, deploy_accuracy_grid.csv in --results; --suffix and
then _quick with --quick added to the names) are rewritten after every run. --device and --parallel N as
bench_accuracy.py's (its train_plan): up to N trainings at once, each once the teacher / amplifier it loads
has finished.
"""
import argparse
import os
import statistics
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_accuracy as ba  # noqa: E402
from benchmarks.common import ROOT, RESULTS, bar_plot, command_line  # noqa: E402
from benchmarks.common import markdown_table, read_csv, write_csv, write_report  # noqa: E402

FAMILIES = ("retinanet", "faster_rcnn")
OTHER = {"retinanet": "faster_rcnn", "faster_rcnn": "retinanet"}
FAMILY_LABEL = {"retinanet": "RetinaNet", "faster_rcnn": "Faster R-CNN"}
STUDENTS = ("retinanet_R18", "retinanet_deploy", "faster_rcnn_R18", "faster_rcnn_deploy")
TEACHERS = ("same", "cross")
METHODS = ("alone", "ds2d2", "baseline")  # "baseline": the family's best, chosen on val
METHOD_LABEL = {"alone": "alone", "ds2d2": "DS2D2", "fitnet": "FitNet", "fgd": "FGD", "pkd": "PKD",
                "mgd": "MGD", "crosskd": "CrossKD"}
STUDENT_CONFIG = {False: "configs/synthetic/{}_R18_student.yaml",
                  True: "configs/synthetic/{}_R18_deploy_student.yaml"}
TEACHER_CONFIG = "configs/synthetic/{}_R50_teacher.yaml"
INHERIT = "MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD"
LATENCY_MODEL = {False: "student R-18", True: "deploy R-18"}  # bench_deploy's model labels
LATENCY = {"pytorch fp32": "cpu_ms_pytorch", "onnxruntime": "cpu_ms_onnxruntime"}  # runtime -> column
WITHIN_AP50 = 2.0  # target 1: the distilled deployment student within this of the distilled R-18 student
ACCURACY = ba.parse_args([])  # bench_accuracy's defaults, shared


class Student(NamedTuple):
    """One student of the table: ``key`` as --students spells it, e.g. retinanet_deploy."""
    key: str
    family: str
    deploy: bool

    @property
    def label(self) -> str:
        return f"{FAMILY_LABEL[self.family]} {'deploy' if self.deploy else 'R-18'}"

    @property
    def config(self) -> str:
        return STUDENT_CONFIG[self.deploy].format(self.family)


def student(key: str) -> Student:
    family, width = key.rsplit("_", 1)
    return Student(key, family, width == "deploy")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ba.add_mode_flags(p, "RetinaNet R-18 and deploy students, own-family teacher, alone vs DS2D2, seed 1, x1")
    p.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    p.add_argument("--teachers", nargs="+", choices=TEACHERS, default=list(TEACHERS),
                   help="same: the R-50 teacher of the student's family; cross: the other family's")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="baseline: the family's best of bench_accuracy's baselines, chosen on val")
    ba.add_tuning_flags(p)
    for flag in ("teacher_iters", "amplifier_iters", "student_iters", "batch", "num_images", "data_seed",
                 "threads", "workers"):
        p.add_argument("--" + flag.replace("_", "-"), type=int, default=getattr(ACCURACY, flag),
                       help="as bench_accuracy.py's")
    ba.add_run_flags(p)
    p.add_argument("--work", default=ACCURACY.work,
                   help="folder of the runs and the generated data: bench_accuracy.py's, shared with it")
    p.add_argument("--results", default=RESULTS, help="where the Markdown/CSV/PNG tables go")
    p.add_argument("--latency-csv", default=os.path.join(RESULTS, "deploy.csv"),
                   help="bench_deploy.py's table, read for the students' CPU latency")
    args = p.parse_args(argv)
    ba.check_run_flags(p, args)
    args.command = " ".join(a for a in command_line(argv).split(" ") if a != "--tables")
    ba.check_tuning_flags(p, args)
    if args.quick:
        args.students, args.teachers = ["retinanet_R18", "retinanet_deploy"], ["same"]
        args.methods, args.seeds = ["alone", "ds2d2"], args.seeds[:1]
        args.grid = args.alone_lr_grid = [1.0]
    # what bench_accuracy's functions read besides the shared flags: no weight flag (its defaults)
    args.fitnet_weight, args.explicit_weight, args.implicit_weight = None, {}, {}
    args.detectors = [f for f in FAMILIES if any(student(s).family == f for s in args.students)]
    return args


def accuracy_args(args: argparse.Namespace, methods: Sequence[str]) -> argparse.Namespace:
    """``args`` as bench_accuracy's functions read them, for ``methods`` (its method names)."""
    return argparse.Namespace(**dict(vars(args), methods=list(methods)))


def teacher_families(args: argparse.Namespace, s: Student) -> List[str]:
    return [s.family if mode == "same" else OTHER[s.family] for mode in TEACHERS if mode in args.teachers]


# ------------------------------------------------------------------------------------------------------------
# Configs and overrides of the new rows
# ------------------------------------------------------------------------------------------------------------


def deploy_overrides(family: str) -> List[str]:
    """The deployment student's own keys (its YAML minus _BASE_ and OUTPUT_DIR) as KEY VALUE overrides, e.g.
    ['MODEL.FPN.OUT_CHANNELS', '32', ...]: what makes an R-18 config's student the deployment one."""
    with open(os.path.join(ROOT, STUDENT_CONFIG[True].format(family))) as f:
        node = yaml.safe_load(f)
    opts: List[str] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}", child)
        else:
            opts.extend([prefix, str(value)])

    for key, value in node.items():
        if key not in ("_BASE_", "OUTPUT_DIR"):
            walk(key, value)
    return opts


def row_config(s: Student, teacher: Optional[str], method: str) -> Tuple[str, List[str]]:
    """(config, overrides before any weight scaling) of ``method`` (alone, ds2d2 or a baseline's name) for
    student ``s`` from the R-50 teacher of family ``teacher`` (None for alone)."""
    f, deploy = s.family, "_deploy" if s.deploy else ""
    if method == "alone":
        return s.config, []
    if method == "ds2d2":
        if teacher == f:
            return f"configs/synthetic/{f}_R50_to_R18{deploy}.yaml", []
        return f"configs/synthetic/mixed/{teacher}_R50_to_{f}_R18{deploy}.yaml", []
    if teacher == f:
        config = f"configs/synthetic/baselines/{f}_R50_to_R18_{method}.yaml"
    else:
        config = f"configs/synthetic/mixed/{teacher}_R50_to_{f}_R18_{method}.yaml"
    if not s.deploy:
        return config, []
    opts = deploy_overrides(f)
    if ba.load_config(config, opts).MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD:
        opts += [INHERIT, "False"]
    return config, opts


def refusal(method: str, student_cfg, teacher_cfg) -> Optional[str]:
    """Why the distiller refuses baseline ``method`` between these plain detector configs (None if it runs):
    CrossKD runs the student's head features through the teacher's head layers (one family; a RetinaNet
    head of the teacher's width and depth), PKD compares FPN channels one to one (one width)."""
    s, t = student_cfg.MODEL, teacher_cfg.MODEL
    widths = f"FPN width {s.FPN.OUT_CHANNELS} (student) vs {t.FPN.OUT_CHANNELS} (teacher)"
    if method == "crosskd":
        if s.META_ARCHITECTURE != t.META_ARCHITECTURE:
            return (f"CrossKD runs the student's features through the teacher's head: one family only "
                    f"({t.META_ARCHITECTURE} teacher, {s.META_ARCHITECTURE} student)")
        convs = (s.RETINANET.NUM_CONVS, t.RETINANET.NUM_CONVS)
        if s.META_ARCHITECTURE == "RetinaNet" and (s.FPN.OUT_CHANNELS != t.FPN.OUT_CHANNELS
                                                   or convs[0] != convs[1]):
            return (f"CrossKD runs the student's head features through the teacher's head convs: {widths}, "
                    f"head convs {convs[0]} vs {convs[1]}")
    if method == "pkd" and s.FPN.OUT_CHANNELS != t.FPN.OUT_CHANNELS:
        return f"PKD compares FPN channels one to one: {widths}"
    return None


def run_name(args: argparse.Namespace, s: Student, teacher: Optional[str], method: str, x: float,
             seed: int) -> str:
    """The folder of a new run (see the module docstring)."""
    part = ("deploy_" if s.deploy else "") + (f"from_{teacher}_" if teacher not in (None, s.family) else "")
    part += method
    if x != 1:
        part += f"_lr{x:g}" if method == "alone" else f"_x{x:g}"
    return f"{part}_it{args.student_iters}_t{args.teacher_iters}_s{seed}"


def new_run(args: argparse.Namespace, s: Student, teacher: Optional[str], method: str, seed: int, x: float,
            role: str) -> Dict:
    """One run of a row bench_accuracy does not have: ``x`` scales the method's loss weights read from its
    config (the student alone's: its learning rate), as bench_accuracy.student_run scales them."""
    config, extra = row_config(s, teacher, method)
    run = dict(detector=s.family, student=s.key, teacher=teacher or "", method=method, seed=seed, x=x,
               config=config, role=role, reused=False, overrides=extra,
               slot=method if method in ("alone", "ds2d2") else "baseline")
    if method == "alone":
        run["base_weights"] = {ba.LR: float(ba.load_config(config, extra).SOLVER.BASE_LR)}
        run["weights"] = ba.scale(run["base_weights"], x)
        opts = extra + [ba.LR, ba.weight_text(run["weights"][ba.LR])]
    else:
        work, names = os.path.join(args.work, teacher), ba.run_names(args, teacher)
        opts = ["MODEL.DS2D2.TEACHER_WEIGHTS", os.path.join(work, names["teacher"], "model_final.pth")]
        if method == "ds2d2":
            amplifier = os.path.join(work, names["amplifier"], "model_final.pth")
            opts += ["MODEL.DS2D2.AMPLIFIER_WEIGHTS", amplifier]
        opts += extra
        run["base_weights"] = ba.base_weights(config, opts)
        run["weights"] = ba.scale(run["base_weights"], x)
        for key, weight in run["weights"].items():
            opts = opts + [key, ba.weight_text(weight)]
    run["opts"] = ba.schedule(args.student_iters) + ["SEED", str(seed)] + opts
    run["name"] = run_name(args, s, teacher, method, x, seed)
    run["output"] = os.path.join(args.work, s.family, run["name"])
    return run


# ------------------------------------------------------------------------------------------------------------
# The best baseline, chosen on val
# ------------------------------------------------------------------------------------------------------------


def baseline_ranking(args: argparse.Namespace, family: str) -> Optional[List[Tuple[str, float]]]:
    """bench_accuracy's baselines of ``family``'s R-18 student, best first, with their mean val AP50 over
    the seeds of their chosen x (ties: bench_accuracy.BASELINES order); None until all have finished."""
    runs = ba.plan(accuracy_args(args, ba.BASELINES), family)
    ranking = []
    for method in ba.BASELINES:
        chosen = [r for r in runs if r["method"] == method and r["chosen"]]
        scores = [ba.val_score(r["output"], ba.HORIZONTAL) for r in chosen]
        if len(scores) < len(args.seeds) or any(score is None for score in scores):
            return None
        ranking.append((method, statistics.mean(scores)))
    return sorted(ranking, key=lambda entry: -entry[1])


def pick_baseline(args: argparse.Namespace, s: Student, teacher: str
                  ) -> Optional[Tuple[str, List[Tuple[str, str]]]]:
    """(the best baseline of s's family that can run from ``teacher``'s R-50, [(better one, why it cannot
    run)]); None while the ranking waits on unfinished runs."""
    ranking = baseline_ranking(args, s.family)
    if ranking is None:
        return None
    s_cfg, t_cfg = ba.load_config(s.config, []), ba.load_config(TEACHER_CONFIG.format(teacher), [])
    skipped = []
    for method, _ in ranking:
        why = refusal(method, s_cfg, t_cfg)
        if why is None:
            return method, skipped
        skipped.append((method, why))
    raise RuntimeError(f"no baseline of {ba.BASELINES} runs for {s.label} from {teacher}: {skipped}")


# ------------------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------------------


class Waiting(NamedTuple):
    """Runs not planned yet: ``runs`` of them, for ``what``, until ``until``."""
    what: str
    runs: int
    until: str


def stage_runs(args: argparse.Namespace, family: str, amplifier: bool) -> List[Dict]:
    """bench_accuracy's teacher (and amplifier) runs of ``family``."""
    keep = ("teacher", "amplifier") if amplifier else ("teacher",)
    runs = [r for r in ba.plan(accuracy_args(args, ["ds2d2"]), family) if r["role"] in keep]
    for run in runs:
        run.update(student="", teacher=family, slot=run["role"], reused=True, chosen=False)
    return runs


def accuracy_runs(args: argparse.Namespace, family: str, students: List[Student], waiting: List[Waiting]
                  ) -> List[Dict]:
    """bench_accuracy's R-18 runs of ``family`` this table needs: the rows of the R-18 student with its own
    teacher (alone, DS2D2, the chosen baseline) and every baseline's runs (the baseline choice reads them)."""
    r18 = next((s for s in students if s.family == family and not s.deploy), None)
    methods = []
    if r18 and "alone" in args.methods:
        methods.append("alone")
    if r18 and "ds2d2" in args.methods and "same" in args.teachers:
        methods.append("ds2d2")
    if "baseline" in args.methods:
        methods += list(ba.BASELINES)
    if not methods:
        return []
    shown = None
    if r18 and "same" in args.teachers and "baseline" in args.methods:
        picked = pick_baseline(args, r18, family)
        shown = picked and picked[0]
    acc_waiting: List[Tuple] = []
    runs = [r for r in ba.plan(accuracy_args(args, methods), family, acc_waiting)
            if r["role"] not in ("teacher", "amplifier")]
    for run in runs:
        baseline = run["method"] in ba.BASELINES
        run.update(student=f"{family}_R18", teacher="" if run["method"] == "alone" else family, reused=True,
                   slot="baseline" if baseline else run["method"])
        if baseline:
            run["chosen"] = run["chosen"] and run["method"] == shown
    for _, method, seed in acc_waiting:
        waiting.append(Waiting(f"{family}/{method} R-18 seed {seed} (bench_accuracy's run)", 1,
                               f"{method}'s grid of seed {args.seeds[0]} has finished"))
    return runs


def tuned_runs(args: argparse.Namespace, s: Student, teacher: Optional[str], method: str,
               waiting: List[Waiting]) -> List[Dict]:
    """A new row: the first seed at every x of its grid, the other seeds at the x chosen on val."""
    first = args.seeds[0]
    runs = [new_run(args, s, teacher, method, first, x, "grid") for x in ba.grid_of(args, method)]
    chosen = ba.choose(runs, ba.HORIZONTAL)
    for run in runs:
        run["picked"] = run["chosen"] = run["x"] == chosen
    for seed in args.seeds[1:]:
        if chosen is None:
            waiting.append(Waiting(f"{row_label(s, teacher, method)} seed {seed}", 1,
                                   f"its grid of seed {first} has finished"))
        else:
            runs.append(dict(new_run(args, s, teacher, method, seed, chosen, "seed"), chosen=True))
    return runs


def plan(args: argparse.Namespace, waiting: Optional[List[Waiting]] = None) -> List[Dict]:
    """Every run known now, in training order: the teachers and amplifiers, bench_accuracy's R-18 runs, then
    the new rows per student. Runs that wait on an unfinished grid or on the baseline choice are left out
    (and listed in ``waiting``); rebuild the plan after every run. A run's ``chosen``: the table shows it."""
    waiting = [] if waiting is None else waiting
    students = [student(k) for k in dict.fromkeys(args.students)]
    distilled = [m for m in args.methods if m != "alone"]
    teachers = {t for s in students for t in teacher_families(args, s)} if distilled else set()
    if "baseline" in args.methods:
        teachers |= {s.family for s in students}  # the baseline choice reads the same-family runs
    amplified = {t for s in students for t in teacher_families(args, s)} if "ds2d2" in args.methods else set()
    runs = [r for f in FAMILIES if f in teachers for r in stage_runs(args, f, f in amplified)]
    for family in args.detectors:
        runs += accuracy_runs(args, family, students, waiting)
    for s in students:
        if "alone" in args.methods and s.deploy:
            runs += tuned_runs(args, s, None, "alone", waiting)
        for teacher in teacher_families(args, s):
            if "ds2d2" in args.methods and (s.deploy or teacher != s.family):
                runs += tuned_runs(args, s, teacher, "ds2d2", waiting)
            if "baseline" not in args.methods or (teacher == s.family and not s.deploy):
                continue  # bench_accuracy's run, planned above
            picked = pick_baseline(args, s, teacher)
            if picked is None:
                count = len(args.grid) + len(args.seeds) - 1
                waiting.append(Waiting(f"{s.label} best baseline from {FAMILY_LABEL[teacher]} R-50", count,
                                       f"every baseline of the {s.family} R-18 table has finished"))
            else:
                runs += tuned_runs(args, s, teacher, picked[0], waiting)
    unique = {run["output"]: run for run in runs}
    return list(unique.values())


def row_label(s: Student, teacher: Optional[str], method: str) -> str:
    """e.g. 'RetinaNet deploy FGD from Faster R-CNN R-50', 'RetinaNet R-18 alone'."""
    return f"{s.label} {METHOD_LABEL[method]}" + (f" from {FAMILY_LABEL[teacher]} R-50" if teacher else "")


def describe(args: argparse.Namespace) -> str:
    """The dry run: every run planned now (done or to train) with its config and overrides, then those
    waiting."""
    waiting: List[Waiting] = []
    runs = plan(args, waiting)
    lines = []
    for i, run in enumerate(runs, 1):
        who = run["student"] and f"{row_label(student(run['student']), run['teacher'], run['method'])}, "
        reused = ", bench_accuracy's" if run["reused"] else ""
        lines.append(f"{i:3d} [{'done' if ba.finished(run) else 'to train'}] {run['detector']}/{run['name']} "
                     f"({who}{run['role']}, x {ba.x_text(run['x']) or '-'}{reused}): {run['config']} "
                     f"{' '.join(run['opts'])}")
    for entry in waiting:
        lines.append(f"    [waiting] {entry.what}: {entry.runs} run(s), once {entry.until}")
    todo = sum(not ba.finished(r) for r in runs)
    later = sum(entry.runs for entry in waiting)
    lines.append(f"{len(runs)} runs planned now ({todo} to train), {later} waiting: "
                 f"{len(runs) + later} in all")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Results, latency, targets
# ------------------------------------------------------------------------------------------------------------


def read_result(run: Dict) -> Optional[Dict]:
    """bench_accuracy.read_result of a finished run with the row's student, teacher and slot."""
    row = ba.read_result(run)
    if row is not None:
        row.update({k: run[k] for k in ("student", "teacher", "slot", "reused")})
        row["overrides"] = " ".join(run.get("overrides", []))
    return row


def read_latency(path: str, threads: int) -> Tuple[Dict[Tuple[str, bool], Dict[str, float]], str]:
    """({(family, deploy): {column: CPU ms}}, where they come from) from bench_deploy's CSV: its CPU rows of
    one input (a synthetic one if any, else the file's first) at ``threads`` (else the most it has)."""
    if not os.path.isfile(path):
        return {}, f"no CPU latency: {os.path.relpath(path, ROOT)} not found (run benchmarks/bench_deploy.py)"
    rows = [r for r in read_csv(path) if r["device"] == "cpu"]
    inputs = list(dict.fromkeys(r["input"] for r in rows))
    if not inputs:
        return {}, f"no CPU latency: {os.path.relpath(path, ROOT)} has no CPU row"
    where = next((i for i in inputs if i.startswith("synthetic")), inputs[0])
    counts = {int(r["threads"]) for r in rows if r["input"] == where}
    used = threads if threads in counts else max(counts)
    found: Dict[Tuple[str, bool], Dict[str, float]] = {}
    for row in rows:
        for deploy, model in LATENCY_MODEL.items():
            if (row["input"], int(row["threads"]), row["model"]) == (where, used, model) \
                    and row["runtime"] in LATENCY:
                found.setdefault((row["family"], deploy), {})[LATENCY[row["runtime"]]] = float(row["ms"])
    text = (f"CPU latency (ms per image, batch 1): {os.path.relpath(path, ROOT)} (bench_deploy.py), its rows "
            f"'{LATENCY_MODEL[False]}' / '{LATENCY_MODEL[True]}' of the student's family at input {where}, "
            f"{used} thread(s), PyTorch fp32 and onnxruntime: bench_deploy's models of that shape at that "
            f"input size (random weights), not the 128 px synthetic students trained here")
    return found, text


def summarise(rows: List[Dict], latency: Dict[Tuple[str, bool], Dict[str, float]]) -> List[Dict]:
    """Mean and spread (population std over seeds) of AP, AP50 and val AP50 per table row (student, teacher,
    slot) of the chosen runs; dAP50 over that student alone; s_per_it of the fastest seed; the student's
    CPU latency ("-" where the CSV lacks it)."""
    groups: Dict[Tuple[str, str, str], List[Dict]] = {}
    for row in rows:
        if row.get("chosen") and row["student"]:
            groups.setdefault((row["student"], row["teacher"], row["slot"]), []).append(row)
    summary = []
    for (key, teacher, slot), members in groups.items():
        s = student(key)
        method = members[0]["method"]
        entry = {"student": s.label, "student_key": key, "family": s.family, "teacher_family": teacher,
                 "teacher": f"{FAMILY_LABEL[teacher]} R-50" if teacher else "-", "slot": slot,
                 "method_key": method, "x": members[0]["x"], "seeds": len(members),
                 "method": METHOD_LABEL[method] + (" (best baseline)" if slot == "baseline" else ""),
                 "reused": all(m["reused"] for m in members)}
        entry.update(ba.seed_statistics(members, ("AP", "AP50", "val_AP50")))
        for column in LATENCY.values():
            entry[column] = latency.get((s.family, s.deploy), {}).get(column, "-")
        summary.append(entry)
    slots = ("alone", "ds2d2", "baseline")
    summary.sort(key=lambda e: (STUDENTS.index(e["student_key"]), slots.index(e["slot"]),
                                e["teacher_family"] != e["family"]))
    for entry in summary:
        alone = [e for e in summary if e["student_key"] == entry["student_key"] and e["slot"] == "alone"]
        if alone:
            entry["dAP50"] = entry["AP50"] - alone[0]["AP50"]
    return summary


class Target(NamedTuple):
    """One target's verdict: ``met`` True / False, None when the table lacks the rows it compares."""
    number: int
    what: str
    met: Optional[bool]
    numbers: str

    def line(self) -> str:
        verdict = "not measured" if self.met is None else ("met" if self.met else "not met")
        return f"- Target {self.number}, {self.what}: {verdict} ({self.numbers})"


def targets(summary: Sequence[Dict]) -> List[Target]:
    """The two targets of issue 23: (1) per family in the table, the deployment student distilled by DS2D2
    from its family's teacher within WITHIN_AP50 test AP50 (mean) of the R-18 student distilled the same way;
    (2) for at least one student, a cross-family pair (DS2D2, or the baseline when both pairs use the same
    one) with a test AP50 (mean) at least that of the same-family pair of the same method."""
    def find(key: str, teacher: str, slot: str) -> Optional[Dict]:
        return next((e for e in summary if (e["student_key"], e["teacher_family"], e["slot"]) ==
                     (key, teacher, slot)), None)

    out: List[Target] = []
    for family in dict.fromkeys(e["family"] for e in summary):
        deploy, r18 = (find(f"{family}_{w}", family, "ds2d2") for w in ("deploy", "R18"))
        name = (f"{FAMILY_LABEL[family]}: distilled deploy student within {WITHIN_AP50:g} AP50 of the "
                "distilled R-18 student (DS2D2, same-family teacher)")
        if deploy is None or r18 is None:
            out.append(Target(1, name, None, "a DS2D2 same-family row is missing"))
            continue
        gap = deploy["AP50"] - r18["AP50"]
        numbers = f"deploy {deploy['AP50']:.1f} vs R-18 {r18['AP50']:.1f} ({gap:+.1f})"
        out.append(Target(1, name, gap >= -WITHIN_AP50, numbers))
    pairs = []
    for cross in summary:
        if cross["teacher_family"] in ("", cross["family"]):
            continue
        same = find(cross["student_key"], cross["family"], cross["slot"])
        if same is not None and same["method_key"] == cross["method_key"]:
            pairs.append((cross, same, cross["AP50"] >= same["AP50"]))
    name = "a cross-family pair at least as good (test AP50) as the same-family pair of the same method"
    text = "; ".join(f"{c['student']} {METHOD_LABEL[c['method_key']]}: from {c['teacher']} "
                     f"{c['AP50']:.1f} vs from {s['teacher']} {s['AP50']:.1f}" for c, s, _ in pairs)
    met = any(ok for _, _, ok in pairs) if pairs else None
    out.append(Target(2, name, met, text or "no pair of rows to compare"))
    return out


def report(args: argparse.Namespace, rows: List[Dict], machine: str) -> str:
    """The Markdown, CSV and PNG tables of the finished ``rows`` (bench_accuracy's reused ones included)."""
    name = ba.report_name(args, "deploy_accuracy")
    columns = ["student", "teacher", "method", "x", "seed", "role", "chosen", "reused", "name",
               *ba.METRICS, "val_AP50", "train_s", "s_per_it", "device", "weights", "overrides"]
    write_csv(os.path.join(args.results, f"{name}_runs.csv"), rows, columns)
    latency, latency_note = read_latency(args.latency_csv, args.threads)
    summary = summarise(rows, latency)
    shown = ("AP", "AP50", "val_AP50")
    show = [dict(e, **{m: f"{e[m]:.1f} ± {e[m + '_std']:.1f}" for m in shown}) for e in summary]
    for e in show:
        e["dAP50"] = f"{e['dAP50']:+.1f}" if "dAP50" in e else ""
    table_cols = ["student", "teacher", "method", "x", "seeds", *shown, "dAP50", "s_per_it",
                  *LATENCY.values()]
    csv_cols = ["student", "teacher", "method", "x", "seeds"] + [c for m in shown for c in (m, m + "_std")]
    write_csv(os.path.join(args.results, f"{name}.csv"), summary, csv_cols + table_cols[-4:])
    grid = [dict(r, chosen="yes" if r.get("picked") else "", student=student(r["student"]).label,
                 teacher=r["teacher"] and f"{FAMILY_LABEL[r['teacher']]} R-50",
                 method=METHOD_LABEL[r["method"]]) for r in rows if r.get("role") == "grid"]
    grid_cols = ["student", "teacher", "method", "x", "val_AP50", "chosen", "weights", "name"]
    write_csv(os.path.join(args.results, f"{name}_grid.csv"), grid, grid_cols)
    table = markdown_table(show, table_cols)
    table += "\n\n" + "\n".join(target.line() for target in targets(summary))
    if grid:
        table += (f"\n\nTuning grid: val AP50 ({ba.VAL}) of seed {args.seeds[0]} at each multiplier x "
                  f"(weights: the values trained with).\n\n" + markdown_table(grid, grid_cols))
    title = "The table a user deploys from: accuracy and CPU latency of the students on synthetic DIOR"
    text = write_report(os.path.join(args.results, f"{name}.md"), title, machine, table,
                        notes(args, rows, summary, latency_note))
    if summary:
        labels = list(dict.fromkeys(e["student"] for e in summary))
        kinds = list(dict.fromkeys(bar_kind(e) for e in summary))
        by = {(bar_kind(e), e["student"]): e for e in summary}
        series = {k: [by.get((k, label), {}).get("AP50", 0.0) for label in labels] for k in kinds}
        errors = {k: [by.get((k, label), {}).get("AP50_std", 0.0) for label in labels] for k in kinds}
        bar_plot(os.path.join(args.results, f"{name}.png"), labels, series, f"AP50 ({ba.TEST})",
                 "Students alone and distilled from each family's teacher (mean ± std over seeds)",
                 errors=errors)
    return text


def bar_kind(entry: Dict) -> str:
    """The plot's series of a table row: alone, DS2D2 same / cross, baseline same / cross."""
    if entry["slot"] == "alone":
        return "alone"
    pair = "same" if entry["teacher_family"] == entry["family"] else "cross"
    return f"{'DS2D2' if entry['slot'] == 'ds2d2' else 'baseline'} {pair}"


def notes(args: argparse.Namespace, rows: List[Dict], summary: List[Dict], latency_note: str) -> str:
    """What the table's numbers are, how the rows were chosen and trained, and which came from
    bench_accuracy."""
    first = args.seeds[0]
    parts = [
        f"COCO-style box AP and AP50 on {ba.TEST} (mean ± std over seeds {args.seeds}) of each row at its "
        f"chosen x; val_AP50 on {ba.VAL}; dAP50 = AP50 gain over the same student alone; s_per_it: median "
        f"training seconds per iteration on this (shared) machine, of the fastest seed. x multiplies every "
        f"loss weight of the method, chosen per row among {[float(x) for x in args.grid]} by the best val "
        f"AP50 of seed {first} (ties: the x closest to 1), never on test; for a student alone x (lr) "
        f"multiplies SOLVER.BASE_LR, among {[float(x) for x in args.alone_lr_grid]}.",
    ]
    for family in args.detectors:
        ranking = baseline_ranking(args, family) if "baseline" in args.methods else None
        if ranking:
            text = ", ".join(f"{METHOD_LABEL[m]} {v:.1f}" for m, v in ranking)
            parts.append(f"Best baseline of {FAMILY_LABEL[family]} (mean val AP50 of bench_accuracy's R-18 "
                         f"runs at their chosen x): {text}.")
    for e in summary:
        if e["slot"] == "baseline":
            picked = pick_baseline(args, student(e["student_key"]), e["teacher_family"])
            for method, why in picked[1] if picked else []:
                parts.append(f"{e['student']} from {e['teacher']}: {METHOD_LABEL[method]} cannot run "
                             f"({why}); {e['method']} is the best that can.")
    deploy = [f for f in args.detectors if f"{f}_deploy" in args.students]
    if "baseline" in args.methods and deploy:
        text = "; ".join(f"{FAMILY_LABEL[f]}: {' '.join(deploy_overrides(f))}" for f in deploy)
        parts.append(f"Deployment students' baseline runs: the R-18 baseline config (baselines/ or mixed/) "
                     f"with the deployment student's own keys ({text}), and {INHERIT} False where the config "
                     f"sets it True.")
    reused = [f"{e['student']} {e['method']} ({e['teacher']})" for e in summary if e["reused"]]
    choice = ", the R-18 baselines' runs the baseline choice reads" if "baseline" in args.methods else ""
    parts.append(f"Reused from bench_accuracy.py (its runs, same folders in the shared --work): the teachers "
                 f"and amplifiers{choice}, and the rows {', '.join(reused) or '(none in this table)'}.")
    parts.append(latency_note + ".")
    parts.append(f"Teachers R-50 {args.teacher_iters} iterations, amplifiers {args.amplifier_iters}, "
                 f"students {args.student_iters}, batch {args.batch}, 128 px, {args.num_images} images, "
                 f"{args.threads} torch thread(s) per training ({ba.devices_note(rows)}). Command: python "
                 f"benchmarks/bench_deploy_accuracy.py {args.command}")
    return " ".join(parts)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)

    def plan_now() -> Tuple[List[Dict], str]:  # the plan grows as grids and the baseline choice finish
        waiting: List[Waiting] = []
        runs = plan(args, waiting)
        return runs, f"+{sum(w.runs for w in waiting)} waiting"

    return ba.run_modes(args, describe, plan_now, read_result, report)


if __name__ == "__main__":
    main()
