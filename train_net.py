#!/usr/bin/env python
"""Train or evaluate any DS2D2 stage (teacher, high-frequency amplifier, distilled student) from YAML.

    python train_net.py --config-file configs/synthetic/retinanet_R18_student.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --num-gpus 8        # 8 GPUs (multi-node: --num-machines ...)

The flags and trailing ``KEY VALUE`` overrides are Detectron2's ``default_argument_parser``. With
``MODEL.DEVICE cpu`` (or without CUDA), ``--num-gpus N`` starts N CPU processes that train together over gloo.
Datasets declared under ``DATASETS.OWN`` (VOC, COCO or DOTA folders, docs/own_data.md) are registered in every
process, and what they resolve to (paths, class list) is recorded in OUTPUT_DIR/config.yaml.
"""
import json
import os

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ds2d2.checkpoint import AtomicCheckpointer, atomic_path, load_for_evaluation
from ds2d2.compat import last_eval_results
from ds2d2.checks import check_config
from ds2d2.config import load_config
from ds2d2.data.own import register_own_datasets
from ds2d2.engine import Trainer
from ds2d2.launch import launch


def build_config(args) -> CfgNode:
    """The config of ``--config-file`` with the trailing ``KEY VALUE`` overrides (not yet registered)."""
    return load_config(args.config_file, args.opts, register=False)


def register_datasets(cfg: CfgNode) -> None:
    """Register the DATASETS.OWN entries, on each machine's first process before the others: it is the one
    that collects class lists and splits DOTA folders into their patch cache on first use."""
    if comm.get_local_rank() == 0:
        register_own_datasets(cfg)
    comm.synchronize()
    if comm.get_local_rank() != 0:
        register_own_datasets(cfg)


def setup(args) -> CfgNode:
    """The frozen config, its datasets registered (and recorded in it, so OUTPUT_DIR/config.yaml holds what
    the run trains on: paths, class lists), loggers set up."""
    cfg = build_config(args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ds2d2")  # dataset and VOC AP logs
    register_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def save_results(cfg, results) -> None:
    """Write the final evaluation to OUTPUT_DIR/eval_results.json (rank 0), for scripts that chain stages.
    Written whole or not at all (``atomic_path``), so a script polling for it never reads half."""
    if results and comm.is_main_process():
        with atomic_path(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), durable=False) as tmp:
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)


def evaluated_weights(cfg: CfgNode, resume: bool) -> str:
    """What ``--eval-only`` evaluates: with ``--resume`` and OUTPUT_DIR/last_checkpoint, "--resume", else
    "MODEL.WEIGHTS", which must then be set (an evaluation of random weights means nothing)."""
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return "--resume"
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "--eval-only needs weights to evaluate: MODEL.WEIGHTS is empty (and there is no "
            "OUTPUT_DIR/last_checkpoint to --resume from); set MODEL.WEIGHTS to a trained checkpoint."
        )
    return "MODEL.WEIGHTS"


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_config(cfg, datasets=["TEST"])
        key = evaluated_weights(cfg, args.resume)
        model = Trainer.build_model(cfg)
        path = cfg.MODEL.WEIGHTS
        if key == "--resume":
            path = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).get_checkpoint_file()
        load_for_evaluation(model, path, key)  # refuses weights that leave any model tensor at its init
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = last_eval_results(trainer)  # the evaluation run after the last iteration
    save_results(cfg, results)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    device = torch.device(build_config(args).MODEL.DEVICE).type
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        cpu=device == "cpu" or not torch.cuda.is_available(),
    )
