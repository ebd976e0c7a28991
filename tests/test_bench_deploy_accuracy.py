"""The deploy-table benchmark (issue 23), mostly without training: the configs and overrides of each kind of
row (the deployment student's keys read from its YAML, INHERIT_TEACHER_NECK_HEAD turned off, the mixed
configs), the same-family R-18 rows being bench_accuracy's own runs, the baseline choice on val only with its
fall-back where the distiller refuses a baseline (checked against the distiller itself), the CPU latency read
from bench_deploy's table, the targets; then a tiny end-to-end run, rerun to show that it resumes."""
import csv
import os
import sys

import pytest
import yaml
from detectron2.modeling import build_model

from conftest import tiny_cfg, tiny_stages
from test_bench_accuracy_plan import fake_result, overrides, yaml_value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_accuracy as ba  # noqa: E402
from benchmarks import bench_deploy_accuracy as bda  # noqa: E402

FGD_KEYS = ba.TERM_WEIGHTS["FGD"]


def test_same_family_r18_rows_and_teachers_are_bench_accuracys_runs(tmp_path):
    args = bda.parse_args(["--work", str(tmp_path)])
    runs = bda.plan(args)
    reused = [r for r in runs if r["reused"]]
    assert {r["student"] for r in reused} == {"", "retinanet_R18", "faster_rcnn_R18"}
    assert all(r["teacher"] in ("", r["detector"]) for r in reused)  # same family only
    for family in bda.FAMILIES:
        # bench_accuracy's own full plan, from its own parser: same folders, configs and overrides
        full = ba.parse_args(["--work", str(tmp_path), "--detectors", family])
        theirs = {r["output"]: (r["config"], r["opts"]) for r in ba.plan(full, family)}
        mine = [r for r in reused if r["detector"] == family]
        assert {os.path.basename(r["output"]) for r in mine} >= {
            "teacher_it6000", "amplifier_it1000_t6000", "alone_lr0.25_it1000_t6000_s1",
            "ds2d2_x10_it1000_t6000_s1", "fgd_x0.1_it1000_t6000_s1", "crosskd_it1000_t6000_s1"}
        for run in mine:
            assert theirs[run["output"]] == (run["config"], run["opts"]), run["name"]
    new = [r for r in runs if not r["reused"]]
    assert not [r for r in new if r["student"].endswith("R18") and r["teacher"] == r["detector"]]
    outputs = [r["output"] for r in runs]
    assert len(outputs) == len(set(outputs))


def test_full_default_plan_on_an_empty_work_folder(tmp_path):
    text = bda.describe(bda.parse_args(["--work", str(tmp_path)]))
    grid, lrs, seeds = 3, 2, 3
    stages = 2 * 2  # teacher and amplifier of both families
    accuracy_first = 2 * (lrs + grid + 5 * grid)  # per family: R-18 alone, DS2D2, the 5 baselines' grids
    new_first = 2 * (lrs + 3 * grid)  # deploy alone, deploy DS2D2 same and cross, R-18 DS2D2 cross
    planned = stages + accuracy_first + new_first
    later = 2 * (7 * (seeds - 1) + 4 * (seeds - 1) + 3 * (grid + seeds - 1))  # + 3 baseline rows per family
    assert text.endswith(f"{planned} runs planned now ({planned} to train), {later} waiting: "
                         f"{planned + later} in all")
    assert "[waiting] RetinaNet deploy best baseline from Faster R-CNN R-50: 5 run(s)" in text


def test_quick_plans_the_retinanet_students_alone_and_distilled_by_their_own_teacher(tmp_path):
    waiting = []
    runs = bda.plan(bda.parse_args(["--quick", "--work", str(tmp_path)]), waiting)
    assert not waiting
    assert [(r["name"], r["reused"]) for r in runs] == [
        ("teacher_it6000", True), ("amplifier_it1000_t6000", True), ("alone_it1000_t6000_s1", True),
        ("ds2d2_it1000_t6000_s1", True), ("deploy_alone_it1000_t6000_s1", False),
        ("deploy_ds2d2_it1000_t6000_s1", False)]


def test_deploy_and_cross_rows_read_their_configs(tmp_path):
    args = bda.parse_args(["--work", str(tmp_path)])
    deploy, r18 = bda.student("retinanet_deploy"), bda.student("faster_rcnn_R18")
    alone = bda.new_run(args, deploy, None, "alone", 2, 0.25, "seed")
    assert alone["config"] == "configs/synthetic/retinanet_R18_deploy_student.yaml"
    lr = yaml_value(alone["config"], "SOLVER.BASE_LR")
    assert float(overrides(alone)["SOLVER.BASE_LR"]) == pytest.approx(0.25 * lr)
    assert alone["name"] == "deploy_alone_lr0.25_it1000_t6000_s2"
    assert alone["output"] == os.path.join(str(tmp_path), "retinanet", alone["name"])

    same = bda.new_run(args, deploy, "retinanet", "ds2d2", 1, 10.0, "grid")
    cross = bda.new_run(args, deploy, "faster_rcnn", "ds2d2", 3, 1.0, "seed")
    mixed = bda.new_run(args, r18, "retinanet", "ds2d2", 1, 0.1, "grid")
    assert (same["config"], cross["config"], mixed["config"]) == (
        "configs/synthetic/retinanet_R50_to_R18_deploy.yaml",
        "configs/synthetic/mixed/faster_rcnn_R50_to_retinanet_R18_deploy.yaml",
        "configs/synthetic/mixed/retinanet_R50_to_faster_rcnn_R18.yaml")
    assert (same["name"], cross["name"], mixed["name"]) == (
        "deploy_ds2d2_x10_it1000_t6000_s1", "deploy_from_faster_rcnn_ds2d2_it1000_t6000_s3",
        "from_retinanet_ds2d2_x0.1_it1000_t6000_s1")
    assert mixed["output"] == os.path.join(str(tmp_path), "faster_rcnn", mixed["name"])
    for run, teacher in ((same, "retinanet"), (cross, "faster_rcnn"), (mixed, "retinanet")):
        opts = overrides(run)
        assert opts["MODEL.DS2D2.TEACHER_WEIGHTS"] == os.path.join(
            str(tmp_path), teacher, "teacher_it6000", "model_final.pth")
        assert opts["MODEL.DS2D2.AMPLIFIER_WEIGHTS"] == os.path.join(
            str(tmp_path), teacher, "amplifier_it1000_t6000", "model_final.pth")
    x1 = yaml_value(cross["config"], "MODEL.DS2D2.LOSS.IMPLICIT_FULL")  # the mixed config's own weight
    assert float(overrides(cross)["MODEL.DS2D2.LOSS.IMPLICIT_FULL"]) == pytest.approx(x1)
    assert float(overrides(same)["MODEL.DS2D2.LOSS.EXPLICIT_LOW"]) == pytest.approx(
        10 * yaml_value(same["config"], "MODEL.DS2D2.LOSS.EXPLICIT_LOW"))


def deploy_keys(family):
    """The deployment student YAML's own keys, flattened, read here without the benchmark's code."""
    with open(os.path.join(ROOT, f"configs/synthetic/{family}_R18_deploy_student.yaml")) as f:
        node = yaml.safe_load(f)
    found = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            found[prefix] = value

    walk("", {k: v for k, v in node.items() if k not in ("_BASE_", "OUTPUT_DIR")})
    return found


@pytest.mark.parametrize("family", bda.FAMILIES)
def test_deploy_baseline_rows_take_the_students_keys_and_inherit_nothing(tmp_path, family):
    args = bda.parse_args(["--work", str(tmp_path)])
    s, other = bda.student(f"{family}_deploy"), bda.OTHER[family]
    keys = deploy_keys(family)
    assert keys and "MODEL.FPN.OUT_CHANNELS" in keys
    for teacher, method, folder in ((family, "fgd", "baselines"), (other, "fgd", "mixed"),
                                    (family, "fitnet", "baselines")):
        run = bda.new_run(args, s, teacher, method, 1, 10.0, "grid")
        base = (f"configs/synthetic/baselines/{family}_R50_to_R18_{method}.yaml" if teacher == family else
                f"configs/synthetic/mixed/{teacher}_R50_to_{family}_R18_{method}.yaml")
        assert run["config"] == base, folder
        opts = overrides(run)
        for key, value in keys.items():
            assert opts[key] == str(value)
        cfg = ba.load_config(run["config"], run["opts"])
        assert cfg.MODEL.FPN.OUT_CHANNELS == keys["MODEL.FPN.OUT_CHANNELS"]
        assert cfg.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD is False
        # turned off only where the baseline config turns it on (same-family FGD; the mixed ones set False)
        assert (bda.INHERIT in opts) == bool(ba.load_config(base, []).MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD)
        assert run["name"] == ("deploy_" + ("" if teacher == family else f"from_{teacher}_")
                               + f"{method}_x10_it1000_t6000_s1")
    fgd = bda.new_run(args, s, family, "fgd", 1, 10.0, "grid")
    assert [float(overrides(fgd)[k]) for k in FGD_KEYS] == pytest.approx(
        [10 * yaml_value(fgd["config"], k) for k in FGD_KEYS])


def test_deploy_keys_come_from_the_yaml_not_from_the_code(tmp_path, monkeypatch):
    (tmp_path / "retinanet_deploy.yaml").write_text("_BASE_: x.yaml\nMODEL:\n  FPN:\n    OUT_CHANNELS: 48\n"
                                                    "  RETINANET:\n    NUM_CONVS: 3\nOUTPUT_DIR: o\n")
    monkeypatch.setitem(bda.STUDENT_CONFIG, True, str(tmp_path / "{}_deploy.yaml"))
    assert bda.deploy_overrides("retinanet") == [
        "MODEL.FPN.OUT_CHANNELS", "48", "MODEL.RETINANET.NUM_CONVS", "3"]


# (student, teacher, student FPN width, method): the tiny teachers have width 64
REFUSAL_CASES = [
    ("RetinaNet", "GeneralizedRCNN", 64, "crosskd"),
    ("GeneralizedRCNN", "RetinaNet", 64, "crosskd"),
    ("RetinaNet", "RetinaNet", 32, "crosskd"),
    ("RetinaNet", "RetinaNet", 64, "crosskd"),
    ("GeneralizedRCNN", "GeneralizedRCNN", 32, "crosskd"),
    ("GeneralizedRCNN", "RetinaNet", 32, "pkd"),
    ("RetinaNet", "GeneralizedRCNN", 64, "pkd"),
    ("RetinaNet", "RetinaNet", 32, "fgd"),
]
TERM = {"crosskd": "CrossKD", "pkd": "PKD", "fgd": "FGD"}


@pytest.mark.parametrize("student_kind, teacher_kind, width, method", REFUSAL_CASES)
def test_refusal_says_what_the_distiller_refuses(tmp_path, student_kind, teacher_kind, width, method):
    cfg = tiny_stages(tmp_path, student_kind, teacher_detector=teacher_kind,
                      student_opts=["MODEL.FPN.OUT_CHANNELS", width, "MODEL.DS2D2.TERMS", [TERM[method]]])
    why = bda.refusal(method, tiny_cfg(student_kind, ["MODEL.FPN.OUT_CHANNELS", width]),
                      tiny_cfg(teacher_kind, ["MODEL.FPN.OUT_CHANNELS", 64]))
    try:
        build_model(cfg)
        refused = None
    except ValueError as error:
        refused = str(error)
    assert (why is None) == (refused is None), (why, refused)


def test_refusal_of_the_real_configs():
    cfg = {key: ba.load_config(bda.student(key).config, []) for key in bda.STUDENTS}
    teacher = {f: ba.load_config(bda.TEACHER_CONFIG.format(f), []) for f in bda.FAMILIES}
    assert bda.refusal("crosskd", cfg["retinanet_R18"], teacher["retinanet"]) is None
    assert "one family only" in bda.refusal("crosskd", cfg["retinanet_R18"], teacher["faster_rcnn"])
    assert "head convs" in bda.refusal("crosskd", cfg["retinanet_deploy"], teacher["retinanet"])
    assert bda.refusal("crosskd", cfg["faster_rcnn_deploy"], teacher["faster_rcnn"]) is None  # adapters
    assert "PKD" in bda.refusal("pkd", cfg["faster_rcnn_deploy"], teacher["faster_rcnn"])
    assert bda.refusal("pkd", cfg["faster_rcnn_R18"], teacher["retinanet"]) is None
    assert all(bda.refusal(m, cfg[s], teacher[t]) is None for m in ("fitnet", "fgd", "mgd")
               for s in bda.STUDENTS for t in bda.FAMILIES)


def test_the_baseline_is_chosen_on_val_only_and_falls_back_where_refused(tmp_path):
    argv = ["--work", str(tmp_path), "--students", "retinanet_R18", "retinanet_deploy", "--seeds", "1", "2",
            "--grid", "1", "--methods", "baseline"]
    args = bda.parse_args(argv)
    waiting = []
    runs = bda.plan(args, waiting)
    assert not [r for r in runs if not r["reused"]]  # nothing new before the choice
    assert {w.what for w in waiting} == {"RetinaNet R-18 best baseline from Faster R-CNN R-50",
                                         "RetinaNet deploy best baseline from RetinaNet R-50",
                                         "RetinaNet deploy best baseline from Faster R-CNN R-50"}
    # per seed (val, test): CrossKD best on val, PKD best on test but worst on val; MGD above FGD on the mean
    scores = {"crosskd": [(70.0, 1.0), (68.0, 1.0)], "fgd": [(60.0, 50.0), (40.0, 50.0)],
              "mgd": [(55.0, 40.0), (55.0, 40.0)], "fitnet": [(30.0, 30.0), (30.0, 30.0)],
              "pkd": [(10.0, 99.0), (12.0, 99.0)]}
    for run in runs:
        if run["method"] in scores:
            fake_result(run["output"], *scores[run["method"]][run["seed"] - 1])
    del_last = [r for r in runs if r["method"] == "fitnet" and r["seed"] == 2][0]
    os.remove(os.path.join(del_last["output"], "eval_results.json"))
    assert bda.baseline_ranking(args, "retinanet") is None  # one run unfinished: no choice yet
    fake_result(del_last["output"], 30.0, 30.0)
    assert bda.baseline_ranking(args, "retinanet") == [
        ("crosskd", 69.0), ("mgd", 55.0), ("fgd", 50.0), ("fitnet", 30.0), ("pkd", 11.0)]
    r18, deploy = bda.student("retinanet_R18"), bda.student("retinanet_deploy")
    assert bda.pick_baseline(args, r18, "retinanet") == ("crosskd", [])
    method, skipped = bda.pick_baseline(args, r18, "faster_rcnn")
    assert method == "mgd" and [m for m, _ in skipped] == ["crosskd"]
    method, skipped = bda.pick_baseline(args, deploy, "retinanet")
    assert method == "mgd" and "head convs" in skipped[0][1]
    runs = bda.plan(args)
    shown = {r["name"] for r in runs if r["chosen"]}
    assert shown == {"crosskd_it1000_t6000_s1", "crosskd_it1000_t6000_s2",  # bench_accuracy's, same family
                     "from_faster_rcnn_mgd_it1000_t6000_s1", "from_faster_rcnn_mgd_it1000_t6000_s2",
                     "deploy_mgd_it1000_t6000_s1", "deploy_mgd_it1000_t6000_s2",
                     "deploy_from_faster_rcnn_mgd_it1000_t6000_s1",
                     "deploy_from_faster_rcnn_mgd_it1000_t6000_s2"}
    cross = [r for r in runs if r["name"] == "from_faster_rcnn_mgd_it1000_t6000_s1"][0]
    assert cross["config"] == "configs/synthetic/mixed/faster_rcnn_R50_to_retinanet_R18_mgd.yaml"


def result_rows(student_key, teacher, slot, method, ap50s):
    return [dict(student=student_key, teacher=teacher, slot=slot, method=method, x=1.0, reused=False,
                 chosen=True, AP=a / 2, AP50=a, val_AP50=a + 1, s_per_it=0.5 + i)
            for i, a in enumerate(ap50s)]


def test_summary_and_targets_on_given_numbers():
    rows = (result_rows("retinanet_R18", "", "alone", "alone", [40.0, 42.0])
            + result_rows("retinanet_R18", "retinanet", "ds2d2", "ds2d2", [52.0, 52.0])
            + result_rows("retinanet_deploy", "retinanet", "ds2d2", "ds2d2", [50.0, 50.0])  # -2.0: met
            + result_rows("retinanet_R18", "faster_rcnn", "ds2d2", "ds2d2", [51.0, 52.0])  # 51.5 < 52
            + result_rows("faster_rcnn_R18", "faster_rcnn", "ds2d2", "ds2d2", [45.0, 45.0])
            + result_rows("faster_rcnn_deploy", "faster_rcnn", "ds2d2", "ds2d2", [42.0, 43.8])  # -2.1
            + result_rows("faster_rcnn_deploy", "faster_rcnn", "baseline", "crosskd", [30.0, 30.0])
            + result_rows("faster_rcnn_deploy", "retinanet", "baseline", "fgd", [35.0, 35.0]))  # other method
    latency = {("retinanet", False): {"cpu_ms_pytorch": 100.0, "cpu_ms_onnxruntime": 80.0}}
    summary = bda.summarise(rows, latency)
    first = summary[0]
    assert (first["student"], first["method"], first["AP50"], first["AP50_std"], first["dAP50"]) == (
        "RetinaNet R-18", "alone", 41.0, 1.0, 0.0)
    assert first["s_per_it"] == 0.5 and first["cpu_ms_pytorch"] == 100.0
    assert summary[1]["dAP50"] == 11.0 and summary[1]["teacher"] == "RetinaNet R-50"
    assert [e["teacher"] for e in summary[1:3]] == ["RetinaNet R-50", "Faster R-CNN R-50"]  # same first
    deploy = [e for e in summary if e["student_key"] == "faster_rcnn_deploy"]
    assert deploy[0]["cpu_ms_pytorch"] == "-" and "dAP50" not in deploy[0]  # no latency row, no alone row
    assert deploy[1]["method"] == "CrossKD (best baseline)"
    results = bda.targets(summary)
    assert [(t.number, t.what.split(":")[0], t.met) for t in results] == [
        (1, "RetinaNet", True), (1, "Faster R-CNN", False),
        (2, "a cross-family pair at least as good (test AP50) as the same-family pair of the same method",
         False)]
    assert results[0].numbers == "deploy 50.0 vs R-18 52.0 (-2.0)"
    assert results[1].numbers == "deploy 42.9 vs R-18 45.0 (-2.1)"
    assert results[2].numbers == ("RetinaNet R-18 DS2D2: from Faster R-CNN R-50 51.5 vs from RetinaNet R-50 "
                                  "52.0")
    assert results[0].line().startswith("- Target 1, RetinaNet: distilled deploy student within 2 AP50")
    assert results[0].line().endswith(": met (deploy 50.0 vs R-18 52.0 (-2.0))")
    better = rows + result_rows("retinanet_deploy", "faster_rcnn", "ds2d2", "ds2d2", [50.0, 50.0])  # tie
    assert bda.targets(bda.summarise(better, {}))[2].met is True
    only_deploy = bda.targets(bda.summarise(rows[4:6], {}))  # a deploy row without its R-18 row
    assert [(t.number, t.met) for t in only_deploy] == [(1, None), (2, None)]
    assert only_deploy[1].line().endswith("not measured (no pair of rows to compare)")


def test_latency_is_read_from_bench_deploys_table(tmp_path):
    path = tmp_path / "deploy.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["family", "input", "model", "runtime", "device", "threads", "ms"])
        for threads, scale in ((1, 2.0), (2, 1.0)):
            for model, ms in (("teacher R-101", 900.0), ("student R-18", 300.0), ("deploy R-18", 100.0)):
                for runtime, factor in (("pytorch fp32", 1.0), ("onnxruntime", 0.7)):
                    writer.writerow(["retinanet", "DIOR 800x800", model, runtime, "cpu", threads,
                                     ms * scale * factor])
        writer.writerow(["retinanet", "DIOR 800x800", "deploy R-18", "pytorch fp32", "cuda", 2, 1.0])
        writer.writerow(["faster_rcnn", "DOTA 1024x1024", "deploy R-18", "pytorch fp32", "cpu", 2, 7.0])
    found, note = bda.read_latency(str(path), threads=2)
    assert found[("retinanet", True)] == {"cpu_ms_pytorch": 100.0, "cpu_ms_onnxruntime": 70.0}
    assert found[("retinanet", False)]["cpu_ms_pytorch"] == 300.0
    assert ("faster_rcnn", True) not in found  # another input than the one used
    assert "DIOR 800x800, 2 thread(s)" in note
    found, note = bda.read_latency(str(path), threads=8)  # not measured at 8: the most there is
    assert found[("retinanet", True)]["cpu_ms_pytorch"] == 100.0 and "2 thread(s)" in note
    found, note = bda.read_latency(str(tmp_path / "none.csv"), threads=2)
    assert found == {} and "not found" in note


@pytest.mark.slow
def test_tiny_deploy_table_resumes(tmp_path, capsys):
    argv = ["--students", "retinanet_deploy", "--seeds", "1", "--grid", "1", "--alone-lr-grid", "1",
            "--teacher-iters", "2", "--amplifier-iters", "2", "--student-iters", "2", "--batch", "1",
            "--num-images", "10", "--workers", "0", "--threads", "1", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--latency-csv", str(tmp_path / "none.csv")]
    bda.main(argv)
    out = capsys.readouterr().out
    results = tmp_path / "results"
    for ext in ("md", "csv", "png"):
        assert os.path.getsize(results / f"deploy_accuracy.{ext}") > 0
    with open(results / "deploy_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["student"], r["teacher"], r["method"].split(" ")[0]) for r in rows] == [
        ("RetinaNet deploy", "-", "alone"), ("RetinaNet deploy", "RetinaNet R-50", "DS2D2"),
        ("RetinaNet deploy", "Faster R-CNN R-50", "DS2D2"),
        ("RetinaNet deploy", "RetinaNet R-50", rows[3]["method"].split(" ")[0]),
        ("RetinaNet deploy", "Faster R-CNN R-50", rows[4]["method"].split(" ")[0])]
    assert all(not float(r["AP50"]) < 0 and not float(r["AP50"]) > 100 for r in rows)  # NaN at 2 iterations
    assert rows[3]["method"] not in ("PKD (best baseline)", "CrossKD (best baseline)")  # refused: narrower
    with open(results / "deploy_accuracy_runs.csv") as f:
        trained = list(csv.DictReader(f))
    assert len(trained) == 4 + 5 + 5  # teachers and amplifiers, the 5 R-18 baselines, the 5 rows
    assert ("- Target 1, RetinaNet: distilled deploy student within 2 AP50 of the distilled R-18 student "
            "(DS2D2, same-family teacher): not measured (a DS2D2 same-family row is missing)") in out
    assert "- Target 2, " in out and "Faster R-CNN: distilled" not in out
    bda.main(argv)  # every run finished: all kept, none retrained
    assert capsys.readouterr().out.count("already done, kept") == 14
    with open(results / "deploy_accuracy.csv") as f:
        assert list(csv.DictReader(f)) == rows
    text = bda.main(argv + ["--tables"])  # rewrites the tables from the finished runs, trains nothing
    assert "| RetinaNet deploy | Faster R-CNN R-50 | DS2D2 | 1 | 1 |" in text
    assert f"Command: python benchmarks/bench_deploy_accuracy.py {' '.join(argv)}\n" in text
