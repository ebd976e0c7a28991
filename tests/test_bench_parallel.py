"""The accuracy benchmarks' --parallel and --device: which runs may start (a run waits for the runs whose
weights it loads), the scheduler with fake trainings (dependencies kept, at most N at once, the same tables as
one at a time), a failing training named by its folder and log while the others finish, SIGTERM stopping the
children, and the device recorded per run; then tiny real runs, --parallel 2 against --parallel 1."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from test_bench_accuracy_plan import fake_result, fake_train_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_accuracy as ba  # noqa: E402
from benchmarks import bench_deploy_accuracy as bda  # noqa: E402


def hand_run(name, teacher=None, amplifier=None, weights=None):
    """A run of a hand-made plan in folder /w/<name>, loading the teacher / amplifier of those folders."""
    opts = ["SEED", "1"]
    if teacher:
        opts += [ba.TEACHER_WEIGHTS, f"/w/{teacher}/model_final.pth"]
    if amplifier:
        opts += [ba.AMPLIFIER_WEIGHTS, f"/w/{amplifier}/model_final.pth"]
    run = dict(name=name, output=f"/w/{name}", opts=opts)
    if weights is not None:
        run["weights"] = weights
    return run


HIGH = ba.IMPLICIT_HIGH
PLAN = [
    hand_run("teacher"),
    hand_run("amplifier", teacher="teacher"),
    hand_run("alone", weights={ba.LR: 0.01}),
    hand_run("fitnet", teacher="teacher", amplifier="amplifier", weights={"MODEL.DS2D2.FITNET.WEIGHT": 1.0}),
    hand_run("explicit", teacher="teacher", amplifier="amplifier", weights={HIGH: 0.0}),
    hand_run("ds2d2", teacher="teacher", amplifier="amplifier", weights={HIGH: 1.0}),
    hand_run("implicit", teacher="teacher", amplifier="amplifier", weights={HIGH: 10.0}),
]


def names(runs):
    return [run["name"] for run in runs]


def done(*names):
    return {f"/w/{name}" for name in names}


def test_an_unfinished_teacher_holds_every_run_that_loads_it():
    assert names(ba.ready_runs(PLAN, set(), set(), 10)) == ["teacher", "alone"]  # alone loads no weights
    assert names(ba.ready_runs(PLAN, done("alone"), set(), 10)) == ["teacher"]
    assert names(ba.ready_runs(PLAN, done("alone"), done("teacher"), 10)) == []  # running is not done


def test_the_amplifier_holds_only_the_runs_whose_implicit_term_loads_it():
    after_teacher = names(ba.ready_runs(PLAN, done("teacher"), set(), 10))
    assert after_teacher == ["amplifier", "alone", "fitnet", "explicit"]  # handed the path, never load it
    everything = names(ba.ready_runs(PLAN, done("teacher", "amplifier"), set(), 10))
    assert everything == ["alone", "fitnet", "explicit", "ds2d2", "implicit"]
    unknown = [PLAN[0], PLAN[1], hand_run("custom", teacher="teacher", amplifier="amplifier")]
    assert names(ba.ready_runs(unknown, done("teacher"), set(), 10)) == ["amplifier"]  # no weights: waits


def test_at_most_n_run_at_once_first_in_plan_order():
    base = done("teacher", "amplifier")
    assert names(ba.ready_runs(PLAN, base, set(), 2)) == ["alone", "fitnet"]
    assert names(ba.ready_runs(PLAN, base, done("alone"), 2)) == ["fitnet"]
    assert names(ba.ready_runs(PLAN, base, done("alone", "fitnet"), 2)) == []
    assert names(ba.ready_runs(PLAN, base, set(), 1)) == ["alone"]  # --parallel 1: today's next run


def test_weights_from_outside_the_plan_are_not_waited_for():
    plan = [hand_run("student", teacher="elsewhere", weights={HIGH: 0.0})]
    assert names(ba.ready_runs(plan, set(), set(), 1)) == ["student"]


def test_the_real_plans_needs_come_from_their_overrides(tmp_path):
    args = ba.parse_args(["--work", str(tmp_path), "--detectors", "retinanet", "--methods", "alone", "fitnet",
                          "explicit", "implicit", "ds2d2", "--seeds", "1", "--grid", "1"])
    runs = ba.plan(args, "retinanet")
    teacher, amplifier = (str(tmp_path / "retinanet" / n)
                          for n in ("teacher_it6000", "amplifier_it1000_t6000"))
    needs = {run["method"]: ba.needed_folders(run) for run in runs}
    assert needs["teacher"] == [] and needs["alone"] == []
    assert needs["amplifier"] == needs["fitnet"] == needs["explicit"] == [teacher]
    assert needs["implicit"] == needs["ds2d2"] == [teacher, amplifier]
    # bench_deploy_accuracy's own rows: its DS2D2 from the other family loads that family's amplifier
    deploy = bda.parse_args(["--work", str(tmp_path), "--students", "retinanet_deploy", "--methods", "ds2d2",
                             "--seeds", "1", "--grid", "1"])
    cross = next(r for r in bda.plan(deploy) if r["name"].startswith("deploy_from_faster_rcnn_ds2d2"))
    assert ba.needed_folders(cross) == [str(tmp_path / "faster_rcnn" / n)
                                        for n in ("teacher_it6000", "amplifier_it1000_t6000")]


def fake_trainer(events, lock, seconds=0.0):
    """A run_training that records (start|end, folder) and writes a result made of the run's name."""
    def train(args, run, data_root):
        with lock:
            events.append(("start", run["output"]))
        time.sleep(seconds)
        score = 40.0 + len(run["name"]) % 7 + (run["x"] or 1.0)
        fake_result(run["output"], score, score - 1)
        with lock:
            events.append(("end", run["output"]))
    return train


def test_parallel_keeps_every_dependency_and_writes_the_same_tables(tmp_path, monkeypatch):
    import ds2d2.data.synthetic

    monkeypatch.setattr(ds2d2.data.synthetic, "write_synthetic_dior", lambda *a: None)
    tables = {}
    for parallel in (1, 3):
        events, lock = [], threading.Lock()
        monkeypatch.setattr(ba, "run_training", fake_trainer(events, lock, 0.2 if parallel > 1 else 0.0))
        argv = ["--work", str(tmp_path / f"work{parallel}"), "--results", str(tmp_path / f"res{parallel}"),
                "--detectors", "retinanet", "--methods", "alone", "fitnet", "ds2d2", "--seeds", "1", "2",
                "--grid", "1", "10", "--alone-lr-grid", "1", "--threads", "1", "--parallel", str(parallel)]
        ba.main(argv)
        runs = ba.full_plan(ba.parse_args(argv))[0]
        started = sorted(folder for kind, folder in events if kind == "start")
        assert started == sorted(run["output"] for run in runs)  # each once
        for run in runs:  # started only after every run whose weights it loads had ended
            start = events.index(("start", run["output"]))
            for folder in ba.needed_folders(run):
                assert events.index(("end", folder)) < start, (run["name"], folder)
        live, most = 0, 0
        for kind, _ in events:
            live += 1 if kind == "start" else -1
            most = max(most, live)
        assert most == parallel  # teacher, alone and ... at once; never more than --parallel
        with open(tmp_path / f"res{parallel}" / "accuracy.md") as f:
            tables[parallel] = f.read().split("Machine:")[1].split("Command:")[0]
        with open(tmp_path / f"res{parallel}" / "accuracy_runs.csv") as f:
            rows = list(csv.DictReader(f))
        assert {r["device"] for r in rows} == {""}  # the fake trainings wrote no bench_time.json
    # the same table from the same (fake) results, up to the folders' names in the notes
    assert tables[1].replace("work1", "work") == tables[3].replace("work3", "work")


def test_a_failed_training_is_named_by_folder_and_log_once_the_others_finish(tmp_path):
    args = ba.parse_args(["--work", str(tmp_path), "--parallel", "2", "--threads", "1", "--workers", "0",
                          "--batch", "1"])
    bad = dict(detector="retinanet", name="bad", config="configs/synthetic/retinanet_R18_student.yaml",
               opts=["SOLVER.NOT_A_KEY", "1"], output=str(tmp_path / "retinanet" / "bad"))
    good = dict(bad, name="good", opts=[], output=str(tmp_path / "retinanet" / "good"))
    written = []

    def train(args, run, data_root):
        if run is bad:
            ba.run_training(args, run, str(tmp_path / "datasets"))  # the real train_net.py: refuses the key
        else:
            time.sleep(1.0)
            fake_result(run["output"], 50.0, 50.0)

    with pytest.raises(RuntimeError) as error:
        ba.train_plan(args, lambda: ([bad, good], "+0 waiting"), written.append, str(tmp_path), train)
    log = os.path.join(bad["output"], "stdout.txt")
    assert f"{bad['output']}: train_net.py exited with code" in str(error.value) and log in str(error.value)
    assert "NOT_A_KEY" in open(log).read()
    assert [[run["name"] for run in runs] for runs in written] == [["good"]]  # it finished, tables rewritten
    assert not os.path.exists(os.path.join(bad["output"], "bench_time.json"))


def test_sigterm_stops_the_running_trainings(tmp_path):
    args = ba.parse_args(["--work", str(tmp_path), "--parallel", "2", "--threads", "1"])
    runs = [dict(detector="retinanet", name=n, output=str(tmp_path / n), opts=[]) for n in ("slow", "killer")]
    children = []

    def train(args, run, data_root):
        if run["name"] == "slow":  # a training that would run for a minute
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                     start_new_session=True)
            with ba._registered(child):
                children.append(child)  # registered first: stop_trainings sees it once the killer can
                child.wait()
        else:
            while not children:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <bench pid>` would
            time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        ba.train_plan(args, lambda: (runs, ""), lambda finished: None, str(tmp_path), train)
    assert children[0].poll() is not None and time.time() - started < 30
    assert signal.getsignal(signal.SIGTERM) is before  # the bench's handler is removed again


def test_the_device_reaches_every_training_and_its_record(tmp_path, monkeypatch):
    commands = fake_train_net(monkeypatch)
    for device in ("cpu", "cuda:1"):
        args = ba.parse_args(["--work", str(tmp_path / device), "--detectors", "retinanet",
                              "--device", device])
        run = ba.plan(args, "retinanet")[0]
        ba.run_training(args, run, str(tmp_path / "data"))
        assert dict(zip(commands[-1][4::2], commands[-1][5::2]))["MODEL.DEVICE"] == device
        assert run["name"] == "teacher_it6000"  # the device is not in the folder's name
        with open(os.path.join(run["output"], "bench_time.json")) as f:
            assert json.load(f)["device"] == device
        fake_result(run["output"], 50.0, 50.0)
        assert ba.read_result(run)["device"] == device
    old = ba.plan(ba.parse_args(["--work", str(tmp_path / "old")]), "retinanet")[0]
    fake_result(old["output"], 50.0, 50.0)
    with open(os.path.join(old["output"], "bench_time.json"), "w") as f:
        json.dump({"seconds": 1.0, "resumed": False}, f)  # written before --device: a CPU run
    assert ba.read_result(old)["device"] == "cpu"
    rows = [{"device": "cpu"}] * 3 + [{"device": "cuda"}] * 2 + [{"device": ""}]
    assert ba.devices_note(rows) == "runs on cpu: 3, cuda: 2, unknown: 1"


@pytest.mark.parametrize("flags", [["--device", "gpu"], ["--device", "cuda:x"], ["--parallel", "0"]])
def test_bad_device_or_parallel_is_refused(flags, capsys):
    from benchmarks import bench_oriented

    for parse in (ba.parse_args, bda.parse_args, bench_oriented.parse_args):
        with pytest.raises(SystemExit):
            parse(flags)
        assert flags[0] in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_parallel_run_trains_the_same_runs_and_rows_as_one_at_a_time(tmp_path):
    tables = {}
    for parallel in ("1", "2"):
        results = tmp_path / f"results{parallel}"
        ba.main(["--quick", "--teacher-iters", "2", "--amplifier-iters", "2", "--student-iters", "2",
                 "--batch", "1", "--num-images", "10", "--workers", "0", "--threads", "1",
                 "--parallel", parallel, "--work", str(tmp_path / f"work{parallel}"),
                 "--results", str(results)])
        work = tmp_path / f"work{parallel}" / "retinanet"
        finished = sorted(n for n in os.listdir(work) if os.path.isfile(work / n / "eval_results.json"))
        with open(results / "accuracy_quick_runs.csv") as f:
            rows = [(r["method"], r["x"], r["seed"], r["role"], r["chosen"], r["name"], r["device"])
                    for r in csv.DictReader(f)]
        with open(results / "accuracy_quick.md") as f:
            assert "runs on cpu: 4" in f.read()
        tables[parallel] = (finished, rows)
    assert tables["1"] == tables["2"]
    assert tables["1"][0] == ["alone_it2_t2_s1", "amplifier_it2_t2", "ds2d2_it2_t2_s1", "teacher_it2"]


def test_a_finished_student_runs_checkpoints_are_pruned_a_teachers_kept(tmp_path, monkeypatch):
    args = ba.parse_args(["--work", str(tmp_path), "--detectors", "retinanet", "--quick"])
    runs = [r for r in ba.plan(args, "retinanet") if r["role"] in ("teacher", "grid")][:2]
    assert [r["role"] for r in runs] == ["teacher", "grid"]

    def train(args, run, data_root):  # a training that leaves checkpoints and results
        os.makedirs(run["output"], exist_ok=True)
        for name in ("model_0000099.pth", "model_final.pth", "last_checkpoint"):
            open(os.path.join(run["output"], name), "w").close()
        fake_result(run["output"], 50.0, 50.0)

    ba.train_plan(args, lambda: (runs, ""), lambda finished: None, str(tmp_path), train)
    teacher_files = ["eval_results.json", "last_checkpoint", "model_0000099.pth", "model_final.pth"]
    assert sorted(os.listdir(runs[0]["output"])) == teacher_files
    assert os.listdir(runs[1]["output"]) == ["eval_results.json"]
    kept = ba.parse_args(["--work", str(tmp_path / "kept"), "--detectors", "retinanet", "--quick",
                          "--keep-checkpoints"])
    runs = [r for r in ba.plan(kept, "retinanet") if r["role"] in ("teacher", "grid")][:2]
    ba.train_plan(kept, lambda: (runs, ""), lambda finished: None, str(tmp_path), train)
    assert "model_final.pth" in os.listdir(runs[1]["output"])
