"""The training step's safety and reproducibility: named non-finite losses, per-iteration RNG seeds.

- ``CheckedSimpleTrainer`` / ``CheckedAMPTrainer``: Detectron2's trainers whose metric writing (which already
  copies every loss to the host, after ``backward`` and before ``optimizer.step``) gathers the losses of every
  process and raises ``FloatingPointError`` naming each non-finite term and process. Every process raises, so
  none waits forever in the next collective; the optimizer never steps on a non-finite loss and no checkpoint
  is written for the failed iteration, so ``OUTPUT_DIR/last_checkpoint`` still names the last good one.
- ``ReseedEachIteration``: seeds the global RNGs from (run seed, iteration, rank) before every step, so the
  model's own random choices (e.g. Faster R-CNN's anchor and RoI sampling) in a resumed run repeat those of an
  uninterrupted run.
"""
import math
import random
from typing import Mapping

import numpy as np
import torch
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .compat import with_metrics_writer
from .data.sampler import seed_from


def write_metrics_checked(loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "") -> None:
    """``SimpleTrainer.write_metrics`` that stops on a non-finite loss term on any process, naming it."""
    metrics = {k: v.detach().cpu().item() for k, v in loss_dict.items()}  # the host copy detectron2 makes too
    metrics["data_time"] = data_time
    every = comm.all_gather(metrics)
    storage = get_event_storage()
    bad = [
        f"{name} = {value} (process {rank})"
        for rank, per_rank in enumerate(every)
        for name, value in per_rank.items()
        if not math.isfinite(value)
    ]
    if bad:
        raise FloatingPointError(
            f"Non-finite loss at iteration {storage.iter}: {', '.join(bad)}. Training stopped before the "
            "optimizer step; OUTPUT_DIR/last_checkpoint names the last good checkpoint (resume from it with "
            "--resume, e.g. after lowering SOLVER.BASE_LR or the offending term's weight)."
        )
    if comm.is_main_process():
        storage.put_scalar("data_time", max(m.pop("data_time") for m in every))
        means = {k: float(np.mean([m[k] for m in every])) for k in every[0]}
        storage.put_scalar(f"{prefix}total_loss", sum(means.values()))
        if len(means) > 1:
            storage.put_scalars(**means)


# Detectron2's trainers that name non-finite loss terms (see ``write_metrics_checked``).
CheckedSimpleTrainer = with_metrics_writer(SimpleTrainer, write_metrics_checked)
CheckedAMPTrainer = with_metrics_writer(AMPTrainer, write_metrics_checked)


class ReseedEachIteration(HookBase):
    """Before each step, seed Python's, NumPy's and torch's (all devices) global RNGs from
    (``trainer.seed``, iteration, rank)."""

    def before_step(self) -> None:
        seed = seed_from(self.trainer.seed, self.trainer.iter, comm.get_rank())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
