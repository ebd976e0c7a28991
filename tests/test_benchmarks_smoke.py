"""Smoke runs of the benchmarks on tiny settings: each prints its Markdown table and writes CSV, PNG and
Markdown. No timing is asserted (benchmarks are measurements, not tests)."""
import csv
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_accuracy, bench_ops, bench_step  # noqa: E402


def check_outputs(folder, name, rows_at_least):
    for ext in ("csv", "md", "png"):
        assert os.path.getsize(os.path.join(folder, f"{name}.{ext}")) > 0, f"{name}.{ext} missing"
    with open(os.path.join(folder, f"{name}.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= rows_at_least
    return rows


def test_bench_ops_tiny(tmp_path, capsys):
    bench_ops.main(["--repeats", "1", "--ref-repeats", "1", "--boxes", "3", "40", "--disw-size", "256",
                    "--dwt-size", "16", "--pyramid-size", "64", "--channels", "4", "--devices", "cpu",
                    "--results", str(tmp_path)])
    assert "| DISW (5 levels) |" in capsys.readouterr().out
    rows = check_outputs(tmp_path, "ops", 6)
    disw = [r for r in rows if r["op"] == "DISW (5 levels)"]
    assert [float(r["max_abs_diff"]) for r in disw] == [0.0, 0.0], "DISW must equal the per-box float64 loop"
    assert all(float(r["max_abs_diff"]) <= 1e-5 for r in rows if r["op"] == "Haar DWT fwd+bwd")


@pytest.mark.slow
def test_bench_step_tiny(tmp_path, capsys):
    bench_step.main(["--detectors", "retinanet", "--teachers", "50", "--sizes", "64", "--variants", "alone",
                     "teacher_fwd", "full", "--batch", "1", "--boxes", "2", "--repeats", "1", "--warmup", "0",
                     "--threads", "1", "--devices", "cpu", "--results", str(tmp_path)])
    assert "| full |" in capsys.readouterr().out
    rows = check_outputs(tmp_path, "step", 3)
    full = next(r for r in rows if r["variant"] == "full")
    assert all(float(full[c]) > 0 for c in bench_step.COMPONENTS) and float(full["vs_inherent"]) > 0


@pytest.mark.slow
def test_bench_accuracy_tiny_resumes(tmp_path, capsys):
    argv = ["--quick", "--teacher-iters", "2", "--amplifier-iters", "2", "--student-iters", "2",
            "--batch", "1", "--num-images", "10", "--workers", "0", "--threads", "1",
            "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    bench_accuracy.main(argv)
    rows = check_outputs(tmp_path / "results", "accuracy_quick", 4)
    assert [r["method"] for r in rows] == ["teacher", "amplifier", "alone", "ds2d2"]
    capsys.readouterr()
    bench_accuracy.main(argv)  # every run finished: all kept, none retrained
    assert capsys.readouterr().out.count("already done, kept") == 4


def test_bench_accuracy_run_names_carry_the_schedule():
    args = bench_accuracy.parse_args(["--student-iters", "50", "--explicit-weight", "retinanet=0.5"])
    assert bench_accuracy.run_names(args, "retinanet")["ds2d2"] == "ds2d2_ex0.5_it50_t6000"
    assert bench_accuracy.run_names(args, "faster_rcnn")["ds2d2"] == "ds2d2_it50_t6000"
    with pytest.raises(SystemExit):
        bench_accuracy.parse_args(["--explicit-weight", "yolo=1"])
    args = bench_accuracy.parse_args(
        ["--explicit-weight", "faster_rcnn=5", "--implicit-weight", "faster_rcnn=1"]
    )
    names = bench_accuracy.run_names(args, "faster_rcnn")
    assert (names["explicit"], names["implicit"], names["ds2d2"]) == (
        "explicit_ex5_it1000_t6000", "implicit_im1_it1000_t6000", "ds2d2_ex5_im1_it1000_t6000"
    )
    runs = bench_accuracy.plan(args, "faster_rcnn")
    ds2d2_run = [r for r in runs if r["method"] == "ds2d2" and r["x"] == 1][0]
    weights = dict(zip(ds2d2_run["opts"][::2], ds2d2_run["opts"][1::2]))
    assert weights["MODEL.DS2D2.LOSS.EXPLICIT_LOW"] == "5.0"
    assert weights["MODEL.DS2D2.LOSS.IMPLICIT_HIGH"] == "1.0"
    with pytest.raises(SystemExit):
        bench_accuracy.parse_args(["--implicit-weight", "faster_rcnn"])


@pytest.mark.slow
def test_bench_oriented_tiny_scores_both_box_kinds(tmp_path, capsys):
    from benchmarks import bench_oriented

    argv = ["--detectors", "retinanet", "--seeds", "1", "--iters", "2", "--batch", "1", "--num-images", "10",
            "--workers", "0", "--threads", "1", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "results")]
    bench_oriented.main(argv)
    rows = check_outputs(tmp_path / "results", "oriented", 4)
    assert [(r["model"], r["boxes"]) for r in rows] == [
        ("R50", "horizontal"), ("R50", "oriented"), ("R18", "horizontal"), ("R18", "oriented")]
    assert all(0.0 <= float(r["mAP50"]) <= 100.0 for r in rows)
    with open(tmp_path / "results" / "oriented_runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    weights = [n for _, _, files in os.walk(tmp_path / "work") for n in files if n.startswith("model_")]
    assert not weights, "the runs' checkpoints are deleted once scored"
    capsys.readouterr()
    bench_oriented.main(argv + ["--tables"])  # rewrites the tables from the finished runs, trains nothing
    assert "| retinanet | R18 | oriented |" in capsys.readouterr().out


def test_bench_step_rotated_batch_turns_the_horizontal_rectangles():
    import torch
    from detectron2.structures import RotatedBoxes

    flat, turned = (bench_step.random_batch(2, 256, 40, seed=3, oriented=o) for o in (False, True))
    for image in turned:
        boxes = image["instances"].gt_boxes
        assert isinstance(boxes, RotatedBoxes) and boxes.tensor.shape == (40, 5)
        _, _, w, h, angle = boxes.tensor.unbind(1)
        assert bool((w >= h).all()) and bool(((angle >= -90) & (angle < 90)).all())  # canonical XYWHA
        assert float(angle.std()) > 20  # turned at random, not all at one angle
    # the first image draws its rectangles before any angle: the same rectangles as the horizontal batch's
    x0, y0, x1, y1 = flat[0]["instances"].gt_boxes.tensor.unbind(1)
    cx, cy, w, h, _ = turned[0]["instances"].gt_boxes.tensor.unbind(1)
    assert torch.allclose(cx, (x0 + x1) / 2) and torch.allclose(cy, (y0 + y1) / 2)
    assert torch.allclose(w, torch.maximum(x1 - x0, y1 - y0))
    assert torch.allclose(h, torch.minimum(x1 - x0, y1 - y0))


@pytest.mark.slow
def test_bench_step_rotated_tiny_writes_its_own_tables(tmp_path, capsys):
    bench_step.main(["--detectors", "rotated_retinanet", "rotated_faster_rcnn", "--teachers", "50", "--sizes",
                     "64", "--variants", "alone", "teacher_fwd", "full", "--batch", "1", "--boxes", "2",
                     "--repeats", "1", "--warmup", "0", "--threads", "1", "--devices", "cpu",
                     "--results", str(tmp_path)])
    assert "## Training-step cost, rotated detectors" in capsys.readouterr().out
    rows = check_outputs(tmp_path, "step_rotated", 6)
    assert not os.path.exists(tmp_path / "step.md"), "the horizontal table is never overwritten"
    assert [(r["detector"], r["variant"]) for r in rows] == [
        (d, v) for d in ("rotated_retinanet", "rotated_faster_rcnn")
        for v in ("alone", "teacher_fwd", "full")]
    for full in (r for r in rows if r["variant"] == "full"):
        assert all(float(full[c]) > 0 for c in bench_step.COMPONENTS) and float(full["vs_inherent"]) > 0


@pytest.mark.slow
def test_bench_accuracy_rotated_tiny_reports_task1_map(tmp_path, capsys):
    argv = ["--quick", "--detectors", "rotated_retinanet", "rotated_faster_rcnn", "--teacher-iters", "2",
            "--amplifier-iters", "2", "--student-iters", "2", "--batch", "1", "--num-images", "10",
            "--workers", "0", "--threads", "1", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "results")]
    bench_accuracy.main(argv)
    rows = check_outputs(tmp_path / "results", "accuracy_oriented_quick", 8)
    assert [(r["detector"], r["method"]) for r in rows] == [
        (d, m) for d in ("rotated_retinanet", "rotated_faster_rcnn")
        for m in ("teacher", "amplifier", "alone", "ds2d2")]
    assert all(0.0 <= float(r[m]) <= 100.0 for r in rows for m in ("mAP50", "val_mAP50"))
    assert not os.path.exists(tmp_path / "results" / "accuracy_quick.md")
    capsys.readouterr()
    bench_accuracy.main(argv)  # every run finished: all kept, none retrained
    assert capsys.readouterr().out.count("already done, kept") == 8
