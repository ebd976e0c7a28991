"""``launch()`` with Detectron2's signature that also runs multi-process training on CPUs.

Detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL. Here, when the job runs on CPUs (``cpu=True``, or
no CUDA device is available), the processes join a gloo process group instead; the rest (``dist_url="auto"``,
multi-machine ranks, the local process group that ``detectron2.utils.comm`` uses) works the same. GPU jobs go
to Detectron2's own ``launch`` unchanged.
"""
import logging
import os
import socket
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .compat import set_local_process_group

__all__ = ["launch"]


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    *,
    cpu: Optional[bool] = None,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines`` machines.

    ``num_gpus_per_machine`` counts processes per machine (on CPUs: CPU worker processes). ``cpu``: True for a
    CPU job (gloo), False for a GPU job (Detectron2's launch, NCCL); None: CPU when CUDA is not available.
    """
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if not cpu:
        detectron2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, tuple(args), timeout
        )
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT of machine 0.")
        dist_url = _free_local_url()
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group(
            "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    # The local group (ranks on this machine), as detectron2.utils.comm expects it.
    for machine in range(world_size // num_per_machine):
        group = dist.new_group(list(range(machine * num_per_machine, (machine + 1) * num_per_machine)))
        if machine == machine_rank:
            set_local_process_group(group)
    if "OMP_NUM_THREADS" not in os.environ:  # share this machine's cores between its processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // num_per_machine))
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
