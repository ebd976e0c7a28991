"""The accuracy benchmark's plan, without training: run names (x1 keeps the names of the untuned benchmark),
weight multipliers read from the configs, the choice of x on val, and the two phases (the other seeds only
once a method's grid has finished), down to the main loop with a fake trainer interrupted and rerun."""
import json
import os
import sys

import pytest
import yaml

from ds2d2.checkpoint import atomic_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_accuracy as ba  # noqa: E402

FGD = ("MODEL.DS2D2.FGD.ALPHA", "MODEL.DS2D2.FGD.BETA", "MODEL.DS2D2.FGD.GAMMA", "MODEL.DS2D2.FGD.LAMBDA")
DS2D2 = ("MODEL.DS2D2.LOSS.EXPLICIT_LOW", "MODEL.DS2D2.LOSS.EXPLICIT_HIGH", "MODEL.DS2D2.LOSS.IMPLICIT_FULL",
         "MODEL.DS2D2.LOSS.IMPLICIT_HIGH")
# every loss weight of each tuned method
METHOD_KEYS = {
    "fitnet": ("MODEL.DS2D2.FITNET.WEIGHT",), "fgd": FGD, "pkd": ("MODEL.DS2D2.PKD.WEIGHT",),
    "mgd": ("MODEL.DS2D2.MGD.WEIGHT",),
    "crosskd": ("MODEL.DS2D2.CROSSKD.CLS_WEIGHT", "MODEL.DS2D2.CROSSKD.BOX_WEIGHT"), "ds2d2": DS2D2,
}


def overrides(run):
    opts = run["opts"]
    assert len(opts) % 2 == 0
    return dict(zip(opts[::2], opts[1::2]))  # the last value of a key wins, as in merge_from_list


def yaml_value(config, key):
    """``key`` as the YAML file (or its _BASE_ chain) sets it, read without the project's loader."""
    path = os.path.join(ROOT, config)
    while True:
        with open(path) as f:
            node = yaml.safe_load(f)
        found = node
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found is not None:
            return float(found)
        if "_BASE_" not in node:
            return None
        path = os.path.join(os.path.dirname(path), node["_BASE_"])


def fake_result(output, val_ap50, test_ap50=None):
    """An eval_results.json with val AP50 (and test metrics unless ``test_ap50`` is None)."""
    os.makedirs(output, exist_ok=True)
    results = {ba.VAL: {"bbox": {"AP": val_ap50 / 2, "AP50": val_ap50, "AP75": 0.0, "APs": 0.0}}}
    if test_ap50 is not None:
        results[ba.TEST] = {"bbox": {"AP": test_ap50 / 2, "AP50": test_ap50, "AP75": 0.0, "APs": 0.0}}
    write_results(output, results)


def write_results(output, results):
    """Write eval_results.json as train_net.save_results does: whole or not at all (the parallel benchmark
    reads it while other runs' threads write theirs)."""
    with atomic_path(os.path.join(output, "eval_results.json"), durable=False) as tmp:
        with open(tmp, "w") as f:
            json.dump(results, f)


def fake_train_net(monkeypatch) -> list:
    """Make run_training's train_net.py processes succeed at once; returns the list their commands go to."""
    commands = []

    class FakeProcess:
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(ba.subprocess, "Popen", FakeProcess)
    return commands


def test_x1_keeps_the_names_of_the_untuned_benchmark():
    args = ba.parse_args([])
    names = ba.run_names(args, "retinanet")
    assert names == {
        "teacher": "teacher_it6000", "amplifier": "amplifier_it1000_t6000", "alone": "alone_it1000_t6000",
        "fitnet": "fitnet1_it1000_t6000", "fgd": "fgd_it1000_t6000", "pkd": "pkd_it1000_t6000",
        "mgd": "mgd_it1000_t6000", "crosskd": "crosskd_it1000_t6000", "explicit": "explicit_it1000_t6000",
        "implicit": "implicit_it1000_t6000", "ds2d2": "ds2d2_it1000_t6000",
    }
    x10 = ba.run_names(args, "faster_rcnn", 10.0)
    assert (x10["ds2d2"], x10["fgd"], x10["teacher"]) == (
        "ds2d2_x10_it1000_t6000", "fgd_x10_it1000_t6000", "teacher_it6000")
    assert ba.run_names(args, "faster_rcnn", 0.25)["alone"] == "alone_lr0.25_it1000_t6000"
    assert ba.run_names(args, "retinanet", 0.1)["crosskd"] == "crosskd_x0.1_it1000_t6000"
    # FitNet's name carries its absolute weight: x10 of 1 is the folder of the old --fitnet-weight 10 runs
    assert x10["fitnet"] == "fitnet10_it1000_t6000"
    old = ba.parse_args(["--fitnet-weight", "10", "--explicit-weight", "faster_rcnn=5"])
    assert ba.run_names(old, "faster_rcnn")["fitnet"] == "fitnet10_it1000_t6000"
    assert ba.run_names(old, "faster_rcnn", 0.1)["ds2d2"] == "ds2d2_ex5_x0.1_it1000_t6000"
    first = {r["name"] for r in ba.plan(args, "retinanet")}
    assert {"teacher_it6000", "amplifier_it1000_t6000", "alone_it1000_t6000_s1", "ds2d2_it1000_t6000_s1",
            "ds2d2_x0.1_it1000_t6000_s1", "ds2d2_x10_it1000_t6000_s1", "fitnet0.1_it1000_t6000_s1",
            "fitnet1_it1000_t6000_s1", "fitnet10_it1000_t6000_s1"} <= first


@pytest.mark.parametrize("detector", ba.DETECTORS)
def test_a_multiplier_scales_every_weight_of_the_method_from_its_config(detector):
    args = ba.parse_args([])
    configs = ba.variants(args, detector)
    for method, keys in METHOD_KEYS.items():
        for x in (0.1, 10.0):
            run = ba.student_run(args, detector, method, 1, x)
            opts = overrides(run)
            assert set(run["weights"]) == set(keys), method
            for key in keys:
                base = yaml_value(configs[method][0], key)  # the value in the method's own YAML
                assert base is not None and base > 0, (method, key)
                assert float(opts[key]) == pytest.approx(base * x, rel=1e-9), (detector, method, key, x)
                assert "." in opts[key] or "e" in opts[key], "a float override, never an int"
    # the student alone: x scales its learning rate (x0.25 of the RetinaNet student alone's is DS2D2's rate)
    alone = ba.student_run(args, detector, "alone", 2, 0.25)
    lr = yaml_value(configs["alone"][0], "SOLVER.BASE_LR")
    assert float(overrides(alone)["SOLVER.BASE_LR"]) == pytest.approx(0.25 * lr)
    assert alone["name"] == "alone_lr0.25_it1000_t6000_s2"
    if detector == "retinanet":
        assert 0.25 * lr == yaml_value(configs["ds2d2"][0], "SOLVER.BASE_LR")
    # the ablations scale DS2D2's weights and keep the other stream at 0
    explicit = overrides(ba.student_run(args, detector, "explicit", 1, 10.0))
    assert float(explicit["MODEL.DS2D2.LOSS.IMPLICIT_FULL"]) == 0.0
    assert float(explicit["MODEL.DS2D2.LOSS.EXPLICIT_LOW"]) == pytest.approx(
        10 * yaml_value(configs["ds2d2"][0], "MODEL.DS2D2.LOSS.EXPLICIT_LOW"))


def test_weights_come_from_the_config_and_the_flags(tmp_path, monkeypatch):
    config = tmp_path / "fgd.yaml"
    config.write_text(f"_BASE_: {ROOT}/configs/synthetic/baselines/retinanet_R50_to_R18_fgd.yaml\n"
                      "MODEL:\n  DS2D2:\n    FGD:\n      ALPHA: 3.0\n      BETA: 0.25\n")
    real = ba.variants
    monkeypatch.setattr(ba, "variants", lambda args, d: dict(real(args, d), fgd=(str(config), [])))
    opts = overrides(ba.student_run(ba.parse_args([]), "retinanet", "fgd", 1, 10.0))
    assert [float(opts[k]) for k in FGD] == pytest.approx([30.0, 2.5, 5e-3, 5e-5])
    monkeypatch.setattr(ba, "variants", real)
    args = ba.parse_args(["--explicit-weight", "retinanet=0.5", "--fitnet-weight", "4"])
    ds2d2 = overrides(ba.student_run(args, "retinanet", "ds2d2", 1, 0.1))
    assert [float(ds2d2[k]) for k in DS2D2] == pytest.approx([0.05, 0.05, 0.1, 0.1])
    fitnet = ba.student_run(args, "retinanet", "fitnet", 2, 10.0)
    assert overrides(fitnet)["MODEL.DS2D2.FITNET.WEIGHT"] == "40.0"
    assert fitnet["name"] == "fitnet40_it1000_t6000_s2"


def test_the_choice_reads_val_only(tmp_path):
    def grid(vals, tests=None):
        runs = []
        for i, (x, val) in enumerate(zip((0.1, 1.0, 10.0), vals)):
            out = tmp_path / f"g{len(list(tmp_path.iterdir()))}_{x:g}"
            if val is not None:
                fake_result(str(out), val, None if tests is None else tests[i])
            runs.append({"x": x, "output": str(out)})
        return runs

    assert ba.choose(grid([40.0, 50.0, 60.0], tests=[90.0, 10.0, 0.0])) == 10.0  # best val, whatever test
    assert ba.choose(grid([70.0, 50.0, 60.0])) == 0.1  # no test results at all: never read
    assert ba.choose(grid([60.0, 60.0, 60.0])) == 1.0  # ties: the x closest to 1
    assert ba.choose(grid([50.0, 60.0, 60.0])) == 1.0
    assert ba.choose(grid([60.0, 50.0, 60.0])) == 0.1  # as far from 1 on a log scale: the smaller
    assert ba.choose(grid([60.0, None, 90.0])) is None  # unfinished grid: no choice yet
    assert ba.choose([{"x": 10.0, "output": str(tmp_path / "none")}]) == 10.0  # one value: nothing to choose


def test_other_seeds_only_once_the_grid_has_finished(tmp_path):
    args = ba.parse_args(["--work", str(tmp_path), "--detectors", "retinanet", "--seeds", "1", "2", "3"])
    waiting = []
    runs = ba.plan(args, "retinanet", waiting)
    assert {r["seed"] for r in runs if r["method"] not in ("alone", "teacher", "amplifier")} == {1}
    assert {(r["method"], r["x"]) for r in runs if r["role"] == "grid"} == {
        (m, x) for m in ba.TUNED for x in (0.1, 1.0, 10.0)} | {("alone", 0.25), ("alone", 1.0)}
    assert not any(r["chosen"] for r in runs if r["role"] == "grid")
    assert ("retinanet", "explicit", 1) in waiting and ("retinanet", "fgd", 2) in waiting
    assert {r["x"] for r in runs if r["method"] == "alone"} == {0.25, 1.0}  # its learning rates
    assert len(runs) + len(waiting) == 2 + 2 + 6 * 3 + 2 + 9 * 2

    by_name = {r["name"]: r for r in runs}
    for x, val in ((0.1, 30.0), (1.0, 20.0)):  # fitnet's grid two thirds done: still waiting
        fake_result(by_name[ba.run_names(args, "retinanet", x)["fitnet"] + "_s1"]["output"], val, 1.0)
    assert not [r for r in ba.plan(args, "retinanet") if r["method"] == "fitnet" and r["seed"] > 1]
    fake_result(by_name["fitnet10_it1000_t6000_s1"]["output"], 25.0, 99.0)
    waiting = []
    runs = ba.plan(args, "retinanet", waiting)
    later = [r for r in runs if r["method"] == "fitnet" and r["seed"] > 1]
    assert [(r["name"], r["x"]) for r in later] == [("fitnet0.1_it1000_t6000_s2", 0.1),
                                                    ("fitnet0.1_it1000_t6000_s3", 0.1)]
    assert [r["x"] for r in runs if r["method"] == "fitnet" and r["chosen"]] == [0.1, 0.1, 0.1]
    assert not [r for r in runs if r["method"] in ("fgd", "explicit", "ds2d2") and r["seed"] > 1]
    assert not [r for r in runs if r["method"] in ba.FOLLOW_DS2D2]
    for x in (0.1, 1.0, 10.0):  # DS2D2's grid done: x10 best; explicit and implicit follow it
        name = ba.run_names(args, "retinanet", x)["ds2d2"] + "_s1"
        score = {0.1: 10.0, 1.0: 40.0, 10.0: 45.0}[x]
        fake_result(os.path.join(str(tmp_path), "retinanet", name), score, 0.0)
    runs = ba.plan(args, "retinanet")
    follow = sorted(
        r["name"] for r in runs if r["method"] in ("explicit", "implicit", "ds2d2") and r["chosen"])
    assert follow == sorted(f"{m}_x10_it1000_t6000_s{s}" for m in ("explicit", "implicit", "ds2d2")
                            for s in (1, 2, 3))
    # a grid of one value (--quick) plans every seed at once
    args = ba.parse_args(["--work", str(tmp_path / "q"), "--grid", "1", "--alone-lr-grid", "1", "--seeds",
                          "1", "2", "--detectors", "faster_rcnn", "--methods", "alone", "explicit"])
    waiting = []
    runs = ba.plan(args, "faster_rcnn", waiting)
    assert not waiting
    assert [r["name"] for r in runs if r["chosen"]] == [
        "teacher_it6000", "amplifier_it1000_t6000", "alone_it1000_t6000_s1", "explicit_it1000_t6000_s1",
        "alone_it1000_t6000_s2", "explicit_it1000_t6000_s2"]
    # explicit alone still trains (unshown) DS2D2's grid, whose choice it follows
    assert [r["name"] for r in runs if not r["chosen"]] == ["ds2d2_it1000_t6000_s1"]


def test_main_is_resumable_at_any_point_and_reports_the_choice(tmp_path, monkeypatch, capsys):
    import ds2d2.data.synthetic

    trained = []
    val = {"fitnet": {0.1: 50.0, 1.0: 60.0, 10.0: 60.0}, "ds2d2": {0.1: 70.0, 1.0: 65.0, 10.0: 10.0},
           "alone": {0.25: 30.0, 1.0: 20.0}}

    def fake_training(args, run, data_root):
        if len(trained) == stop_after[0]:
            raise KeyboardInterrupt
        trained.append(run["name"])
        x = run["x"] if run["x"] is not None else 1.0
        if run["role"] == "grid":
            score = val[run["method"]][x]
        else:
            score = 40.0 + run["seed"]
        fake_result(run["output"], score, score - 1)

    monkeypatch.setattr(ba, "run_training", fake_training)
    monkeypatch.setattr(ds2d2.data.synthetic, "write_synthetic_dior", lambda *a: None)
    argv = ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"), "--detectors", "retinanet",
            "--methods", "alone", "fitnet", "implicit", "ds2d2", "--seeds", "1", "2", "--threads", "1"]
    kept = []
    for stop in (3, 9, 10**6):  # interrupted after 3 runs, then after 6 more, then to the end
        stop_after = [stop]
        try:
            ba.main(argv)
        except KeyboardInterrupt:
            pass
        kept.append(capsys.readouterr().out.count("already done, kept"))
    assert kept == [0, 3, 9]  # each call keeps what the calls before trained, and only that
    # 2 + alone 2 + 1 + fitnet 3 + 1 + ds2d2 3 + 1 + implicit x2; each trained exactly once
    assert len(trained) == len(set(trained)) == 2 + 3 + 4 + 4 + 2
    assert "alone_lr0.25_it1000_t6000_s2" in trained and "alone_it1000_t6000_s2" not in trained
    assert trained.index("fitnet1_it1000_t6000_s2") > trained.index("fitnet10_it1000_t6000_s1")
    assert "implicit_x0.1_it1000_t6000_s1" in trained and "ds2d2_x0.1_it1000_t6000_s2" in trained
    text = ba.main(argv)
    assert capsys.readouterr().out.count("already done, kept") == len(trained)
    assert "| detector | method | x | seeds |" in text
    assert "| retinanet | fitnet | 1 | 2 |" in text  # tie 60 = 60: x1 over x10
    assert "| retinanet | alone | lr 0.25 | 2 |" in text
    assert "| retinanet | ds2d2 | 0.1 | 2 |" in text and "| retinanet | implicit | 0.1 | 2 |" in text
    assert "| retinanet | ds2d2 | 10 | 10.0 |  | EXPLICIT_LOW=0.0001 " in text  # the grid table, val only
    x1 = "retinanet ds2d2: EXPLICIT_LOW 1e-05, EXPLICIT_HIGH 1e-05, IMPLICIT_FULL 1, IMPLICIT_HIGH 1"
    assert x1 in text  # the notes: the x1 weights read from the config
    with open(tmp_path / "res" / "accuracy.csv") as f:
        assert f.readline().startswith("detector,method,x,seeds,")


def test_tables_reports_the_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    def no_training(*args):
        raise AssertionError("--tables trained a run")

    monkeypatch.setattr(ba, "run_training", no_training)
    argv = ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"), "--detectors",
            "faster_rcnn", "--methods", "alone", "pkd", "--seeds", "1", "2"]
    by_name = {r["name"]: r for r in ba.plan(ba.parse_args(argv), "faster_rcnn")}
    fake_result(by_name["teacher_it6000"]["output"], 90.0, 91.0)
    fake_result(by_name["alone_it1000_t6000_s1"]["output"], 50.0, 52.0)
    fake_result(by_name["alone_lr0.25_it1000_t6000_s1"]["output"], 55.0, 51.0)
    fake_result(by_name["pkd_x10_it1000_t6000_s1"]["output"], 60.0, 61.0)  # a third of pkd's grid
    text = ba.main(argv + ["--tables"])
    assert "| faster_rcnn | teacher |  | 1 | 45.5 ± 0.0 | 91.0 ± 0.0 |" in text
    assert "| faster_rcnn | alone | lr 0.25 | 1 | 25.5 ± 0.0 | 51.0 ± 0.0 |" in text  # the better val
    assert "| faster_rcnn | pkd |" not in text.split("Tuning grid")[0]  # no x chosen yet: not in the table
    assert "| faster_rcnn | pkd | 10 | 60.0 |  |" in text  # but in the grid table, unchosen
    assert not os.path.exists(tmp_path / "work" / "datasets")  # no data generated either
    assert f"Command: python benchmarks/bench_accuracy.py {' '.join(argv)}\n" in text  # how to train it
    with open(tmp_path / "res" / "accuracy_runs.csv") as f:
        assert len(f.readlines()) == 1 + 4
    ba.main(argv + ["--tables", "--suffix", "_second_pass"])  # a rerun's tables beside the first ones
    assert sorted(os.listdir(tmp_path / "res")) == sorted(
        f"accuracy{suffix}{end}" for suffix in ("", "_second_pass")
        for end in (".md", ".csv", ".png", "_runs.csv", "_grid.csv"))


def test_summary_gives_mean_spread_gain_and_the_fastest_seeds_speed():
    def row(method, seed, ap50, s_per_it):
        return {"detector": "retinanet", "method": method, "x": 1.0, "seed": seed, "chosen": True,
                "AP": ap50 / 2, "AP50": ap50, "AP75": 0.0, "APs": 0.0, "val_AP50": ap50, "s_per_it": s_per_it}

    rows = [row("alone", 1, 20.0, 0.4), row("alone", 2, 24.0, 0.5),
            row("ds2d2", 1, 50.0, 1.5), row("ds2d2", 2, 54.0, 0.6), row("ds2d2", 3, 58.0, 1.4),
            dict(row("ds2d2", 1, 99.0, 0.1), chosen=False)]  # a grid run at another x: left out
    alone, ds2d2 = ba.summarise(rows)
    assert (alone["method"], alone["seeds"], alone["AP50"], alone["AP50_std"]) == ("alone", 2, 22.0, 2.0)
    assert ds2d2["seeds"] == 3 and ds2d2["AP50"] == pytest.approx(54.0)
    assert ds2d2["AP50_std"] == pytest.approx((32 / 3) ** 0.5)
    assert ds2d2["dAP50"] == pytest.approx(32.0)
    assert ds2d2["s_per_it"] == 0.6  # seeds slowed by other jobs do not count


# ------------------------------------------------------------------------------------------------------------
# The rotated detectors: their own configs, datasets, headline metric (DOTA Task 1 on val) and report files
# ------------------------------------------------------------------------------------------------------------


def fake_rotated_result(output, val_map50, val_ap50, test_map50=None, test_ap50=None):
    """A rotated run's eval_results.json: the VOC07 rotated mAP50 and RotatedCOCOEvaluator's box AP per split
    (test only when given)."""
    def split(map50, ap50):
        return {"bbox": {"AP": ap50 / 2, "AP50": ap50, "AP75": ap50 / 4, "APs": ap50 / 3},
                "voc_rotated_ap50": {"mAP50": map50, "AP50-a": map50}}

    results = {"synthetic_diorr_val": split(val_map50, val_ap50)}
    if test_map50 is not None:
        results["synthetic_diorr_test"] = split(test_map50, test_ap50)
    os.makedirs(output, exist_ok=True)
    write_results(output, results)


def test_rotated_detectors_are_asked_for_by_name():
    assert ba.parse_args([]).detectors == ["retinanet", "faster_rcnn"]
    assert ba.parse_args(["--quick"]).detectors == ["retinanet"]
    quick = ba.parse_args(["--quick", "--detectors", "rotated_faster_rcnn"])
    assert quick.detectors == ["rotated_faster_rcnn"]
    assert (quick.methods, quick.grid, quick.seeds) == (["alone", "ds2d2"], [1.0], [1])
    args = ba.parse_args(["--explicit-weight", "rotated_retinanet=0.5"])
    assert ba.run_names(args, "rotated_retinanet")["ds2d2"] == "ds2d2_ex0.5_it1000_t6000"
    assert ba.run_names(args, "retinanet")["ds2d2"] == "ds2d2_it1000_t6000"


@pytest.mark.parametrize("detector", ["rotated_retinanet", "rotated_faster_rcnn"])
def test_a_rotated_detector_trains_its_own_configs_on_the_oriented_splits(detector, tmp_path, monkeypatch):
    args = ba.parse_args(["--work", str(tmp_path), "--detectors", detector])
    runs = ba.plan(args, detector)
    configs = {r["method"]: r["config"] for r in runs}
    assert configs["teacher"] == f"configs/synthetic/{detector}_R50_teacher.yaml"
    assert configs["amplifier"] == f"configs/synthetic/{detector}_R50_amplifier.yaml"
    assert configs["alone"] == f"configs/synthetic/{detector}_R18_student.yaml"
    assert configs["ds2d2"] == f"configs/synthetic/{detector}_R50_to_R18.yaml"
    assert configs["fgd"] == f"configs/synthetic/baselines/{detector}_R50_to_R18_fgd.yaml"
    assert all(os.path.dirname(r["output"]) == str(tmp_path / detector) for r in runs)
    teacher = overrides(next(r for r in runs if r["method"] == "ds2d2"))["MODEL.DS2D2.TEACHER_WEIGHTS"]
    assert teacher == str(tmp_path / detector / "teacher_it6000" / "model_final.pth")
    # every run: the oriented splits of the one generated dataset, and the Task-1 rule's VOC07 11 points
    commands = fake_train_net(monkeypatch)
    for run in (runs[0], ba.plan(args, "retinanet")[0]):
        ba.run_training(args, run, str(tmp_path / "data"))
    rotated, horizontal = (dict(zip(cmd[4::2], cmd[5::2])) for cmd in commands)
    assert rotated["DATASETS.TRAIN"] == "('synthetic_diorr_train',)"
    assert rotated["DATASETS.TEST"] == "('synthetic_diorr_val', 'synthetic_diorr_test')"
    assert rotated["TEST.VOC_USE_07_METRIC"] == "True"
    assert horizontal["DATASETS.TRAIN"] == "('synthetic_dior_train',)"  # the horizontal runs as before
    assert horizontal["DATASETS.TEST"] == "('synthetic_dior_val', 'synthetic_dior_test')"
    assert "TEST.VOC_USE_07_METRIC" not in horizontal


def test_a_rotated_choice_reads_the_val_task1_map_only(tmp_path):
    grid = []
    # val mAP50 (VOC07, rotated IoU) best at x0.1; val COCO AP50 and both test metrics best at x10
    for x, val_map50, val_ap50 in ((0.1, 60.0, 10.0), (1.0, 50.0, 20.0), (10.0, 40.0, 90.0)):
        out = str(tmp_path / f"x{x:g}")
        fake_rotated_result(out, val_map50, val_ap50, test_map50=100 * x, test_ap50=100 * x)
        grid.append({"x": x, "output": out})
    assert ba.choose(grid, ba.SCORING["rotated_retinanet"]) == 0.1
    assert ba.val_score(grid[1]["output"], ba.ORIENTED) == 50.0
    out = str(tmp_path / "val_only")
    fake_rotated_result(out, 33.0, 44.0)  # no test results: never read
    assert ba.val_score(out, ba.ORIENTED) == 33.0
    with pytest.raises(KeyError, match="synthetic_dior_val"):  # a horizontal run's file is not a rotated one
        ba.val_score(out, ba.HORIZONTAL)

    # the plan: the other seeds train at the x that val mAP50 chose
    args = ba.parse_args(["--work", str(tmp_path / "w"), "--detectors", "rotated_faster_rcnn", "--methods",
                          "pkd", "--seeds", "1", "2"])
    for x, val_map50 in ((0.1, 70.0), (1.0, 60.0), (10.0, 50.0)):
        name = ba.run_names(args, "rotated_faster_rcnn", x)["pkd"] + "_s1"
        fake_rotated_result(str(tmp_path / "w" / "rotated_faster_rcnn" / name), val_map50, 100 - val_map50,
                            test_map50=100 - val_map50, test_ap50=100 - val_map50)
    seeds = [(r["seed"], r["x"]) for r in ba.plan(args, "rotated_faster_rcnn") if r["chosen"]]
    assert seeds[-2:] == [(1, 0.1), (2, 0.1)]


def test_rotated_tables_report_task1_map_in_their_own_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ba, "run_training", lambda *a: pytest.fail("--tables trained a run"))
    res = tmp_path / "res"
    res.mkdir()
    (res / "accuracy.md").write_text("the horizontal table\n")
    common = ["--work", str(tmp_path / "work"), "--results", str(res), "--methods", "alone",
              "--alone-lr-grid", "1", "--seeds", "1", "2"]
    argv = common + ["--detectors", "rotated_retinanet"]
    by_name = {r["name"]: r for r in ba.plan(ba.parse_args(argv), "rotated_retinanet")}
    fake_rotated_result(by_name["teacher_it6000"]["output"], 80.0, 70.0, 81.0, 71.0)
    fake_rotated_result(by_name["alone_it1000_t6000_s1"]["output"], 50.0, 40.0, 52.0, 42.0)
    fake_rotated_result(by_name["alone_it1000_t6000_s2"]["output"], 54.0, 40.0, 56.0, 46.0)
    text = ba.main(argv + ["--tables"])
    assert (res / "accuracy.md").read_text() == "the horizontal table\n"  # never overwritten
    assert not (res / "accuracy.csv").exists() and not (res / "accuracy_runs.csv").exists()
    assert text.startswith("## Accuracy of the rotated detectors on synthetic DIOR-R\n")
    header = ("| detector | method | x | seeds | mAP50 | AP | AP50 | AP75 | APs | val_mAP50 | dmAP50 "
              "| s_per_it |")
    assert header in text
    # test mAP50 (52, 56) and COCO AP50 (42, 46) averaged apart; val mAP50 (50, 54); gain on mAP50
    assert "| rotated_retinanet | alone | lr 1 | 2 | 54.0 ± 2.0 | 22.0 ± 1.0 | 44.0 ± 2.0 |" in text
    assert "| 52.0 ± 2.0 | +0.0 |" in text
    assert "| rotated_retinanet | teacher |  | 1 | 81.0 ± 0.0 | 35.5 ± 0.0 | 71.0 ± 0.0 |" in text
    assert "DOTA Task-1 rule (VOC07 11-point AP50 on the rotated IoU" in text
    assert "on synthetic_diorr_test" in text and "val_mAP50 on synthetic_diorr_val" in text
    assert "by the best val mAP50 of seed 1" in text
    for ext in ("md", "csv", "png"):
        assert (res / f"accuracy_oriented.{ext}").stat().st_size > 0
    with open(res / "accuracy_oriented_runs.csv") as f:
        header = f.readline()
    assert header.startswith("detector,method,x,seed,role,chosen,name,mAP50,AP,AP50,AP75,APs,val_mAP50,")

    # both kinds asked for: each report holds its own detectors' rows only
    argv = common + ["--detectors", "retinanet", "rotated_retinanet"]
    fake_result(ba.plan(ba.parse_args(argv), "retinanet")[0]["output"], 60.0, 61.0)
    text = ba.main(argv + ["--tables"])
    horizontal, oriented = (res / "accuracy.md").read_text(), (res / "accuracy_oriented.md").read_text()
    assert text == horizontal + "\n" + oriented
    assert "| retinanet | teacher |" in horizontal and "| rotated_retinanet |" not in horizontal
    assert "| rotated_retinanet | teacher |" in oriented and "| retinanet |" not in oriented
