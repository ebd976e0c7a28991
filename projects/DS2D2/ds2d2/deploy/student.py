"""The detector a deployment starts from: a plain RetinaNet / Faster R-CNN (or a rotated one) built from a
config and loaded strictly from a checkpoint, whether the config is a distiller's (its student is taken,
whatever MODEL.DS2D2.TERMS trained it: DS2D2's streams, FitNet, ...) or a plain detector's."""
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from ..checkpoint import load_state_strictly, read_checkpoint
from ..data.own import dataset_classes
from ..export import STUDENT_PREFIX, student_config

DETECTORS = ("RetinaNet", "GeneralizedRCNN", "RotatedRetinaNet")
DISTILLER = "DS2D2Distiller"


def detector_config(cfg: CfgNode, device: str = "cpu") -> CfgNode:
    """The plain detector's config on ``device``: the student's for a distiller config, else the config
    itself (a copy)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == DISTILLER:
        plain = student_config(cfg)
    elif arch in DETECTORS:
        plain = cfg.clone()
        plain.defrost()
    else:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE is {arch!r}: give a detector ({DETECTORS}) or distiller "
            f"({DISTILLER!r}) config."
        )
    plain.MODEL.DEVICE = device
    return plain


def load_detector(cfg: CfgNode, checkpoint: str, key: str = "--checkpoint", device: str = "cpu") -> nn.Module:
    """``build_model(detector_config(cfg, device))`` in eval mode with the weights of ``checkpoint``: its
    ``student.*`` tensors when it has any (a distiller's), else all of it; every tensor must fit. ``key``
    (the flag or config key that named the file) is quoted in errors."""
    model = build_model(detector_config(cfg, device))
    state = read_checkpoint(checkpoint, key)
    names = state.get("model", state)
    prefix = STUDENT_PREFIX if any(k.startswith(STUDENT_PREFIX) for k in names) else ""
    load_state_strictly(model, state, key, checkpoint, prefix)
    return model.eval()


def class_names_for(cfg: CfgNode, dataset: Optional[str], num_classes: int) -> List[str]:
    """Class names of ``dataset`` (default: the config's first test set, else its first training set): the
    CLASSES its ``DATASETS.OWN`` entry recorded (a run's OUTPUT_DIR/config.yaml holds them, registered or
    not), else its metadata's; else class_<i>."""
    name = dataset or next(iter(cfg.DATASETS.TEST or cfg.DATASETS.TRAIN), None)
    names = dataset_classes(cfg, name) if name else None
    if names is not None and len(names) >= num_classes:
        return list(names[:num_classes])
    return [f"class_{i}" for i in range(num_classes)]
