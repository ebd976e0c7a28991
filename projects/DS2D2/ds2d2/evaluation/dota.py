"""DOTA full-image results: Task-2 AP and submission files, and for both tasks the merging of a patch set's
detections, its scoring and the evaluator.

Task 2 (the DOTA devkit's ``dota_evaluation_task2.py``, re-implemented): horizontal boxes, the rules of
``dota_ap`` with the devkit's "+1 pixel" box sizes in the IoU (> 0.5), VOC07 11-point AP by default
(``use_07_metric=False``: area under the interpolated PR curve), mAP = mean over the classes with objects.
Ground-truth boxes are the polygons' bounds (the devkit truncates them to integers; here they stay exact).
Submission: ``Task2_<class>.txt`` with lines ``image_name score xmin ymin xmax ymax``, one file per class.

Task 1 (oriented boxes, polygon IoU): ``dota_task1``. Merging patch detections into full-image ones:
``dota_merge``. A patch set's task follows its box kind (metadata ``box_kind``, ``register_dota(...,
boxes=)``): "horizontal" -> Task 2, "oriented" -> Task 1; saved results say theirs by their box width.
"""

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.dota import (
    DotaFormatError,
    load_dota_patches,
    parse_label_folder,
    read_image_records,
    read_split_info,
)
from .dota_ap import devkit_average_precision
from .dota_merge import ImageDetections, boxes_to_image, merge_detections_of_kind
from .dota_task1 import (
    polygon_detections,
    polygon_ground_truth_from_labels,
    polygon_ground_truth_from_records,
    task1_average_precision,
    write_task1_files,
)

__all__ = [
    "GroundTruth",
    "task2_average_precision",
    "write_task2_files",
    "ground_truth_from_records",
    "ground_truth_from_labels",
    "task_of_dataset",
    "evaluate_full_images",
    "load_coco_detections",
    "merge_and_evaluate_coco_results",
    "DOTAFullImageEvaluator",
]

logger = logging.getLogger(__name__)

TASKS = (1, 2)
EVAL_FILES = {1: "dota_task1_eval.json", 2: "dota_eval.json"}  # task -> scores written to output_dir
BOX_WIDTH = {1: 5, 2: 4}  # task -> box width of its detections: XYWHA_ABS, XYXY_ABS


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


def task2_average_precision(
    detections: Mapping[str, ImageDetections],
    ground_truth: Mapping[str, GroundTruth],
    classes: Sequence[str],
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
) -> Dict[str, float]:
    """Per-class Task-2 AP in [0, 1] (NaN for a class without non-difficult objects) over the images of
    ``ground_truth``; a detection on an image without ground truth is an error."""
    return devkit_average_precision(
        detections, ground_truth, classes, _iou_plus_one, iou_thresh, use_07_metric
    )


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
    return {
        stem: _ground_truth([(o.bbox, o.category, o.difficult, o.line) for o in objs], class_ids, str(path))
        for stem, (path, objs) in parse_label_folder(labels_dir, images).items()
    }


def task_of_dataset(dataset_name: str) -> int:
    """1 for a DOTA patch set registered with oriented boxes (metadata ``box_kind`` "oriented"), else 2."""
    return 1 if MetadataCatalog.get(dataset_name).get("box_kind", "horizontal") == "oriented" else 2


def _check_task(task: int) -> int:
    if task not in TASKS:
        raise ValueError(f"DOTA task must be 1 (oriented boxes) or 2 (horizontal boxes), got {task!r}")
    return task


def _ground_truth_of(
    task: int, root: Union[str, Path], info: dict, records: Sequence[dict], classes: Sequence[str],
    labels_dir: Optional[Union[str, Path]],
) -> Optional[dict]:
    """The full images' ground truth for ``task``: from ``labels_dir`` when given, else the one recorded in
    the patch set at ``root``, or None for a split without labels."""
    if labels_dir is not None:
        reader = polygon_ground_truth_from_labels if task == 1 else ground_truth_from_labels
        return reader(labels_dir, info["images"], classes)
    if not info["has_labels"]:
        return None
    if task == 1:
        try:
            return polygon_ground_truth_from_records(records, classes)
        except KeyError as e:
            raise KeyError(f"{root}: {e.args[0]}") from None
    return ground_truth_from_records(records, classes)


def evaluate_full_images(
    patch_detections: Mapping[str, Sequence[ImageDetections]],
    records: Sequence[dict],
    classes: Sequence[str],
    output_dir: Optional[Union[str, Path]] = None,
    ground_truth: Optional[Mapping[str, tuple]] = None,
    write_submission: bool = False,
    nms_thresh: Optional[float] = None,
    use_07_metric: bool = True,
    task: int = 2,
) -> Optional[dict]:
    """Merge the detections (image pixels, per source image) of a patch set and score/write them.

    task 2: boxes (N, 4) xyxy, ground truth ``GroundTruth``; task 1: boxes (N, 5) XYWHA_ABS, ground truth
    with polygons (``dota_task1``). nms_thresh: the merging IoU (None: the devkit's, 0.3 for Task 2, 0.1 for
    Task 1). records: the patch set's image records (sizes, names). With ``ground_truth``, returns ``{"mAP":
    float, "AP": {class: float}}`` (in [0, 1]) and writes it to ``output_dir/dota_eval.json`` (Task 2) or
    ``dota_task1_eval.json`` (Task 1); otherwise returns None. ``write_submission`` writes
    ``Task<task>_<class>.txt`` into ``output_dir``.
    """
    _check_task(task)
    unknown = sorted(set(patch_detections) - {r["image"] for r in records})
    if unknown:
        raise KeyError(f"Detections for images that are not in the patch set: {unknown[:5]}")
    merged = {
        r["image"]: merge_detections_of_kind(
            patch_detections.get(r["image"], []), r["width"], r["height"], task == 1, nms_thresh)
        for r in records
    }
    if task == 1:
        merged = {stem: polygon_detections(det) for stem, det in merged.items()}
    if write_submission:
        if output_dir is None:
            raise ValueError("write_submission needs an output_dir")
        (write_task1_files if task == 1 else write_task2_files)(merged, classes, output_dir)
    if ground_truth is None:
        return None
    score = task1_average_precision if task == 1 else task2_average_precision
    aps = score(merged, ground_truth, classes, use_07_metric=use_07_metric)
    valid = [v for v in aps.values() if not math.isnan(v)]
    result = {"mAP": float(np.mean(valid)) if valid else math.nan, "AP": aps}
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        clean = {"mAP": _json_number(result["mAP"]), "AP": {k: _json_number(v) for k, v in aps.items()}}
        with open(Path(output_dir) / EVAL_FILES[task], "w") as f:
            json.dump(clean, f, indent=1)
    return result


def _json_number(x: float) -> Optional[float]:
    return None if math.isnan(x) else x


def load_coco_detections(
    results_json: Union[str, Path],
    dataset_dicts: Sequence[dict],
    dataset_id_to_contiguous: Optional[dict] = None,
) -> Tuple[Dict[str, List[ImageDetections]], Optional[int]]:
    """Detectron2 COCO results (``coco_instances_results.json``) of a patch set -> detections in original
    image pixels, grouped by source image, and the task their boxes are for (None for no detections).

    ``bbox`` is [x, y, w, h] (COCOEvaluator: Task 2) or [cx, cy, w, h, angle] (RotatedCOCOEvaluator: Task
    1), the same for every detection. ``image_id`` is the patch's dataset-dict ``image_id``; ``category_id``
    is the contiguous id, or a dataset id mapped through ``dataset_id_to_contiguous`` (metadata
    ``thing_dataset_id_to_contiguous_id``) when given.
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
    width = len(results[0].get("bbox", [])) if results else None
    if width not in (None, 4, 5):
        raise DotaFormatError(f"{results_json}: detection 0 has a bbox of {width} numbers, not 4 or 5")
    grouped: Dict[object, list] = defaultdict(list)
    for i, r in enumerate(results):
        if r.get("image_id") not in patches:
            raise DotaFormatError(
                f"{results_json}: detection {i} has image_id {r.get('image_id')!r}, not a patch"
            )
        if len(r.get("bbox", [])) != width:
            raise DotaFormatError(
                f"{results_json}: detection {i} has a bbox of {len(r.get('bbox', []))} numbers, detection 0 "
                f"of {width}: horizontal and rotated boxes are mixed"
            )
        cat = r["category_id"]
        if dataset_id_to_contiguous is not None:
            if cat not in dataset_id_to_contiguous:
                raise DotaFormatError(f"{results_json}: detection {i} has unknown category_id {cat!r}")
            cat = dataset_id_to_contiguous[cat]
        box = list(r["bbox"])
        if width == 4:
            box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
        grouped[r["image_id"]].append(box + [r["score"], cat])
    out: Dict[str, List[ImageDetections]] = defaultdict(list)
    for image_id, rows in grouped.items():
        d = patches[image_id]
        arr = np.array(rows, dtype=np.float64)
        boxes = boxes_to_image(arr[:, :width], d["patch_origin"], d["patch_scale"])
        classes = arr[:, width + 1].astype(np.int64)
        out[d["source_image"]].append(ImageDetections(boxes, arr[:, width], classes))
    task = None if width is None else (1 if width == 5 else 2)
    return dict(out), task


def merge_and_evaluate_coco_results(
    dataset: str,
    results_json: Union[str, Path],
    output_dir: Union[str, Path],
    labels_dir: Optional[Union[str, Path]] = None,
    nms_thresh: Optional[float] = None,
    use_07_metric: bool = True,
    task: Optional[int] = None,
) -> dict:
    """What tools/dota_merge_eval.py does: merge a patch set's COCO results, write the Task<task> files and
    (with ground truth from ``labels_dir``, or else the one recorded in the patch set) the scores
    (``evaluate_full_images``).

    dataset: a registered patch-set name, or a patch-set folder. task: 1 or 2; None: the results' own (4
    numbers a box: Task 2, 5: Task 1), or the dataset's box kind when there are no detections; a task the
    results cannot serve is an error. Returns ``{"task": 1 or 2}``, with the ``"mAP"`` and ``"AP"`` of
    ``evaluate_full_images`` when there is ground truth.
    """
    meta_task = 2
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
        meta_task = task_of_dataset(dataset)
    else:
        raise FileNotFoundError(f"{dataset!r} is neither a patch-set folder nor a registered dataset name")
    detections, results_task = load_coco_detections(results_json, dicts, mapping)
    if task is not None and results_task is not None and _check_task(task) != results_task:
        raise ValueError(
            f"{results_json} holds {'rotated' if results_task == 1 else 'horizontal'} boxes (Task "
            f"{results_task}), not the {'rotated' if task == 1 else 'horizontal'} boxes Task {task} scores: "
            f"use --task {results_task} (or leave --task out)"
        )
    task = task if task is not None else (results_task or meta_task)
    info = read_split_info(root)
    records = read_image_records(root, info)
    ground_truth = _ground_truth_of(task, root, info, records, classes, labels_dir)
    result = evaluate_full_images(
        detections, records, classes, output_dir, ground_truth, True, nms_thresh, use_07_metric, task
    )
    return {"task": task, **(result or {})}


class DOTAFullImageEvaluator(DatasetEvaluator):
    """DOTA Task-1 or Task-2 AP of a patch set on its merged full images, and the submission files.

    Needs dataset dicts from ``register_dota`` (inputs keep ``source_image``, ``patch_origin``,
    ``patch_scale``). task: 1 (predictions ``pred_boxes`` are RotatedBoxes, scored by polygon IoU), 2
    (Boxes); None: the dataset's box kind (``task_of_dataset``). Returns ``{"dota_task<task>": {"mAP": ...,
    "AP-<class>": ...}}`` in percent for labelled splits, ``{}`` otherwise. ``write_submission`` (default:
    only for splits without labels) writes ``Task<task>_<class>.txt`` to output_dir; ground truth is the one
    recorded in the patch set, or read from ``labels_dir`` when given. nms_thresh: the merging IoU (None: 0.3
    for Task 2, 0.1 for Task 1, the devkit's).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        nms_thresh: Optional[float] = None,
        write_submission: Optional[bool] = None,
        labels_dir: Optional[str] = None,
        use_07_metric: bool = True,
        task: Optional[int] = None,
    ):
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("evaluator_type") != "dota_patches" or not meta.get("dota_root"):
            raise ValueError(f"Dataset {dataset_name!r} was not registered by ds2d2.data.dota.register_dota")
        self._task = task_of_dataset(dataset_name) if task is None else _check_task(task)
        self._root, self._classes = meta.dota_root, list(meta.thing_classes)
        self._has_labels = bool(meta.get("has_labels", True)) or labels_dir is not None
        self._write_submission = not self._has_labels if write_submission is None else write_submission
        if self._write_submission and output_dir is None:
            raise ValueError(
                f"DOTAFullImageEvaluator({dataset_name!r}): writing Task{self._task} files needs an "
                "output_dir"
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
            boxes = instances.pred_boxes.tensor.numpy()
            if boxes.shape[1] != BOX_WIDTH[self._task]:
                raise ValueError(self._wrong_boxes_message(boxes.shape[1], inp.get("file_name")))
            boxes = boxes_to_image(boxes, inp["patch_origin"], inp["patch_scale"])
            det = ImageDetections(boxes, instances.scores.numpy(), instances.pred_classes.numpy())
            self._parts[inp["source_image"]].append(det)
            self._num_patches += 1

    def _wrong_boxes_message(self, width: int, file_name: Optional[str]) -> str:
        kinds = {4: "horizontal boxes (Boxes)", 5: "rotated boxes (RotatedBoxes)"}
        other_kind = "horizontal" if self._task == 1 else "oriented"
        return (
            f"DOTA Task {self._task} scores {kinds[BOX_WIDTH[self._task]]}, but the model predicted "
            f"{kinds.get(width, f'boxes of {width} numbers')} for {file_name}: evaluate a "
            f"{'rotated' if self._task == 1 else 'horizontal'} detector on this patch set, or register it "
            f"with boxes={other_kind!r} (DOTAFullImageEvaluator task={3 - self._task})"
        )

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
        if self._has_labels:
            ground_truth = _ground_truth_of(
                self._task, self._root, info, records, self._classes, self._labels_dir
            )
        result = evaluate_full_images(
            parts,
            records,
            self._classes,
            self._output_dir,
            ground_truth,
            self._write_submission,
            self._nms_thresh,
            self._use_07_metric,
            self._task,
        )
        if result is None:
            return {}
        scores = {"mAP": 100 * result["mAP"]}
        scores.update({f"AP-{name}": 100 * ap for name, ap in result["AP"].items()})
        return {f"dota_task{self._task}": scores}
