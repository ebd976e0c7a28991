"""Shared helpers of the benchmarks: machine description, timing, and Markdown / CSV / PNG output."""
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def command_line(argv: Optional[Sequence[str]]) -> str:
    """The arguments a benchmark ran with (``argv`` when called from Python, else the command line's)."""
    return " ".join(argv if argv is not None else sys.argv[1:])


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (and the OpenMP/MKL variables child processes inherit); returns them."""
    torch.set_num_threads(threads)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(threads)
    return threads


def machine_line(device: str = "cpu") -> str:
    """The machine a table was measured on: CPU (or GPU), cores, torch threads, torch version, date."""
    where = cpu_model() if device == "cpu" else torch.cuda.get_device_name()
    return (
        f"Machine: {where}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}"
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_times(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu"
                 ) -> List[float]:
    """Median wall-clock seconds of each ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones. The
    functions take turns, so that a change of load on a shared machine hits them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync(device)
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    return median_times([fn], repeats, warmup, device)[0]


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[Dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Dict], columns: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> List[Dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_report(path: str, title: str, machine: str, table: str, notes: Optional[str] = None) -> str:
    """Write (and return) a Markdown report: title, machine line, table, optional notes."""
    text = f"## {title}\n\n{machine}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def bar_plot(
    path: str, groups: Sequence[str], series: Dict[str, Sequence[float]], ylabel: str, title: str,
    errors: Optional[Dict[str, Sequence[float]]] = None, log: bool = False,
) -> None:
    """Grouped bar chart: one group per x label, one bar per series; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5), 4.0))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        yerr = errors.get(name) if errors else None
        ax.bar(xs, values, width, label=name, yerr=yerr, capsize=3 if yerr else 0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
