"""Set-up shared by the reliability tests: tiny synthetic DIOR data, tiny configs, train_net.py runs."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from detectron2.data import DatasetCatalog

from conftest import tiny_cfg, tiny_stages
from ds2d2.data import DIOR_CLASSES, register_voc_detection
from ds2d2.data.synthetic import write_synthetic_dior

ROOT = Path(__file__).resolve().parents[1]

# 64 px inputs, batch 2, no data-loading processes, no evaluation, checkpoints every 2 iterations.
TINY_TRAINING = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.CHECKPOINT_PERIOD", 2,
    "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (2,), "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0,
]
DIOR = ["MODEL.RETINANET.NUM_CLASSES", 20, "MODEL.ROI_HEADS.NUM_CLASSES", 20]


def write_data(root: Path) -> Path:
    """Synthetic DIOR (12 images) under ``root/synthetic_dior``; ``root`` is a DETECTRON2_DATASETS root."""
    write_synthetic_dior(root / "synthetic_dior", num_images=12, seed=0)
    return root


def register_in_process(root: Path, name: str = "reliability_trainval") -> str:
    """Register the synthetic trainval split of ``root`` under ``name`` in this process (once)."""
    if name not in DatasetCatalog.list():
        data = root / "synthetic_dior"
        register_voc_detection(
            name,
            image_dir=str(data / "JPEGImages-trainval"),
            annotation_dir=str(data / "Annotations" / "Horizontal Bounding Boxes"),
            classes=DIOR_CLASSES,
            split_file=[str(data / "ImageSets" / "Main" / f"{s}.txt") for s in ("train", "val")],
        )
    return name


def write_distiller_config(folder: Path, detector: str, opts: Sequence = ()) -> Path:
    """A tiny DS2D2 distiller YAML (random teacher and amplifier files next to it) for synthetic DIOR."""
    cfg = tiny_stages(folder, detector, teacher_opts=DIOR, student_opts=[*DIOR, *TINY_TRAINING, *opts])
    cfg.DATASETS.TRAIN = ("synthetic_dior_trainval",)
    cfg.DATASETS.TEST = ()
    path = folder / "distiller.yaml"
    path.write_text(cfg.dump())
    return path


def train_net_command(config: Path, output: Path, opts: Sequence = (), flags: Sequence = ()) -> list:
    """``train_net.py --config-file CONFIG FLAGS OPTS OUTPUT_DIR output``."""
    return [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(config), *map(str, flags),
            *map(str, opts), "OUTPUT_DIR", str(output)]


def environment(data_root: Path) -> dict:
    """The environment of train_net.py runs: one thread per process, as more only contend on a few cores."""
    return dict(os.environ, DETECTRON2_DATASETS=str(data_root), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def run_train_net(data_root: Path, config: Path, output: Path, opts: Sequence = (), flags: Sequence = (),
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run train_net.py to its end; with ``check``, assert that it succeeded."""
    proc = subprocess.run(
        train_net_command(config, output, opts, flags), env=environment(data_root), cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tiny_trainer_config(detector: str, dataset: str, output: Path, opts: Sequence = ()):
    """In-process config of a tiny plain ``detector`` training on ``dataset`` (registered) into ``output``."""
    cfg = tiny_cfg(detector, [*DIOR, *TINY_TRAINING, *opts])
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.OUTPUT_DIR = str(output)
    return cfg
