"""Set-up shared by the rotated-detector tests: tiny configs of the shipped rotated detectors, random training
batches of oriented boxes, a small dataset of oriented boxes (XYWHA_ABS) written as PNGs and registered in
this process, and a tiny random rotated teacher with its stage-2 amplifier for the distiller's tests."""
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode, Instances, RotatedBoxes

from ds2d2.config import detector_architecture, load_config
from ds2d2.rotated.boxes import rotated_boxes_to_polygons

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DETECTORS = ["synthetic/rotated_retinanet_R18_student.yaml", "synthetic/rotated_faster_rcnn_R18_student.yaml"]
CLASSES = ["ship", "plane", "tree"]
DATASET = "rotated_tiny"  # the name register_oriented_dataset registers by default
# tiny CPU models: ResNet-18, narrow FPN and heads, few proposals, every box scored
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.RETINANET.NUM_CONVS", 1,
    "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
]
# 64 px inputs, batch 2, no data-loading processes, no evaluation during training, checkpoints every 2 steps
TINY_TRAINING = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.CHECKPOINT_PERIOD", 2,
    "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (2,), "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0,
    "SEED", 3,
]


def tiny_config(name: str, opts: Sequence = ()) -> CfgNode:
    """The shipped config ``name`` (under configs/) shrunk by TINY, then ``opts``; nothing registered."""
    return load_config(str(CONFIGS / name), [str(v) for v in [*TINY, *opts]], register=False)


def rotated_batch(num_images: int = 2, size: int = 64, seed: int = 0, angles: bool = True):
    """Training inputs with 1-4 oriented objects per image (random angles, or all at angle 0)."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        centre = torch.rand(n, 2, generator=generator) * size * 0.6 + size * 0.2
        extent = torch.rand(n, 2, generator=generator) * size * 0.3 + 6
        angle = (torch.rand(n, 1, generator=generator) * 360 - 180) if angles else torch.zeros(n, 1)
        instances = Instances((size, size))
        instances.gt_boxes = RotatedBoxes(torch.cat([centre, extent, angle], dim=1))
        instances.gt_classes = torch.randint(0, 3, (n,), generator=generator)
        image = torch.rand(3, size, size, generator=generator) * 255
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def write_rotated_teacher(folder: Path, config: str, opts: Sequence = ()) -> List[str]:
    """A random tiny teacher of the shipped rotated ``config`` (FPN width 64, recorded as trained on
    ``register_oriented_dataset``'s name, then ``opts``): its YAML, weights and stage-2 amplifier checkpoint
    under ``folder``; returns the overrides that point a distiller config at them."""
    datasets = ["DATASETS.TRAIN", (DATASET,), "DATASETS.TEST", ()]
    teacher = tiny_config(config, ["MODEL.FPN.OUT_CHANNELS", 64, *datasets, *opts])
    paths = {name: folder / name for name in ("teacher.yaml", "teacher.pth", "amplifier.pth")}
    paths["teacher.yaml"].write_text(teacher.dump())
    torch.save({"model": build_model(teacher).state_dict()}, paths["teacher.pth"])
    amplifier = teacher.clone()
    amplifier.merge_from_list(["MODEL.META_ARCHITECTURE", "DS2D2Amplifier",
                               "MODEL.DS2D2.DETECTOR", detector_architecture(teacher),
                               "MODEL.DS2D2.TEACHER_WEIGHTS", str(paths["teacher.pth"])])
    torch.save({"model": build_model(amplifier).state_dict()}, paths["amplifier.pth"])
    return ["MODEL.DS2D2.TEACHER_CONFIG", str(paths["teacher.yaml"]),
            "MODEL.DS2D2.TEACHER_WEIGHTS", str(paths["teacher.pth"]),
            "MODEL.DS2D2.AMPLIFIER_WEIGHTS", str(paths["amplifier.pth"])]


def write_oriented_dataset(folder: Path, num_images: int = 6, size: int = 64) -> List[dict]:
    """Dataset dicts of ``num_images`` PNGs with 1-3 filled oriented rectangles each (XYWHA_ABS boxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    dicts = []
    for index in range(num_images):
        image = np.zeros((size, size, 3), np.uint8)
        annotations = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            box = torch.cat([torch.rand(2, generator=generator) * 32 + 16,
                             torch.rand(2, generator=generator) * 16 + 8,
                             torch.rand(1, generator=generator) * 180 - 90])
            category = int(torch.randint(0, len(CLASSES), (1,), generator=generator))
            corners = rotated_boxes_to_polygons(box[None]).view(4, 2).numpy()
            cv2.fillPoly(image, [np.round(corners).astype(np.int32)], (60 * category + 80,) * 3)
            annotations.append(
                {"bbox": box.tolist(), "bbox_mode": BoxMode.XYWHA_ABS, "category_id": category}
            )
        path = folder / f"{index}.png"
        cv2.imwrite(str(path), image)
        dicts.append({"file_name": str(path), "image_id": index, "height": size, "width": size,
                      "annotations": annotations})
    return dicts


def register_oriented_dataset(folder: Path, name: str = DATASET) -> str:
    """``write_oriented_dataset(folder)`` registered as ``name``: classes CLASSES, box_kind "oriented"."""
    dicts = write_oriented_dataset(folder)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type="voc_detection", box_kind="oriented")
    return name
