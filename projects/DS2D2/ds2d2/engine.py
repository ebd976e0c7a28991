"""Trainer for every DS2D2 stage: Detectron2's DefaultTrainer with these changes.

1. Evaluators come from the dataset's metadata (``evaluator_type``), so one train_net.py serves DIOR-style VOC
   datasets, COCO JSONs and DOTA patch sets alike.
2. ``SOLVER.FIND_UNUSED_PARAMETERS`` reaches DistributedDataParallel (DefaultTrainer hard-codes it), and DDP
   also works for CPU processes (``ds2d2.launch``).
3. ``--resume`` continues exactly where training stopped: checkpoints hold the optimizer (and AMP grad-scaler)
   state, the run's seed and RetinaNet's loss-normaliser EMA next to the iteration and scheduler state
   (detectron2 v0.6 saves none of these); the data order and augmentations are a function of (seed, position)
   (``ds2d2.data.sampler``) and the model's RNGs are reseeded per iteration (``ds2d2.train_loop``).
4. Checkpoints are written atomically and read without unpickling code (``ds2d2.checkpoint``);
   ``SOLVER.CHECKPOINT_MAX_TO_KEEP`` bounds how many periodic ones a run leaves on disk.
5. Unregistered dataset names, train/test class lists that differ and a head whose class count is not the
   data's fail before anything is built; a non-finite loss stops training naming the term.
"""
import logging
import os
import weakref
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators, RotatedCOCOEvaluator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from .checkpoint import AtomicCheckpointer
from .checks import check_config, check_train_datasets_have_boxes
from .compat import detectron2_has_compiled_ops, set_step_trainer, step_trainer
from .data.mapper import CheckedDatasetMapper
from .data.sampler import ResumableTrainLoader
from .evaluation.dota import DOTAFullImageEvaluator
from .evaluation.voc import RotatedVOCDetectionEvaluator, VOCDetectionEvaluator
from .solver import build_optimizer
from .train_loop import CheckedAMPTrainer, CheckedSimpleTrainer, ReseedEachIteration


def build_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """COCO-style AP plus the dataset's own protocol, chosen by ``MetadataCatalog.get(name).evaluator_type``.

    ``voc_detection``: COCO AP/AP50/AP75/APs/m/l + VOC per-class AP50 (what DIOR papers report).
    ``coco``: COCO AP against the dataset's JSON (``register_coco_detection``, ``register_coco_instances``).
    ``dota_patches``: COCO AP on patches (if the split has labels) + DOTA Task-2 mAP on merged full images
    (or the submission files of an unlabelled split); ``TEST.DOTA_FULL_IMAGES False`` keeps the patch AP only.
    A dataset of oriented boxes (metadata ``box_kind`` "oriented": DIOR-R, oriented DOTA patches) is scored
    on the rotated IoU: Detectron2's RotatedCOCOEvaluator, RotatedVOCDetectionEvaluator (DIOR-R's AP), and
    DOTA Task 1 instead of Task 2 on the merged full images.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if meta.get("box_kind", "horizontal") == "oriented":
        coco = RotatedCOCOEvaluator(dataset_name, output_dir=output_folder)
        voc = RotatedVOCDetectionEvaluator
    else:
        fast = detectron2_has_compiled_ops()
        coco = COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=fast)
        voc = VOCDetectionEvaluator
    evaluators: List[DatasetEvaluator]
    if kind == "voc_detection":
        evaluators = [coco, voc(dataset_name, use_07_metric=cfg.TEST.VOC_USE_07_METRIC)]
    elif kind == "coco":
        evaluators = [coco]
    elif kind == "dota_patches":
        evaluators = [coco] if meta.get("has_labels", True) else []
        if cfg.TEST.DOTA_FULL_IMAGES:
            evaluators.append(DOTAFullImageEvaluator(dataset_name, output_folder))
        elif not evaluators:
            raise ValueError(
                f"TEST.DOTA_FULL_IMAGES is False, but dataset '{dataset_name}' has no labels: there is no "
                "patch AP to compute. Set TEST.DOTA_FULL_IMAGES True to write its submission files (Task 1 "
                "or 2)."
            )
    else:
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type={kind!r}; ds2d2 knows 'voc_detection' "
            "(register_voc_detection), 'coco' (register_coco_detection) and 'dota_patches' (register_dota)."
        )
    return DatasetEvaluators(evaluators)


def run_seed(cfg: CfgNode) -> int:
    """``SEED`` if set (>= 0), else one random seed shared by all processes."""
    return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer(DefaultTrainer):
    """DefaultTrainer with metadata-driven evaluators, configurable DDP, exact resume and safe checkpoints."""

    def __init__(self, cfg: CfgNode):
        check_config(cfg)
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        self.seed = run_seed(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS,
            **({"device_ids": None} if on_cpu else {}),
        )
        step_class = CheckedAMPTrainer if cfg.SOLVER.AMP.ENABLED else CheckedSimpleTrainer
        set_step_trainer(self, step_class(model, data_loader, optimizer))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        self._place_data_stream()

    def _place_data_stream(self) -> None:
        """Start the training data at this run's seed and iteration (a custom loader is used as it is)."""
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.seed, self.data_loader.start_batch = self.seed, self.start_iter

    def build_hooks(self):
        built = super().build_hooks()
        keep = self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP
        if keep:
            period = self.cfg.SOLVER.CHECKPOINT_PERIOD
            built = [
                hooks.PeriodicCheckpointer(self.checkpointer, period, max_to_keep=keep)
                if isinstance(h, hooks.PeriodicCheckpointer) else h
                for h in built
            ]
        return [ReseedEachIteration(), *built]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        self._place_data_stream()  # the checkpoint's seed and iteration, if one was loaded

    def _dense_detectors(self):
        return {n: m for n, m in _unwrap(self.model).named_modules() if isinstance(m, DenseDetector)}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["_trainer"] = step_trainer(self).state_dict()  # optimizer (+ AMP grad scaler)
        state["seed"] = self.seed
        # RetinaNet/FCOS keep the EMA of their loss normaliser in a plain attribute, outside state_dict()
        state["loss_normalizers"] = {
            name: float(m.loss_normalizer)
            for name, m in self._dense_detectors().items()
            if hasattr(m, "loss_normalizer")
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" not in state:
            raise KeyError("checkpoint has no optimizer state ('_trainer'); ds2d2's Trainer did not write it")
        step_trainer(self).load_state_dict(state["_trainer"])
        self.seed = state.get("seed", self.seed)
        detectors = self._dense_detectors()
        for name, value in state.get("loss_normalizers", {}).items():
            if name in detectors:
                detectors[name].loss_normalizer = value

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> Optimizer:
        """Detectron2's, plus SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" (MMDetection's clipping)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> ResumableTrainLoader:
        """Detectron2's training data (datasets, DatasetMapper, sampler and aspect-ratio grouping settings) in
        a resumable order seeded by ``run_seed(cfg)``; images read by ``CheckedDatasetMapper``. Refuses, as
        ``check_config`` does before the model is built, TRAIN datasets that have no box at all (for callers
        that build the loader on its own)."""
        check_train_datasets_have_boxes(cfg.DATASETS.TRAIN)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = cfg.DATALOADER.SAMPLER_TRAIN
        if sampler == "TrainingSampler":
            repeat_factors = None
        elif sampler == "RepeatFactorTrainingSampler":
            repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD
            ).tolist()
        else:
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN is {sampler!r}; ds2d2's resumable data order supports "
                "'TrainingSampler' and 'RepeatFactorTrainingSampler'."
            )
        group_ids = None
        if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
            group_ids = [0 if d["width"] > d["height"] else 1 for d in dataset]
        return ResumableTrainLoader(
            DatasetFromList(dataset, copy=False),
            CheckedDatasetMapper(cfg, True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            seed=run_seed(cfg),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            group_ids=group_ids,
            repeat_factors=repeat_factors,
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> DataLoader:
        """Detectron2's test loader with images read by ``CheckedDatasetMapper`` (INPUT.MAX_PIXELS)."""
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluators:
        return build_evaluators(cfg, dataset_name, output_folder)
