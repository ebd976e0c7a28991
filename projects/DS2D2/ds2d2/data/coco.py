"""COCO-format detection datasets (one JSON + an image folder), with ``register_coco_instances`` semantics.

What Detectron2's ``register_coco_instances(name, metadata, json_file, image_root)`` registers (the
metadata json_file, image_root, evaluator_type "coco"; dicts from ``load_coco_json``; classes = the categories
sorted by id), with these differences: the JSON is checked when the dataset is registered, so a file that
is not COCO (or not UTF-8, or nested too deeply to parse), annotations of unknown images or categories,
duplicate ids, malformed boxes (negative width or height) or missing image files fail at once with the
entry named (not with a KeyError or an assertion while training); an image ``file_name`` that leads
outside the image folder (``../``, an absolute path, a symbolic link to elsewhere) is refused unless
explicitly allowed; ``thing_classes`` is known from registration on; and valid boxes are handled as the
VOC loader does: clipped to their image, and dropped when empty after clipping (or of zero width or height
in the file), both counted in the log line naming the JSON. Evaluation (COCOEvaluator) reads the ground
truth from the JSON itself, as for any COCO dataset.
"""

import json
import logging
import math
import os
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from .voc import register_dataset

__all__ = [
    "check_coco_json",
    "load_coco_detection",
    "register_coco_detection",
]

logger = logging.getLogger(__name__)

_REQUIRED = ("images", "annotations", "categories")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _read_json(json_file: str) -> dict:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file {json_file!r} does not exist")
    with open(json_file, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{json_file}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); JSON files are "
            "UTF-8: re-save it as UTF-8"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(
            f"{json_file}: nested too deeply to parse (lists or objects inside each other thousands of "
            "times); a COCO file nests a few levels"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_file}: not a COCO detection file: its top level is a {type(data).__name__} (a results "
            f"file?), expected an object with {', '.join(repr(k) for k in _REQUIRED)}"
        )
    missing = [k for k in _REQUIRED if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(
            f"{json_file}: not a COCO detection file: no list {', '.join(repr(k) for k in missing)} at its "
            f"top level (found keys: {sorted(data)})"
        )
    return data


def _check_categories(json_file: str, categories: list) -> List[str]:
    """Class names in category-id order; ids and names must be unique."""
    if not categories:
        raise ValueError(f"{json_file}: 'categories' is empty")
    names: Dict[int, str] = {}
    for i, cat in enumerate(categories):
        where = f"{json_file}: categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise ValueError(f"{where} needs an integer 'id', got {cat!r}")
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            raise ValueError(f"{where} (id {cat['id']}) needs a non-empty 'name'")
        if cat["id"] in names:
            raise ValueError(f"{where}: category id {cat['id']} is used twice")
        names[cat["id"]] = cat["name"]
    classes = [names[i] for i in sorted(names)]
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(f"{json_file}: category names {twice} are used by several category ids")
    return classes


def _check_inside(where: str, file_name: str, image_root: str) -> None:
    """Refuse a ``file_name`` that leads outside ``image_root``: an absolute path, ``../`` or a symbolic link
    (of the file or a folder on its way) to elsewhere; the paths are compared after resolving links."""
    root = os.path.realpath(image_root)
    target = os.path.realpath(os.path.join(image_root, file_name))
    if os.path.isabs(file_name) or os.path.commonpath([root, target]) != root:
        raise ValueError(
            f"{where}: file_name {file_name!r} leads outside the image folder {image_root!r} (to "
            f"{target!r}); move the image into the folder, or allow images outside it explicitly "
            "(DATASETS.OWN.<name>.ALLOW_OUTSIDE_IMAGES True, or register_coco_detection(..., "
            "allow_outside_images=True))"
        )


def _check_images(json_file: str, images: list, image_root: str, allow_outside: bool) -> set:
    """Image ids; every entry needs id, file_name, width, height, and its file in ``image_root`` (below it
    unless ``allow_outside``)."""
    ids = set()
    missing = []
    for i, img in enumerate(images):
        where = f"{json_file}: images[{i}]"
        if not isinstance(img, dict) or not (_is_int(img.get("id")) or isinstance(img.get("id"), str)):
            raise ValueError(f"{where} needs an 'id' (integer or string), got {img!r}")
        if img["id"] in ids:
            raise ValueError(f"{where}: image id {img['id']!r} is used twice")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise ValueError(f"{where} (id {img['id']!r}) needs a non-empty 'file_name'")
        for key in ("width", "height"):
            if not _is_number(img.get(key)) or img[key] <= 0 or int(img[key]) != img[key]:
                raise ValueError(
                    f"{where} (id {img['id']!r}) needs a positive integer {key!r}, got {img.get(key)!r}"
                )
        ids.add(img["id"])
        if not allow_outside:
            _check_inside(f"{where} (id {img['id']!r})", img["file_name"], image_root)
        if not os.path.isfile(os.path.join(image_root, img["file_name"])):
            missing.append(img["file_name"])
    if missing:
        raise FileNotFoundError(
            f"{json_file}: {len(missing)} of its {len(images)} images are not in the image folder "
            f"{image_root!r} (e.g. {missing[:3]})"
        )
    return ids


def _check_annotations(json_file: str, annotations: list, image_ids: set, category_ids: set) -> None:
    seen = set()
    for i, ann in enumerate(annotations):
        where = f"{json_file}: annotations[{i}]"
        if not isinstance(ann, dict) or "id" not in ann:
            raise ValueError(f"{where} needs an 'id', got {ann!r}")
        where += f" (id {ann['id']!r})"
        if ann["id"] in seen:
            raise ValueError(f"{where}: annotation id used twice")
        seen.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            raise ValueError(
                f"{where}: image_id {ann.get('image_id')!r} is not the id of any entry of 'images'"
            )
        if ann.get("category_id") not in category_ids:
            raise ValueError(
                f"{where}: category_id {ann.get('category_id')!r} is not the id of any entry of 'categories'"
            )
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] (finite numbers), got {box!r}")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(
                f"{where}: 'bbox' {box!r} has a negative width or height; COCO boxes are [x, y, width, "
                "height] (a box given as [x0, y0, x1, y1]?)"
            )
        if not _is_number(ann.get("area")):
            raise ValueError(
                f"{where}: needs a numeric 'area' (COCO's evaluation reads it; for boxes, width * height)"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")


def check_coco_json(
    json_file: str, image_root: str, allow_outside_images: bool = False
) -> Tuple[List[str], Dict[int, int], int]:
    """Check a COCO detection JSON and its images; return (class names by category id, {category id: index},
    number of annotations).

    Raises FileNotFoundError / ValueError naming the file and the offending entry (``images[3]``,
    ``annotations[12] (id 40)``, ...). An image ``file_name`` leading outside ``image_root`` is an error
    unless ``allow_outside_images``.
    """
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"COCO image folder {image_root!r} does not exist")
    data = _read_json(json_file)
    classes = _check_categories(json_file, data["categories"])
    category_ids = sorted(c["id"] for c in data["categories"])
    image_ids = _check_images(json_file, data["images"], image_root, allow_outside_images)
    _check_annotations(json_file, data["annotations"], image_ids, set(category_ids))
    return classes, {cat_id: i for i, cat_id in enumerate(category_ids)}, len(data["annotations"])


def load_coco_detection(json_file: str, image_root: str, dataset_name: str) -> List[dict]:
    """``load_coco_json`` dicts with every box in XYXY_ABS clipped to its image; boxes empty after clipping
    (or of zero width or height in the file) are dropped, and both are counted in one log line naming
    ``json_file``."""
    dicts = load_coco_json(json_file, image_root, dataset_name)
    clipped = dropped = kept = 0
    for record in dicts:
        width, height = record["width"], record["height"]
        annotations = []
        for ann in record["annotations"]:
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            inside = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                      min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                dropped += 1
                continue
            clipped += inside != list(box)
            annotations.append(dict(ann, bbox=inside, bbox_mode=BoxMode.XYXY_ABS))
        kept += len(annotations)
        record["annotations"] = annotations
    logger.info(
        f"Loaded {len(dicts)} images with {kept} boxes from {json_file}; clipped {clipped} boxes to their "
        f"image, dropped {dropped} boxes empty after clipping (or of zero size in the file)."
    )
    return dicts


def register_coco_detection(
    name: str,
    json_file: str,
    image_root: str,
    classes: Optional[Sequence[str]] = None,
    *,
    allow_outside_images: bool = False,
) -> List[str]:
    """Register a COCO detection JSON as dataset ``name`` (checked now, see :func:`check_coco_json`); returns
    the class names (the categories in id order; ``classes``, if given, must equal them).

    Metadata: json_file, image_root, evaluator_type "coco", thing_classes and
    thing_dataset_id_to_contiguous_id (what ``load_coco_json`` sets), and num_annotations (0: an images-only
    file, which ``ds2d2.checks.check_train_datasets_have_boxes`` keeps out of training). Registering the same
    again is a no-op. ``allow_outside_images``: accept image file_names that lead outside ``image_root``.
    """
    found, id_map, num_annotations = check_coco_json(json_file, image_root, allow_outside_images)
    if classes is not None and list(classes) != found:
        raise ValueError(
            f"classes {list(classes)} differ from the categories of {json_file} (by id): {found}"
        )
    metadata = {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": "coco",
        "thing_classes": found,
        "thing_dataset_id_to_contiguous_id": id_map,
        "num_annotations": num_annotations,
    }
    register_dataset(name, partial(load_coco_detection, json_file, image_root, name), metadata, replace=False)
    return found
