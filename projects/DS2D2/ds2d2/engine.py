"""Trainer for every DS2D2 stage: Detectron2's DefaultTrainer with three changes.

1. Evaluators come from the dataset's metadata (``evaluator_type``), so one train_net.py serves DIOR-style VOC
   datasets and DOTA patch sets alike.
2. ``SOLVER.FIND_UNUSED_PARAMETERS`` reaches DistributedDataParallel (DefaultTrainer hard-codes it).
3. Checkpoints hold the optimizer (and AMP grad-scaler) state next to the iteration and scheduler state, so that
   ``--resume`` continues exactly where training stopped (detectron2 v0.6 saves neither).
"""
import logging
import os
import weakref
from typing import List, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger


def detectron2_has_compiled_ops() -> bool:
    """False when detectron2 was installed as pure Python by tools/install_detectron2.py (its ``_C`` is a stub)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_DS2D2_STUB", False)


def build_evaluators(cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluators:
    """COCO-style AP plus the dataset's own protocol, chosen by ``MetadataCatalog.get(name).evaluator_type``.

    ``voc_detection``: COCO AP/AP50/AP75/APs/m/l + VOC per-class AP50 (what DIOR papers report).
    ``dota_patches``: COCO AP on patches (if the split has labels) + DOTA Task-2 mAP on merged full images.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    coco = COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=detectron2_has_compiled_ops())
    evaluators: List[DatasetEvaluator]
    if kind == "voc_detection":
        from .evaluation.voc import VOCDetectionEvaluator

        evaluators = [coco, VOCDetectionEvaluator(dataset_name, use_07_metric=cfg.TEST.VOC_USE_07_METRIC)]
    elif kind == "dota_patches":
        from .evaluation.dota import DOTAFullImageEvaluator

        evaluators = [coco] if meta.get("has_labels", True) else []
        evaluators.append(DOTAFullImageEvaluator(dataset_name, output_folder))
    else:
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type={kind!r}; ds2d2 knows 'voc_detection' "
            "(register_voc_detection) and 'dota_patches' (register_dota)."
        )
    return DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """DefaultTrainer with metadata-driven evaluators, configurable DDP and full-state checkpoints."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(
            model, broadcast_buffers=False, find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()  # optimizer (+ AMP grad scaler)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" not in state:
            raise KeyError("checkpoint has no optimizer state ('_trainer'); it was not written by ds2d2's Trainer")
        self._trainer.load_state_dict(state["_trainer"])

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)
