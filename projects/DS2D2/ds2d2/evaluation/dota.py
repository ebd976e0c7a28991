"""DOTA full-image results: Task-2 AP, submission files, and the evaluator of a patch set's merged images.

Protocol (the DOTA devkit's ``dota_evaluation_task2.py``, re-implemented): horizontal boxes, per-class AP at
IoU > 0.5 with the devkit's "+1 pixel" box sizes, difficult objects neither matched nor missed, VOC07 11-point
AP by default (``use_07_metric=False``: area under the interpolated PR curve), mAP = mean over classes.
Ground-truth boxes are the polygons' bounds (the devkit truncates them to integers; here they stay exact).
Classes without any non-difficult object get AP NaN and stay out of the mAP.

Merging patch detections into full-image ones: ``dota_merge``.

Submission: ``Task2_<class>.txt`` with lines ``image_name score xmin ymin xmax ymax``, one file per class.
"""

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.dota import (
    DotaFormatError,
    load_dota_patches,
    parse_dota_labels,
    read_image_records,
    read_split_info,
)
from .dota_merge import DEFAULT_NMS_THRESH, ImageDetections, merge_detections, patch_to_image
from .voc import average_precision

__all__ = [
    "GroundTruth",
    "task2_average_precision",
    "write_task2_files",
    "ground_truth_from_records",
    "ground_truth_from_labels",
    "evaluate_full_images",
    "load_coco_detections",
    "merge_and_evaluate_coco_results",
    "DOTAFullImageEvaluator",
]

logger = logging.getLogger(__name__)


class GroundTruth(NamedTuple):
    """Objects of one image: boxes (M, 4) float64 xyxy pixels, classes (M,) int64, difficult (M,) bool."""

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


def _iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of xyxy boxes with the devkit's "+1 pixel" widths and heights."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _match_image(dets: ImageDetections, gt: GroundTruth, cls: int, iou_thresh: float):
    """(scores, tp, fp) of one image's detections of class ``cls``, matched greedily by decreasing score."""
    d = np.flatnonzero(dets.classes == cls)
    d = d[np.argsort(-dets.scores[d], kind="stable")]
    g = gt.classes == cls
    gboxes, gdifficult = gt.boxes[g], gt.difficult[g]
    tp, fp = np.zeros(len(d)), np.zeros(len(d))
    if len(gboxes) == 0:
        fp[:] = 1.0
        return dets.scores[d], tp, fp
    ious = _iou_plus_one(dets.boxes[d], gboxes)
    taken = np.zeros(len(gboxes), dtype=bool)
    for k, j in enumerate(ious.argmax(1)):
        if ious[k, j] <= iou_thresh:
            fp[k] = 1.0
        elif gdifficult[j]:
            continue
        elif taken[j]:
            fp[k] = 1.0
        else:
            tp[k], taken[j] = 1.0, True
    return dets.scores[d], tp, fp


def task2_average_precision(
    detections: Mapping[str, ImageDetections],
    ground_truth: Mapping[str, GroundTruth],
    classes: Sequence[str],
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
) -> Dict[str, float]:
    """Per-class Task-2 AP in [0, 1] (NaN for a class without non-difficult objects) over the images of
    ``ground_truth``; a detection on an image without ground truth is an error."""
    unknown = sorted(set(detections) - set(ground_truth))
    if unknown:
        raise KeyError(f"Detections for images without ground truth: {unknown[:5]}")
    empty = ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    aps = {}
    for cls, name in enumerate(classes):
        npos = sum(int(np.sum((gt.classes == cls) & ~gt.difficult)) for gt in ground_truth.values())
        matched = [
            _match_image(detections.get(s, empty), gt, cls, iou_thresh) for s, gt in ground_truth.items()
        ]
        scores, tp, fp = (np.concatenate([m[i] for m in matched] + [np.zeros(0)]) for i in range(3))
        if npos == 0:
            aps[name] = math.nan
            continue
        order = np.argsort(-scores, kind="stable")
        tp, fp = np.cumsum(tp[order]), np.cumsum(fp[order])
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = average_precision(tp / npos, precision, use_07_metric)
    return aps


def write_task2_files(
    detections: Mapping[str, ImageDetections], classes: Sequence[str], output_dir: Union[str, Path]
) -> List[Path]:
    """Write ``Task2_<class>.txt`` for every class (empty files included): ``image score xmin ymin xmax
    ymax``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines: Dict[int, List[str]] = defaultdict(list)
    for stem in sorted(detections):
        det = detections[stem]
        for (x0, y0, x1, y1), score, cls in zip(det.boxes, det.scores, det.classes):
            lines[int(cls)].append(f"{stem} {score:.6f} {x0:.2f} {y0:.2f} {x1:.2f} {y1:.2f}\n")
    paths = []
    for cls, name in enumerate(classes):
        path = output_dir / f"Task2_{name}.txt"
        path.write_text("".join(lines[cls]))
        paths.append(path)
    return paths


def _ground_truth(objects: Sequence[tuple], class_ids: Mapping[str, int], where: str) -> GroundTruth:
    """GroundTruth from (bbox, category, difficult, line) tuples; an unknown category is an error naming
    ``where``."""
    for _, category, _, line in objects:
        if category not in class_ids:
            raise DotaFormatError(f"{where}:{line}: category {category!r} is not one of {list(class_ids)}")
    return GroundTruth(
        np.array([o[0] for o in objects], dtype=np.float64).reshape(-1, 4),
        np.array([class_ids[o[1]] for o in objects], dtype=np.int64),
        np.array([o[2] > 0 for o in objects], dtype=bool),
    )


def ground_truth_from_records(records: Sequence[dict], classes: Sequence[str]) -> Dict[str, GroundTruth]:
    """Ground truth recorded in a patch set's image records (the original images' objects)."""
    class_ids = {c: i for i, c in enumerate(classes)}
    return {
        r["image"]: _ground_truth(
            [(o["bbox"], o["category"], o["difficult"], o["line"]) for o in r["objects"]],
            class_ids,
            r["image"],
        )
        for r in records
    }


def ground_truth_from_labels(
    labels_dir: Union[str, Path], images: Sequence[str], classes: Sequence[str]
) -> Dict[str, GroundTruth]:
    """Ground truth of ``images`` (stems) read from DOTA label files ``labels_dir/<stem>.txt``."""
    class_ids = {c: i for i, c in enumerate(classes)}
    gts = {}
    for stem in images:
        path = Path(labels_dir) / f"{stem}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no label file for image {stem}")
        objects = [(o.bbox, o.category, o.difficult, o.line) for o in parse_dota_labels(path)]
        gts[stem] = _ground_truth(objects, class_ids, str(path))
    return gts


def evaluate_full_images(
    patch_detections: Mapping[str, Sequence[ImageDetections]],
    records: Sequence[dict],
    classes: Sequence[str],
    output_dir: Optional[Union[str, Path]] = None,
    ground_truth: Optional[Mapping[str, GroundTruth]] = None,
    write_submission: bool = False,
    nms_thresh: float = DEFAULT_NMS_THRESH,
    use_07_metric: bool = True,
) -> Optional[dict]:
    """Merge the detections (image pixels, per source image) of a patch set and score/write them.

    records: the patch set's image records (sizes, names). With ``ground_truth``, returns ``{"mAP": float,
    "AP": {class: float}}`` (in [0, 1]) and writes it to ``output_dir/dota_eval.json``; otherwise returns
    None. ``write_submission`` writes ``Task2_<class>.txt`` into ``output_dir``.
    """
    unknown = sorted(set(patch_detections) - {r["image"] for r in records})
    if unknown:
        raise KeyError(f"Detections for images that are not in the patch set: {unknown[:5]}")
    merged = {
        r["image"]: merge_detections(
            patch_detections.get(r["image"], []), r["width"], r["height"], nms_thresh
        )
        for r in records
    }
    if write_submission:
        if output_dir is None:
            raise ValueError("write_submission needs an output_dir")
        write_task2_files(merged, classes, output_dir)
    if ground_truth is None:
        return None
    aps = task2_average_precision(merged, ground_truth, classes, use_07_metric=use_07_metric)
    valid = [v for v in aps.values() if not math.isnan(v)]
    result = {"mAP": float(np.mean(valid)) if valid else math.nan, "AP": aps}
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        clean = {"mAP": _json_number(result["mAP"]), "AP": {k: _json_number(v) for k, v in aps.items()}}
        with open(Path(output_dir) / "dota_eval.json", "w") as f:
            json.dump(clean, f, indent=1)
    return result


def _json_number(x: float) -> Optional[float]:
    return None if math.isnan(x) else x


def load_coco_detections(
    results_json: Union[str, Path],
    dataset_dicts: Sequence[dict],
    dataset_id_to_contiguous: Optional[dict] = None,
) -> Dict[str, List[ImageDetections]]:
    """Detectron2 COCO results (``coco_instances_results.json``) of a patch set -> detections in original
    image pixels, grouped by source image.

    ``image_id`` is the patch's dataset-dict ``image_id``; ``category_id`` is the contiguous id, or a dataset
    id mapped through ``dataset_id_to_contiguous`` (metadata ``thing_dataset_id_to_contiguous_id``) when
    given.
    """
    with open(results_json) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise DotaFormatError(f"{results_json}: expected a list of COCO detections")
    patches = {d["image_id"]: d for d in dataset_dicts}
    for key in ("source_image", "patch_origin", "patch_scale"):
        if dataset_dicts and key not in dataset_dicts[0]:
            raise KeyError(
                f"Dataset dicts lack {key!r}: register the patch set with ds2d2.data.dota.register_dota"
            )
    grouped: Dict[object, list] = defaultdict(list)
    for i, r in enumerate(results):
        if r.get("image_id") not in patches:
            raise DotaFormatError(
                f"{results_json}: detection {i} has image_id {r.get('image_id')!r}, not a patch"
            )
        cat = r["category_id"]
        if dataset_id_to_contiguous is not None:
            if cat not in dataset_id_to_contiguous:
                raise DotaFormatError(f"{results_json}: detection {i} has unknown category_id {cat!r}")
            cat = dataset_id_to_contiguous[cat]
        x, y, w, h = r["bbox"]
        grouped[r["image_id"]].append((x, y, x + w, y + h, r["score"], cat))
    out: Dict[str, List[ImageDetections]] = defaultdict(list)
    for image_id, rows in grouped.items():
        d = patches[image_id]
        arr = np.array(rows, dtype=np.float64)
        boxes = patch_to_image(arr[:, :4], d["patch_origin"], d["patch_scale"])
        out[d["source_image"]].append(ImageDetections(boxes, arr[:, 4], arr[:, 5].astype(np.int64)))
    return dict(out)


def merge_and_evaluate_coco_results(
    dataset: str,
    results_json: Union[str, Path],
    output_dir: Union[str, Path],
    labels_dir: Optional[Union[str, Path]] = None,
    nms_thresh: float = DEFAULT_NMS_THRESH,
    use_07_metric: bool = True,
) -> Optional[dict]:
    """What tools/dota_merge_eval.py does: merge a patch set's COCO results, write Task2 files and (with
    ground truth from ``labels_dir``, or else the one recorded in the patch set)
    ``output_dir/dota_eval.json``.

    dataset: a registered patch-set name, or a patch-set folder. Returns the result of
    ``evaluate_full_images``.
    """
    if os.path.isdir(dataset):
        root, classes, mapping = dataset, read_split_info(dataset)["classes"], None
        dicts = load_dota_patches(root, classes)
    elif dataset in DatasetCatalog.list():
        meta = MetadataCatalog.get(dataset)
        if meta.get("evaluator_type") != "dota_patches":
            raise ValueError(
                f"Dataset {dataset!r} is not a DOTA patch set (evaluator_type != 'dota_patches')"
            )
        root, classes = meta.dota_root, meta.thing_classes
        mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
        dicts = DatasetCatalog.get(dataset)
    else:
        raise FileNotFoundError(f"{dataset!r} is neither a patch-set folder nor a registered dataset name")
    info = read_split_info(root)
    records = read_image_records(root, info)
    detections = load_coco_detections(results_json, dicts, mapping)
    if labels_dir is not None:
        ground_truth = ground_truth_from_labels(labels_dir, info["images"], classes)
    elif info["has_labels"]:
        ground_truth = ground_truth_from_records(records, classes)
    else:
        ground_truth = None
    return evaluate_full_images(
        detections, records, classes, output_dir, ground_truth, True, nms_thresh, use_07_metric
    )


class DOTAFullImageEvaluator(DatasetEvaluator):
    """Task-2 AP of a DOTA patch set on its merged full images, and the submission files.

    Needs dataset dicts from ``register_dota`` (inputs keep ``source_image``, ``patch_origin``,
    ``patch_scale``). Returns ``{"dota_task2": {"mAP": ..., "AP-<class>": ...}}`` in percent for labelled
    splits, ``{}`` otherwise. ``write_submission`` (default: only for splits without labels) writes
    ``Task2_<class>.txt`` to output_dir; ground truth is the one recorded in the patch set, or read from
    ``labels_dir`` when given.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        nms_thresh: float = DEFAULT_NMS_THRESH,
        write_submission: Optional[bool] = None,
        labels_dir: Optional[str] = None,
        use_07_metric: bool = True,
    ):
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("evaluator_type") != "dota_patches" or not meta.get("dota_root"):
            raise ValueError(f"Dataset {dataset_name!r} was not registered by ds2d2.data.dota.register_dota")
        self._root, self._classes = meta.dota_root, list(meta.thing_classes)
        self._has_labels = bool(meta.get("has_labels", True)) or labels_dir is not None
        self._write_submission = not self._has_labels if write_submission is None else write_submission
        if self._write_submission and output_dir is None:
            raise ValueError(
                f"DOTAFullImageEvaluator({dataset_name!r}): writing Task2 files needs an output_dir"
            )
        self._output_dir, self._labels_dir = output_dir, labels_dir
        self._nms_thresh, self._use_07_metric = nms_thresh, use_07_metric
        self._parts: Dict[str, List[ImageDetections]] = defaultdict(list)
        self._num_patches = 0

    def reset(self):
        self._parts = defaultdict(list)
        self._num_patches = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            missing = [k for k in ("source_image", "patch_origin", "patch_scale") if k not in inp]
            if missing:
                raise KeyError(
                    f"Input {inp.get('file_name')} lacks {missing}: not a DOTA patch set's dataset dict"
                )
            instances = out["instances"].to("cpu")
            boxes = patch_to_image(
                instances.pred_boxes.tensor.numpy(), inp["patch_origin"], inp["patch_scale"]
            )
            det = ImageDetections(boxes, instances.scores.numpy(), instances.pred_classes.numpy())
            self._parts[inp["source_image"]].append(det)
            self._num_patches += 1

    def evaluate(self):
        gathered = comm.gather((dict(self._parts), self._num_patches), dst=0)
        if not comm.is_main_process():
            return {}
        parts: Dict[str, List[ImageDetections]] = defaultdict(list)
        for worker_parts, _ in gathered:
            for stem, dets in worker_parts.items():
                parts[stem].extend(dets)
        info = read_split_info(self._root)
        records = read_image_records(self._root, info)
        total = sum(len(r["patches"]) for r in records)
        seen = sum(n for _, n in gathered)
        if seen != total:
            logger.warning(f"DOTA full-image evaluation saw {seen} of the {total} patches of {self._root}")
        ground_truth = None
        if self._labels_dir is not None:
            ground_truth = ground_truth_from_labels(self._labels_dir, info["images"], self._classes)
        elif self._has_labels:
            ground_truth = ground_truth_from_records(records, self._classes)
        result = evaluate_full_images(
            parts,
            records,
            self._classes,
            self._output_dir,
            ground_truth,
            self._write_submission,
            self._nms_thresh,
            self._use_07_metric,
        )
        if result is None:
            return {}
        task2 = {"mAP": 100 * result["mAP"]}
        task2.update({f"AP-{name}": 100 * ap for name, ap in result["AP"].items()})
        return {"dota_task2": task2}
