"""DOTA Task 1 (oriented boxes): AP on polygons, ``Task1_<class>.txt`` submission files, polygon ground truth.

Protocol (the DOTA devkit's ``dota_evaluation_task1.py``, re-implemented): the rules of ``dota_ap`` with the
exact IoU of the detection's and the object's quadrilaterals (``polygon_iou``; the devkit's horizontal-box
pre-filter only skips pairs whose IoU is 0), a hit above IoU 0.5, difficult objects neither matched nor
missed, VOC07 11-point AP by default, mAP = mean over the classes with objects (a class without any
non-difficult object gets NaN and stays out).

Polygons are (N, 4, 2) float64 pixels in the full image. A rotated detection (Detectron2's XYWHA_ABS) becomes
its 4 corners in ``ds2d2.rotated.boxes`` order (clockwise on screen from the box's own top-left, as DOTA lists
them). Submission: ``Task1_<class>.txt`` with lines ``image_name score x1 y1 x2 y2 x3 y3 x4 y4``.
"""

from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Union

import numpy as np
import torch

from ..data.dota import DotaFormatError, parse_label_folder
from ..rotated.boxes import rotated_boxes_to_polygons
from .dota_ap import Detections, Objects, devkit_average_precision
from .polygon_iou import pairwise_polygon_iou

__all__ = [
    "rotated_to_polygons",
    "polygon_detections",
    "task1_average_precision",
    "write_task1_files",
    "polygon_ground_truth_from_records",
    "polygon_ground_truth_from_labels",
]


def rotated_to_polygons(boxes: np.ndarray) -> np.ndarray:
    """Rotated boxes (N, 5) XYWHA_ABS -> their corners (N, 4, 2), float64 pixels."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 5))
    return rotated_boxes_to_polygons(boxes).numpy().reshape(-1, 4, 2)


def polygon_detections(detections: Detections) -> Detections:
    """The same detections with rotated boxes (N, 5) replaced by their corners (N, 4, 2)."""
    return Detections(rotated_to_polygons(detections.boxes), detections.scores, detections.classes)


def task1_average_precision(
    detections: Mapping[str, Detections],
    ground_truth: Mapping[str, Objects],
    classes: Sequence[str],
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
) -> Dict[str, float]:
    """Per-class Task-1 AP in [0, 1] (NaN for a class without non-difficult objects) of polygon detections
    (boxes (N, 4, 2)) against polygon ground truth (boxes (M, 4, 2)) over the images of ``ground_truth``."""
    return devkit_average_precision(
        detections, ground_truth, classes, pairwise_polygon_iou, iou_thresh, use_07_metric
    )


def write_task1_files(
    detections: Mapping[str, Detections], classes: Sequence[str], output_dir: Union[str, Path]
) -> List[Path]:
    """Write ``Task1_<class>.txt`` for every class (empty files included) from polygon detections (boxes
    (N, 4, 2)): ``image score x1 y1 x2 y2 x3 y3 x4 y4``, scores with 6 decimals, coordinates with 2."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines: Dict[int, List[str]] = defaultdict(list)
    for stem in sorted(detections):
        polygons, scores, labels = detections[stem]
        for polygon, score, cls in zip(np.reshape(polygons, (-1, 8)), scores, labels):
            coords = " ".join(f"{v:.2f}" for v in polygon)
            lines[int(cls)].append(f"{stem} {score:.6f} {coords}\n")
    paths = []
    for cls, name in enumerate(classes):
        path = output_dir / f"Task1_{name}.txt"
        path.write_text("".join(lines[cls]))
        paths.append(path)
    return paths


def _objects(polygons: Sequence, categories: Sequence[str], difficult: Sequence[int], lines: Sequence[int],
             class_ids: Mapping[str, int], where: str) -> Objects:
    """Objects with polygon boxes (M, 4, 2); an unknown category is an error naming ``where`` and the line."""
    for category, line in zip(categories, lines):
        if category not in class_ids:
            raise DotaFormatError(f"{where}:{line}: category {category!r} is not one of {list(class_ids)}")
    return Objects(
        np.array(polygons, dtype=np.float64).reshape(-1, 4, 2),
        np.array([class_ids[c] for c in categories], dtype=np.int64),
        np.array([d > 0 for d in difficult], dtype=bool),
    )


def polygon_ground_truth_from_records(records: Sequence[dict], classes: Sequence[str]) -> Dict[str, Objects]:
    """Polygon ground truth recorded in a patch set's image records (the original images' objects, each
    with its ``polygon`` of 8 numbers)."""
    class_ids = {c: i for i, c in enumerate(classes)}
    gts = {}
    for r in records:
        objs = r["objects"]
        if any("polygon" not in o for o in objs):
            raise KeyError(
                f"The patch set's record of image {r['image']} has no object polygons (written by an older "
                "datasets/prepare_dota.py): split it again, or give the original labelTxt folder (--labels)"
            )
        gts[r["image"]] = _objects(
            [o["polygon"] for o in objs], [o["category"] for o in objs], [o["difficult"] for o in objs],
            [o["line"] for o in objs], class_ids, r["image"],
        )
    return gts


def polygon_ground_truth_from_labels(
    labels_dir: Union[str, Path], images: Sequence[str], classes: Sequence[str]
) -> Dict[str, Objects]:
    """Polygon ground truth of ``images`` (stems) read from DOTA label files ``labels_dir/<stem>.txt``."""
    class_ids = {c: i for i, c in enumerate(classes)}
    return {
        stem: _objects(
            [o.polygon for o in objs], [o.category for o in objs], [o.difficult for o in objs],
            [o.line for o in objs], class_ids, str(path),
        )
        for stem, (path, objs) in parse_label_folder(labels_dir, images).items()
    }
