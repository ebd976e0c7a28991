#!/usr/bin/env python
"""Deployment latency: ms/image and images/s at batch 1 of the teacher, the R-18 student and the deployment
student, in PyTorch and (students) onnxruntime, with each model's GFLOPs and the GFLOP/s it achieves.

    python benchmarks/bench_deploy.py --prepare-only   # build, export students to ONNX, count FLOPs (cached)
    python benchmarks/bench_deploy.py                  # time; writes results/deploy.{md,csv,png}
    python benchmarks/bench_deploy.py --families retinanet --inputs DIOR=800 --threads 2    # reduced

Models, per family and input ``DATASET=SIDE`` (a SIDE x SIDE image; DIOR images are 800 x 800, DOTA patches
1024 x 1024): the configs of ``MODELS`` in configs/DATASET/, random weights (seed 0) with the last norm of
every residual branch zeroed, so that a deep random network stays finite and Faster R-CNN's box head runs on
its full proposal count as a trained one does (a plain random R-101 yields no finite proposal), and Faster
R-CNN's background logit raised so that each class scores ~0.01 as RetinaNet's prior makes its classes score:
in every row few boxes pass the 0.05 score threshold, as on a background-dominated scene (the NumPy
post-processing of a dense scene is timed on its own, see the notes). Runtimes:
PyTorch eager (Detectron2 as DefaultPredictor runs it: test resize, model, rescaled detections; fp32, and fp16
autocast on CUDA) and onnxruntime (``ds2d2_onnx.OnnxDetector`` on the file that ``tools/export_student.py
--format onnx`` writes, exported at the input's fixed size; its NumPy pre- and post-processing included). A
timing is one BGR image in, detections in image pixels out; the runtimes take turns (common.median_times),
each round times every row ``--repeats`` times (median) after ``--warmup`` untimed passes, and the table gives
the mean over ``--rounds`` rounds and their spread.
GFLOPs: fvcore's FlopCountAnalysis of the exported graph module (ds2d2.deploy.graphs) at the input size; it
counts a multiply-add as one flop (convolutions and linear layers; NMS and RoIAlign are not counted), so the
achieved rate is 2 x GFLOPs / s, compared with the estimated fp32 peak of the cores used (``cpu_peak``).
Targets (docs/deploy.md): deployment student >= 4x faster than the teacher (PyTorch, CPU); onnxruntime >= 1.3x
PyTorch for it; its onnxruntime GFLOP/s >= 40 % of the CPU peak.
"""
import argparse
import ctypes
import datetime
import json
import math
import mmap
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, RESULTS, bar_plot, command_line, cpu_model, fmt  # noqa: E402
from benchmarks.common import markdown_table, median_times, set_threads  # noqa: E402
from benchmarks.common import read_csv, write_csv, write_report  # noqa: E402

FAMILIES = ("retinanet", "faster_rcnn")
# model key -> (label, config file name pattern) per configs/ folder
MODELS = {
    "DIOR": {"teacher": ("teacher R-101", "{}_R101.yaml"), "student": ("student R-18", "{}_R18.yaml"),
             "deploy": ("deploy R-18", "{}_R18_deploy.yaml")},
    "synthetic": {"teacher": ("teacher R-50", "{}_R50_teacher.yaml"),
                  "student": ("student R-18", "{}_R18_student.yaml"),
                  "deploy": ("deploy R-18", "{}_R18_deploy_student.yaml")},
}
MODELS["DOTA"] = MODELS["DIOR"]
STUDENTS = ("student", "deploy")
PRIOR_PROB = 0.01  # RetinaNet's initial class probability (MODEL.RETINANET.PRIOR_PROB)
CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
COLUMNS = ["family", "input", "model", "runtime", "device", "threads", "ms", "spread_pct", "images_per_s",
           "gflops", "achieved_gflops_s", "pct_of_peak", "x_teacher"]
# also in the CSV: the name, and per row the clock and peak its pct_of_peak used, and sgemm at its threads
CSV_COLUMNS = COLUMNS + ["name", "clock_ghz", "peak_gflops_s", "sgemm_gflops_s"]
TEXT_COLUMNS = ("family", "input", "model", "runtime", "device", "name")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--inputs", nargs="+", default=["DIOR=800", "DOTA=1024"], help="DATASET=SIDE pairs")
    p.add_argument("--models", nargs="+", default=["teacher", "student", "deploy"],
                   choices=["teacher", "student", "deploy"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU thread counts")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (the table: mean and spread)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row and round (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per row before the first round")
    p.add_argument("--prepare-only", action="store_true", help="export and count FLOPs, time nothing")
    p.add_argument("--work", default=os.path.join(ROOT, "output", "bench_deploy"), help="ONNX files, FLOPs")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the rows of the results' deploy.csv whose "
                   "(device, threads, family, input) is not timed now, to time settings in separate sessions")
    args = p.parse_args(argv)
    args.inputs = [parse_input(s, p) for s in args.inputs]
    return args


def parse_input(text: str, parser: argparse.ArgumentParser) -> Tuple[str, int]:
    dataset, _, side = text.partition("=")
    if dataset not in MODELS or not side.isdigit():
        parser.error(f"--inputs {text!r}: expected DATASET=SIDE with DATASET one of {sorted(MODELS)}")
    return dataset, int(side)


def measured_clock_ghz(iterations: int = 50_000_000, runs: int = 7) -> Optional[float]:
    """The core clock under load, measured: x86-64 machine code running a chain of dependent register-register
    integer adds (one cycle each on every x86-64 core) is timed, and the fastest of ``runs`` gives adds per
    second. (Adds of an immediate would not do: Intel cores since Golden Cove fold chains of them at register
    renaming, which measured a 2-core Sapphire Rapids Xeon at 16-20 GHz.) None where it cannot run (another
    architecture, or no executable memory)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    # mov rcx, rdi; xor eax, eax; mov edx, 1; loop: 8 x (add rax, rdx); dec rcx; jnz loop; ret
    code = bytes.fromhex("4889f9" "31c0" "ba01000000" + "4801d0" * 8 + "48ffc9" "75e3" "c3")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    chain = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(address)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        assert chain(iterations) == 8 * iterations
        best = min(best, time.perf_counter() - start)
    return 8 * iterations / best / 1e9


def cpu_peak(cores: int, clock_ghz: Optional[float] = None, cpuinfo: str = "/proc/cpuinfo",
             max_freq: str = CPUFREQ_MAX) -> Tuple[float, str]:
    """Estimated fp32 peak GFLOP/s of ``cores`` cores, and how: cores x clock x 2 FMA units x fp32 lanes x 2.

    Clock: ``clock_ghz`` (``measured_clock_ghz``) if given, else cpufreq's maximum where the kernel exposes
    it, else /proc/cpuinfo's "cpu MHz" (in a VM the nominal clock, below a boost clock). Lanes: the vector
    datapath, 512-bit with AVX-512 except on AMD family 25 (Zen 4 runs AVX-512 on 256-bit units), 256-bit
    with AVX2, else 128-bit. Two FMA units per core (every AVX2/AVX-512 server core since Haswell and Zen 2).
    """
    fields: Dict[str, str] = {}
    with open(cpuinfo) as f:
        for line in f:
            if not line.strip():
                break  # the first processor's block
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    nominal = float(fields.get("cpu MHz", "0")) / 1e3
    clock, source = nominal, '"cpu MHz" in /proc/cpuinfo'
    if clock_ghz is not None:
        clock, source = clock_ghz, f"measured by a chain of dependent adds; nominal {nominal:.3f} GHz"
    elif os.path.exists(max_freq):
        with open(max_freq) as f:
            clock, source = int(f.read()) / 1e6, "cpufreq cpuinfo_max_freq"
    zen4 = fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
    bits = 512 if "avx512f" in flags and not zen4 else 256 if "avx2" in flags else 128
    why = "; AMD family 25 runs AVX-512 on 256-bit units" if zen4 and "avx512f" in flags else ""
    lanes, fma_units = bits // 32, 2
    peak = cores * clock * fma_units * lanes * 2
    text = (f"{cores} core(s) x {clock:.3f} GHz ({source}) x {fma_units} FMA units x {lanes} fp32 lanes "
            f"({bits}-bit datapath{why}) x 2 flops per FMA = {peak:.0f} GFLOP/s")
    return peak, text


def sgemm_gflops(threads: int, n: int = 2048) -> float:
    """GFLOP/s of torch's fp32 matrix product on ``threads`` threads (a measured reference for the peak)."""
    set_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = median_times([lambda: a @ b], repeats=5, warmup=2)[0]
    return 2 * n ** 3 / seconds / 1e9


def dense_postprocess_ms(side: int = 1024, classes: int = 15, repeats: int = 3) -> float:
    """ms of ds2d2_onnx's RetinaNet post-processing at its worst on a side x side input (DOTA's setting):
    every score of the 5 levels above the threshold, 1000 candidates per level into class-wise NMS, 1000
    detections kept; random scores and 8-60 px boxes."""
    from ds2d2_onnx.postprocess import dense_detections

    rng = np.random.default_rng(0)
    sizes = [(side // stride) ** 2 * 9 for stride in (8, 16, 32, 64, 128)]
    scores = [rng.uniform(0, 1, (n, classes)).astype(np.float32) for n in sizes]
    corners = [rng.uniform(0, side - 60, (n, 2)).astype(np.float32) for n in sizes]
    boxes = [np.concatenate([c, c + rng.uniform(8, 60, c.shape).astype(np.float32)], axis=1) for c in corners]
    seconds = median_times([lambda: dense_detections(scores, boxes, 0.05, 1000, 0.5, 1000)], repeats)[0]
    return seconds * 1e3


def build(dataset: str, family: str, key: str, device: str = "cpu"):
    """(config, eval-mode model with the benchmark's random weights) of one model."""
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    from ds2d2.config import load_config

    config = os.path.join(ROOT, "configs", dataset, MODELS[dataset][key][1].format(family))
    cfg = load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device], register=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, (BasicBlock, BottleneckBlock)):
                last = block.conv3 if isinstance(block, BottleneckBlock) else block.conv2
                last.norm.weight.zero_()
        if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":  # classes at ~PRIOR_PROB, as RetinaNet's prior
            classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
            bias = math.log((1 - classes * PRIOR_PROB) / PRIOR_PROB)
            model.roi_heads.box_predictor.cls_score.bias[classes] = bias  # the background logit
    return cfg, model


def graph_size(cfg, model, side: int) -> Tuple[int, int]:
    """The graph's input (height, width) for a side x side image: resized by the test transform, padded."""
    from ds2d2_onnx.preprocess import padded_shape, resized_shape

    size = resized_shape(side, side, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return padded_shape(*size, model.backbone.size_divisibility)


def count_gflops(cfg, model, size: Tuple[int, int]) -> float:
    """fvcore's count (a multiply-add = 1 flop) of the exported graph module at an input ``size``, in G."""
    from fvcore.nn import FlopCountAnalysis

    from ds2d2.deploy.graphs import FasterRCNNGraph, RetinaNetGraph

    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        graph, inputs = RetinaNetGraph(model), (image,)
    else:
        graph, inputs = FasterRCNNGraph(model), (image, torch.tensor(size, dtype=torch.float32))
    analysis = FlopCountAnalysis(graph.eval(), inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def prepare(args: argparse.Namespace) -> Dict[str, float]:
    """Export the students (at the fixed size of the input's resized image) and count every model's GFLOPs,
    once: cached in --work."""
    from ds2d2.deploy import export_model

    os.makedirs(args.work, exist_ok=True)
    flops_file = os.path.join(args.work, "flops.json")
    flops = {}
    if os.path.exists(flops_file):
        with open(flops_file) as f:
            flops = json.load(f)
    for dataset, side in args.inputs:
        for family in args.families:
            for key in args.models:
                name = f"{dataset}_{side}_{family}_{key}"
                onnx_file = os.path.join(args.work, name + ".onnx")
                if name in flops and (key not in STUDENTS or os.path.exists(onnx_file)):
                    continue
                cfg, model = build(dataset, family, key)
                size = graph_size(cfg, model, side)
                flops[name] = count_gflops(cfg, model, size)
                if key in STUDENTS:
                    export_model(model, cfg, onnx_file, input_size=size)
                with open(flops_file, "w") as f:
                    json.dump(flops, f, indent=1)
                print(f"prepared {name}: {flops[name]:.1f} GFLOPs", flush=True)
    return flops


def torch_runner(model, cfg, image: np.ndarray, device: str, fp16: bool) -> Callable[[], object]:
    """One image through Detectron2 as DefaultPredictor does it (test resize, model, rescaled output)."""
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def run():
        pixels = image if cfg.INPUT.FORMAT == "BGR" else image[:, :, ::-1]
        pixels = resize.get_transform(pixels).apply_image(pixels)
        tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype("float32"))
        inputs = [{"image": tensor.to(device), "height": image.shape[0], "width": image.shape[1]}]
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=fp16):
            return model(inputs)[0]["instances"].to("cpu")

    return run


def runners(args: argparse.Namespace, device: str, threads: int, models: Dict, images: Dict
            ) -> List[Tuple[Dict, Callable]]:
    """(row, timed function) of every model x runtime on ``device``, onnxruntime with ``threads`` threads.
    ``models``: (dataset, family, key, device) -> (cfg, model), filled as needed; ``images``: side -> BGR."""
    import onnxruntime

    from ds2d2_onnx import OnnxDetector

    found = []
    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    for dataset, side in args.inputs:
        if side not in images:
            images[side] = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        image = images[side]
        for family in args.families:
            for key in args.models:
                if (dataset, family, key, device) not in models:
                    models[dataset, family, key, device] = build(dataset, family, key, device)
                cfg, model = models[dataset, family, key, device]
                row = {"family": family, "input": f"{dataset} {side}x{side}", "device": device,
                       "model": MODELS[dataset][key][0], "threads": threads,
                       "name": f"{dataset}_{side}_{family}_{key}"}
                kinds = [("pytorch fp32", False)] + ([("pytorch fp16", True)] if device == "cuda" else [])
                for runtime, fp16 in kinds:
                    found.append((dict(row, runtime=runtime), torch_runner(model, cfg, image, device, fp16)))
                if key in STUDENTS and provider in onnxruntime.get_available_providers():
                    detector = OnnxDetector(os.path.join(args.work, row["name"] + ".onnx"), threads=threads,
                                            providers=[provider])
                    found.append((dict(row, runtime="onnxruntime"), lambda d=detector, i=image: d(i)))
    return found


def time_rows(args: argparse.Namespace, flops: Dict[str, float], clock_ghz: Optional[float]) -> List[Dict]:
    """Every row's mean ms over the rounds (and spread), with throughput, FLOP rate (against the peak at
    ``clock_ghz``, see ``cpu_peak``) and teacher ratio."""
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = [("cpu", t) for t in args.threads] if "cpu" in devices else []
    if "cuda" in devices:
        settings.append(("cuda", max(args.threads)))
    models: Dict = {}
    images: Dict = {}
    groups = [(d, t, runners(args, d, t, models, images)) for d, t in settings]
    times: List[List[List[float]]] = [[[] for _ in group] for _, _, group in groups]
    for round_index in range(args.rounds):
        for (device, threads, group), spent in zip(groups, times):
            set_threads(threads)
            warmup = args.warmup if round_index == 0 else 0
            medians = median_times([fn for _, fn in group], args.repeats, warmup, device)
            for seconds, store in zip(medians, spent):
                store.append(seconds)
    rows = []
    for (device, threads, group), spent in zip(groups, times):
        peak = cpu_peak(threads, clock_ghz)[0] if device == "cpu" else float("nan")
        for (row, _), seconds in zip(group, spent):
            mean = statistics.mean(seconds)
            gflops = flops.get(row["name"], float("nan"))
            rows.append(dict(row, ms=mean * 1e3, spread_pct=100 * (max(seconds) - min(seconds)) / mean,
                             images_per_s=1 / mean, gflops=gflops, achieved_gflops_s=2 * gflops / mean,
                             pct_of_peak=100 * 2 * gflops / mean / peak))
    for row in rows:
        teacher = [r for r in rows if r["model"].startswith("teacher") and r["runtime"] == "pytorch fp32"
                   and all(r[k] == row[k] for k in ("family", "input", "device", "threads"))]
        row["x_teacher"] = teacher[0]["ms"] / row["ms"] if teacher else float("nan")
    return rows


def plot(path: str, rows: List[Dict], threads: int) -> None:
    """ms per image of every model x runtime, grouped by family and input (CPU rows at ``threads``)."""
    shown = [r for r in rows if r["device"] == "cpu" and r["threads"] == threads]
    groups = list(dict.fromkeys(f"{r['family']}\n{r['input']}" for r in shown))
    series = {}
    for model, runtime in dict.fromkeys((r["model"], r["runtime"]) for r in shown):
        ms = {f"{r['family']}\n{r['input']}": r["ms"] for r in shown
              if (r["model"], r["runtime"]) == (model, runtime)}
        series[f"{model}, {runtime}"] = [ms.get(g, 0.0) for g in groups]
    bar_plot(path, groups, series, "ms per image (log scale)", f"Batch-1 latency on CPU, {threads} thread(s)",
             log=True)


def target_lines(rows: List[Dict]) -> List[str]:
    """The deployment targets, met or not, for every family, input and CPU thread count measured."""
    lines = []
    for row in rows:
        if not (row["model"] == "deploy R-18" and row["runtime"] == "onnxruntime" and row["device"] == "cpu"):
            continue
        where = f"{row['family']}, {row['input']}, {row['threads']} thread(s)"
        eager = [r for r in rows if r["name"] == row["name"] and r["runtime"] == "pytorch fp32"
                 and r["threads"] == row["threads"] and r["device"] == "cpu"]
        x = eager[0]["x_teacher"] if eager else float("nan")
        if not math.isnan(x):  # the teacher was timed
            lines.append(f"- {where}: deploy student {fmt(x)}x faster than the teacher (PyTorch): "
                         f"{'met' if x >= 4 else 'not met'} (target >= 4x)")
        if eager:
            ratio = eager[0]["ms"] / row["ms"]
            lines.append(f"- {where}: onnxruntime {fmt(ratio)}x PyTorch eager for the deploy student: "
                         f"{'met' if ratio >= 1.3 else 'not met'} (target >= 1.3x)")
        pct = row["pct_of_peak"]
        lines.append(f"- {where}: onnxruntime deploy student at {fmt(row['achieved_gflops_s'])} GFLOP/s = "
                     f"{fmt(pct)} % of the estimated peak: {'met' if pct >= 40 else 'not met'} "
                     "(target >= 40 %)")
    return lines


def row_order(row: Dict) -> Tuple:
    """Device, threads, input, family, model (teacher, student, deploy), runtime (PyTorch first)."""
    model = next(i for i, key in enumerate(("teacher", "student", "deploy")) if row["model"].startswith(key))
    return (row["device"], row["threads"], row["input"], FAMILIES.index(row["family"]), model,
            row["runtime"] == "onnxruntime", row["runtime"])


def kept_rows(path: str, timed: List[Dict]) -> List[Dict]:
    """The rows of a previous deploy.csv whose (device, threads, family, input) were not timed now."""
    if not os.path.exists(path):
        return []
    key = ("device", "threads", "family", "input")
    now = {tuple(r[k] for k in key) for r in timed}
    rows = []
    for row in read_csv(path):
        row = {k: v if k in TEXT_COLUMNS else float(v) for k, v in row.items()}
        row["threads"] = int(row["threads"])
        if tuple(row[k] for k in key) not in now:
            rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    flops = prepare(args)
    if args.prepare_only:
        return ""
    clock = measured_clock_ghz()
    rows = time_rows(args, flops, clock)
    sgemm = {t: sgemm_gflops(t) for t in {r["threads"] for r in rows if r["device"] == "cpu"}}
    post_ms = dense_postprocess_ms()
    nan = float("nan")
    for row in rows:
        cpu = row["device"] == "cpu"
        row.update(clock_ghz=nan if clock is None else clock,
                   sgemm_gflops_s=sgemm[row["threads"]] if cpu else nan,
                   peak_gflops_s=cpu_peak(row["threads"], clock)[0] if cpu else nan)
    csv_file = os.path.join(args.results, "deploy.csv")
    if args.keep:
        rows = sorted(kept_rows(csv_file, rows) + rows, key=row_order)
    write_csv(csv_file, rows, CSV_COLUMNS)
    cpu_rows = {r["threads"]: r for r in rows if r["device"] == "cpu"}
    peaks = [f"- {t} thread(s): {cpu_peak(t, None if math.isnan(r['clock_ghz']) else r['clock_ghz'])[1]}; "
             f"torch's sgemm (2048^2) reaches {fmt(r['sgemm_gflops_s'])} GFLOP/s"
             for t, r in sorted(cpu_rows.items())]
    if cpu_rows:
        plot(os.path.join(args.results, "deploy.png"), rows, max(cpu_rows))
    gpu = f", {torch.cuda.get_device_name()}" if any(r["device"] == "cuda" for r in rows) else ""
    machine = (f"Machine: {cpu_model()}, {os.cpu_count()} cores{gpu}; threads per row in the table; "
               f"torch {torch.__version__}, onnxruntime {onnxruntime_version()}; "
               f"{datetime.date.today().isoformat()}")
    notes = "\n".join(
        ["Peak fp32 estimates (achieved GFLOP/s = 2 x fvcore GFLOPs / s; pct_of_peak: of the row's cores):",
         *peaks, "", "Targets:", *target_lines(rows), "",
         f"NumPy post-processing of a dense scene (RetinaNet, 1024 x 1024, 15 classes, every score above the "
         f"threshold, 5 x 1000 candidates into class-wise NMS, 1000 detections kept): {fmt(post_ms)} ms.",
         f"ms: mean over {args.rounds} round(s) of the median of {args.repeats} run(s); spread_pct: "
         "(slowest - fastest round) / mean. x_teacher: the teacher's PyTorch ms over the row's, same device "
         f"and threads. Command: python benchmarks/bench_deploy.py {command_line(argv)}"
         + (" (rows of other settings kept from the previous deploy.csv)" if args.keep else "")])
    text = write_report(os.path.join(args.results, "deploy.md"), "Deployment latency (batch 1)", machine,
                        markdown_table(rows, COLUMNS), notes)
    print(text, flush=True)
    return text


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
