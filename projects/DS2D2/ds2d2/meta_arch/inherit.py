"""``MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD``: start the student's neck (FPN) and heads from the teacher's.

FGD's and MGD's official recipes (``init_student=True``) load the teacher's checkpoint minus its backbone into
the student without strictness, so every tensor whose name and shape fit is copied and the others keep their
own initialisation. In Detectron2 the FPN sits inside ``backbone``; only ``backbone.bottom_up`` (the ResNet)
is the trunk left out. The distiller calls this when it is built, before the trainer loads ``MODEL.WEIGHTS``
(an ImageNet trunk, no FPN or head tensor) or a ``--resume`` checkpoint (which replaces everything).
"""
import logging
from typing import List, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)
INHERIT_KEY = "MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD"
TRUNK_PREFIX = "backbone.bottom_up."


def inherit_teacher_neck_head(student: nn.Module, teacher: nn.Module) -> Tuple[List[str], List[str]]:
    """Copy every teacher tensor outside ``backbone.bottom_up`` into the student tensor of the same name and
    shape, in place; return (names copied, names left at the student's own init), the latter logged by name.

    A ValueError naming ``INHERIT_KEY`` when a model has no FPN (``backbone.bottom_up``) or when no weight
    (a tensor of 2 or more dimensions) fits, e.g. a student whose FPN is narrower than the teacher's: copying
    a few bias vectors alone would not be inheriting the neck and head.
    """
    if type(student) is not type(teacher):
        raise ValueError(
            f"{INHERIT_KEY}: the student is a {type(student).__name__}, the teacher a "
            f"{type(teacher).__name__}; a neck and head are inherited from a teacher of the student's kind "
            "only (across kinds no head tensor has the student's name, and the FPN would be inherited "
            "alone). Set the key False for a mixed pair."
        )
    if not all(hasattr(m.backbone, "bottom_up") for m in (student, teacher)):
        raise ValueError(f"{INHERIT_KEY} needs FPN backbones (a 'bottom_up' network under an FPN neck).")
    target = student.state_dict()
    copied, skipped = [], []
    with torch.no_grad():
        for name, value in teacher.state_dict().items():
            if name.startswith(TRUNK_PREFIX):
                continue
            if name in target and target[name].shape == value.shape:
                target[name].copy_(value)
                copied.append(name)
            else:
                skipped.append(name)
    if not any(target[name].dim() >= 2 for name in copied):
        raise ValueError(
            f"{INHERIT_KEY}: none of the teacher's FPN / head weights has the name and shape of one of the "
            f"student's (it would inherit only {copied}; left out: {skipped[:4]}...). Give the student the "
            "teacher's FPN width (MODEL.FPN.OUT_CHANNELS) and head, or set the key False."
        )
    logger.info(
        f"{INHERIT_KEY}: the student inherits {len(copied)} FPN / head tensors of the teacher; "
        f"{len(skipped)} keep the student's own init (name or shape differ): {skipped}"
    )
    return copied, skipped
