#!/usr/bin/env python
"""Train or evaluate any DS2D2 stage (teacher, high-frequency amplifier, distilled student) from a YAML config.

    python train_net.py --config-file configs/synthetic/retinanet_R18_student.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --num-gpus 8        # multi-GPU; add --num-machines/--machine-rank/--dist-url

The flags and trailing ``KEY VALUE`` overrides are Detectron2's ``default_argument_parser``.
"""
import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ds2d2 import add_ds2d2_config
from ds2d2.engine import Trainer


def setup(args):
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ds2d2")  # dataset and VOC AP logs
    return cfg


def save_results(cfg, results) -> None:
    """Write the final evaluation to OUTPUT_DIR/eval_results.json (rank 0), for scripts that chain stages."""
    if results and comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)  # the evaluation run after the last iteration
    save_results(cfg, results)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
