"""DOTA: raw reading of the release layout, and registration of the patch sets written by ``dota_split``.

Release layout (one folder per split)::

    images/NAME.png     (or .jpg .jpeg .tif .tiff .bmp)
    labelTxt/NAME.txt   optional header lines ``imagesource:...`` / ``gsd:...``, then one object per line:
                        ``x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]`` (pixels; difficult 0/1, default 0)

A patch set (``datasets/prepare_dota.py`` output) holds ``dota_split.json`` (settings, class list, source
image names), ``annotations/NAME.json`` (one record per source image: size, its objects, and every patch with
its origin, scale and boxes) and ``images/*.png`` (the patches). ``register_dota(name, root)`` needs nothing
else. One patch set serves both box kinds: ``boxes="horizontal"`` (XYXY_ABS, the default) or ``"oriented"``
(XYWHA_ABS: cx, cy, w, h, angle in degrees CCW, the convention of ``ds2d2.rotated.boxes``).

Label checks: a line that is not 9 or 10 fields, a non-numeric or non-finite coordinate, an unknown category
or polygon bounds of zero width or height is an error naming ``file:line``. Read for oriented boxes, a
polygon must also be a usable quadrilateral (``quadrilateral_problem``: not collinear, not self-intersecting);
for horizontal boxes only its bounds are used, so such polygons are accepted as before.
"""

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.structures import BoxMode

from ds2d2_onnx import image_io
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS, ImageReadError

from ..rotated.boxes import quadrilateral_problem
from .voc import BOX_KINDS, IMAGE_EXTENSIONS, check_box_kind, register_dataset

__all__ = [
    "DOTA_V1_CLASSES",
    "DOTA_V1_5_CLASSES",
    "DotaFormatError",
    "DotaObject",
    "parse_dota_labels",
    "parse_label_folder",
    "find_dota_images",
    "pair_dota_files",
    "read_image",
    "read_image_size",
    "read_split_info",
    "read_image_records",
    "load_dota_patches",
    "register_dota",
    "register_all_dota",
]

# The order of the authors' (mmdetection) DOTA configs; v1.5 appends container-crane.
# fmt: off
DOTA_V1_CLASSES = (
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
    "roundabout", "soccer-ball-field", "swimming-pool",
)
# fmt: on
DOTA_V1_5_CLASSES = DOTA_V1_CLASSES + ("container-crane",)

HEADER_PREFIXES = ("imagesource:", "gsd:")
SPLIT_INFO_FILE = "dota_split.json"
SPLIT_FORMAT = "ds2d2-dota-split/2"  # /2: patch annotations also hold "polygon" and "rbox"
HORIZONTAL_ONLY_FORMATS = ("ds2d2-dota-split/1",)  # readable, for horizontal boxes only
RECORDS_DIR = "annotations"
PATCHES_DIR = "images"


class DotaFormatError(ValueError):
    """Bad DOTA input; the message names the file (and line or object)."""


@dataclass(frozen=True)
class DotaObject:
    """One labelled object of a DOTA label file.

    polygon: (x1, y1, ..., x4, y4) in the image's pixels; line: 1-based line number in its label file.
    """

    polygon: Tuple[float, ...]
    category: str
    difficult: int
    line: int

    @property
    def bbox(self) -> Tuple[float, float, float, float]:
        """Horizontal box (x0, y0, x1, y1): the polygon's bounds, in pixels."""
        xs, ys = self.polygon[0::2], self.polygon[1::2]
        return (min(xs), min(ys), max(xs), max(ys))


def _parse_line(
    fields: List[str], classes: Optional[Sequence[str]], where: str, line_no: int, oriented: bool
) -> DotaObject:
    if len(fields) not in (9, 10):
        raise DotaFormatError(
            f"{where}: expected 9 or 10 fields 'x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]', "
            f"got {len(fields)}"
        )
    try:
        polygon = tuple(float(v) for v in fields[:8])
    except ValueError:
        raise DotaFormatError(f"{where}: non-numeric coordinate in {' '.join(fields[:8])!r}") from None
    if not all(np.isfinite(polygon)):
        raise DotaFormatError(f"{where}: non-finite coordinate in {' '.join(fields[:8])!r}")
    category = fields[8]
    if classes is not None and category not in classes:
        raise DotaFormatError(f"{where}: unknown category {category!r} (known: {', '.join(classes)})")
    difficult = 0
    if len(fields) == 10:
        if not fields[9].isdigit():
            raise DotaFormatError(f"{where}: difficult must be a non-negative integer, got {fields[9]!r}")
        difficult = int(fields[9])
    obj = DotaObject(polygon, category, difficult, line_no)
    x0, y0, x1, y1 = obj.bbox
    if x1 <= x0 or y1 <= y0:
        raise DotaFormatError(f"{where}: degenerate polygon (its bounds have zero width or height)")
    problem = quadrilateral_problem(polygon) if oriented else None
    if problem is not None:
        raise DotaFormatError(f"{where}: {problem} (read for oriented boxes)")
    return obj


def parse_dota_labels(
    path: Union[str, Path],
    classes: Optional[Sequence[str]] = None,
    skipped: Optional[List[str]] = None,
    boxes: str = "horizontal",
) -> List[DotaObject]:
    """Objects of one DOTA label file, in file order.

    Header lines (``imagesource:``, ``gsd:``) and blank lines are not objects. A bad line raises
    :class:`DotaFormatError` naming ``path:line``, unless ``skipped`` is a list: then the message is appended
    to it and the line is left out (the caller reports them). ``classes=None`` accepts any category. A line
    that is not UTF-8 is always an error (the file is not a label file). ``boxes="oriented"`` also refuses
    collinear and self-intersecting polygons (see the module docstring).
    """
    oriented = check_box_kind(boxes, "boxes") == "oriented"
    objects = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise DotaFormatError(
                    f"{path}:{line_no}: not UTF-8 text ({raw[:40]!r}); DOTA label files are ASCII/UTF-8"
                ) from None
            if not text or text.startswith(HEADER_PREFIXES):
                continue
            try:
                objects.append(_parse_line(text.split(), classes, f"{path}:{line_no}", line_no, oriented))
            except DotaFormatError as e:
                if skipped is None:
                    raise
                skipped.append(str(e))
    return objects


def parse_label_folder(
    labels_dir: Union[str, Path], stems: Sequence[str]
) -> Dict[str, Tuple[Path, List[DotaObject]]]:
    """stem -> (label file, its objects) for the DOTA label files ``labels_dir/<stem>.txt`` of ``stems``;
    FileNotFoundError naming a missing one. Objects as ``parse_dota_labels`` reads them (horizontal mode)."""
    labels = {}
    for stem in stems:
        path = Path(labels_dir) / f"{stem}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no label file for image {stem}")
        labels[stem] = (path, parse_dota_labels(path))
    return labels


def find_dota_images(images_dir: Union[str, Path]) -> Dict[str, Path]:
    """``{stem: path}`` of the images in a folder; other files (except hidden ones) and duplicate stems are
    errors."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"Image folder {images_dir} does not exist")
    found: Dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            raise DotaFormatError(
                f"{path}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"
            )
        if path.stem in found:
            raise DotaFormatError(f"{path}: same name as {found[path.stem]}; image names must be unique")
        found[path.stem] = path
    return found


def pair_dota_files(src: Union[str, Path]) -> List[Tuple[str, Path, Optional[Path]]]:
    """``(stem, image, label file or None)`` for every image of a release-layout folder, sorted by stem.

    Without ``src/labelTxt`` every label is None (e.g. the test split). With it, an image without its label
    file, or a label file without its image, is an error listing the names.
    """
    src = Path(src)
    images = find_dota_images(src / "images")
    label_dir = src / "labelTxt"
    if not label_dir.is_dir():
        return [(stem, path, None) for stem, path in images.items()]
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".txt" and not p.name.startswith(".")}
    problems = [
        f"{images[s]}: no label file {label_dir / (s + '.txt')}" for s in sorted(set(images) - set(labels))
    ]
    problems += [
        f"{labels[s]}: no image {s}.* in {src / 'images'}" for s in sorted(set(labels) - set(images))
    ]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DotaFormatError(f"Images and label files of {src} do not match:\n  {shown}{more}")
    return [(stem, path, labels[stem]) for stem, path in images.items()]


def read_image(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as a uint8 BGR array of shape (H, W, 3), through the project's one reader
    (``ds2d2_onnx.image_io``); a missing, undecodable or truncated file, or one of more than ``max_pixels``
    pixels (refused from its header), is a DotaFormatError naming it."""
    try:
        return image_io.read_image(path, max_pixels)
    except ImageReadError as e:
        raise DotaFormatError(str(e)) from None


def read_image_size(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """(width, height) of an image from its header only; DotaFormatError naming the file for what
    :func:`read_image` would refuse from the header (unsupported, unreadable, more than ``max_pixels``)."""
    try:
        return image_io.image_size(path, max_pixels)
    except ImageReadError as e:
        raise DotaFormatError(str(e)) from None


# ------------------------------------------------------------------------------------------------------------
# Patch sets written by ds2d2.data.dota_split
# ------------------------------------------------------------------------------------------------------------


def read_split_info(root: Union[str, Path]) -> dict:
    """``root/dota_split.json``: classes, patch_size, gap, rates, min_inside, has_labels, images."""
    path = Path(root) / SPLIT_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a DOTA patch set (make one with datasets/prepare_dota.py)"
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("format") not in (SPLIT_FORMAT,) + HORIZONTAL_ONLY_FORMATS:
        raise DotaFormatError(f"{path}: format {info.get('format')!r} is not {SPLIT_FORMAT!r}")
    return info


def read_image_records(root: Union[str, Path], info: Optional[dict] = None) -> List[dict]:
    """Per-source-image records of a patch set, in the order of ``info['images']``.

    Each record: ``image`` (stem), ``width``, ``height`` (original pixels), ``objects`` (list of {bbox xyxy,
    category, difficult, line}; absent without labels) and ``patches`` (list of {file, origin, scale, offset,
    annotations}). A missing record means the split did not finish: an error that says to rerun it.
    """
    info = info if info is not None else read_split_info(root)
    records = []
    missing = []
    for stem in info["images"]:
        path = Path(root) / RECORDS_DIR / f"{stem}.json"
        if not path.is_file():
            missing.append(stem)
            continue
        with open(path) as f:
            records.append(json.load(f))
    if missing:
        raise FileNotFoundError(
            f"Patch set {root} is incomplete: {len(missing)} of {len(info['images'])} images have no record "
            f"in {Path(root) / RECORDS_DIR} (first: {missing[0]}); rerun prepare_dota.py to finish it"
        )
    return records


def _check_classes(root: Union[str, Path], info: dict, classes: Optional[Sequence[str]]) -> List[str]:
    """The class list to use: the recorded one, or ``classes`` if it contains every recorded class."""
    if classes is None:
        return list(info["classes"])
    unknown = [c for c in info["classes"] if c not in classes]
    if unknown:
        raise DotaFormatError(
            f"{Path(root) / SPLIT_INFO_FILE}: classes {unknown} of this patch set are not in the given "
            "classes"
        )
    return list(classes)


def _check_oriented_split(root: Union[str, Path], info: dict) -> None:
    if info["format"] in HORIZONTAL_ONLY_FORMATS:
        raise DotaFormatError(
            f"{Path(root) / SPLIT_INFO_FILE}: this patch set was written in format {info['format']!r}, "
            "without the objects' polygons and oriented boxes; split the source again "
            "(datasets/prepare_dota.py) into a new folder to read it with oriented boxes"
        )


def _oriented_annotation(annotation: dict, record: dict, root: Union[str, Path]) -> dict:
    """The XYWHA_ABS annotation of one kept object; an error naming the object's label line when its labelled
    quadrilateral is unusable (collinear, self-intersecting: the horizontal reading of a split accepts them)
    or its box degenerate."""
    rbox = [float(v) for v in annotation["rbox"]]
    obj = record["objects"][annotation["object"]]
    problem = quadrilateral_problem(obj["polygon"]) or (None if rbox[2] * rbox[3] > 0 else "zero area")
    if problem is not None:
        raise DotaFormatError(
            f"{Path(root) / RECORDS_DIR / (record['image'] + '.json')}: object at line {obj['line']} of "
            f"{record['image']}'s label file has the polygon {obj['polygon']} ({problem}): no oriented box. "
            "Fix the label, then split again (prepare_dota.py --boxes oriented checks labels)"
        )
    return {"bbox": rbox, "bbox_mode": BoxMode.XYWHA_ABS}


def load_dota_patches(
    root: Union[str, Path], classes: Optional[Sequence[str]] = None, boxes: str = "horizontal"
) -> List[dict]:
    """Detectron2 dataset dicts of a patch set, one per patch, ``image_id`` = running index (int).

    Extra keys: ``source_image`` (stem of the original image), ``patch_origin`` (x, y of the patch's top-left
    in the original image's pixels) and ``patch_scale`` (patch pixels per original pixel), so that a patch
    point p maps to ``p / patch_scale + patch_origin`` in the original image. ``annotations`` (boxes in patch
    pixels, ``category_id`` into ``classes``, ``difficult``) is present only for labelled splits; boxes are
    XYXY_ABS (``boxes="horizontal"``) or XYWHA_ABS (``"oriented"``: the minimum-area rectangle of the
    object's polygon clipped to the patch).
    """
    oriented = check_box_kind(boxes, "boxes") == "oriented"
    info = read_split_info(root)
    if oriented:
        _check_oriented_split(root, info)
    class_list = _check_classes(root, info, classes)
    class_ids = {c: i for i, c in enumerate(class_list)}
    size = info["patch_size"]
    dicts = []
    for record in read_image_records(root, info):
        for patch in record["patches"]:
            d = {
                "file_name": str(Path(root) / PATCHES_DIR / patch["file"]),
                "image_id": len(dicts),
                "height": size,
                "width": size,
                "source_image": record["image"],
                "patch_origin": tuple(patch["origin"]),
                "patch_scale": patch["scale"],
            }
            if info["has_labels"]:
                d["annotations"] = [
                    {
                        **(_oriented_annotation(a, record, root) if oriented
                           else {"bbox": list(a["bbox"]), "bbox_mode": BoxMode.XYXY_ABS}),
                        "category_id": class_ids[a["category"]],
                        "difficult": a["difficult"],
                    }
                    for a in patch["annotations"]
                ]
            dicts.append(d)
    return dicts


def _load_registered(
    name: str, root: str, classes: Sequence[str], has_labels: bool, env_root: str, boxes: str
) -> List[dict]:
    """Loader of a lazily registered patch set: explains a missing folder, checks what the folder says."""
    if not (Path(root) / SPLIT_INFO_FILE).is_file():
        raise FileNotFoundError(
            f"Dataset {name!r}: no DOTA patch set at {root} ({SPLIT_INFO_FILE} missing). Builtin DOTA "
            f"datasets are looked up under $DETECTRON2_DATASETS (now {env_root!r}); make this one with "
            f"'python datasets/prepare_dota.py --src <DOTA split folder> --dst {root}"
            f"{' --boxes oriented' if boxes == 'oriented' else ''}'."
        )
    info = read_split_info(root)
    if bool(info["has_labels"]) != has_labels:
        raise DotaFormatError(
            f"Dataset {name!r}: {Path(root) / SPLIT_INFO_FILE} says has_labels={info['has_labels']}, but "
            f"this name was registered with has_labels={has_labels}"
        )
    return load_dota_patches(root, classes, boxes)


def _metadata(root: str, classes: Sequence[str], has_labels: bool, boxes: str) -> dict:
    return dict(thing_classes=list(classes), evaluator_type="dota_patches", dota_root=str(root),
                has_labels=has_labels, box_kind=boxes)


def register_dota(
    name: str, root: Union[str, Path], classes: Optional[Sequence[str]] = None, boxes: str = "horizontal"
) -> None:
    """Register the patch set in ``root`` (written by ``datasets/prepare_dota.py``) as Detectron2 dataset
    ``name``, with ``boxes`` "horizontal" (XYXY_ABS) or "oriented" (XYWHA_ABS) annotations.

    Metadata: thing_classes (the recorded list, or ``classes`` if given: it must contain every recorded
    class), evaluator_type="dota_patches", dota_root (the folder), has_labels, box_kind (``boxes``). Reads
    only ``dota_split.json`` now. Registering the same patch set again is a no-op; another one under a taken
    name is a ValueError.
    """
    root = str(root)
    boxes = check_box_kind(boxes, "boxes")
    info = read_split_info(root)
    if boxes == "oriented":
        _check_oriented_split(root, info)
    class_list = _check_classes(root, info, classes)
    metadata = _metadata(root, class_list, bool(info["has_labels"]), boxes)
    register_dataset(name, partial(load_dota_patches, root, class_list, boxes), metadata, replace=False)


# builtin name prefix -> (folder under the data root, classes)
_BUILTIN_VERSIONS = {
    "dota_v1": ("DOTA-v1.0_1024", DOTA_V1_CLASSES),
    "dota_v1.5": ("DOTA-v1.5_1024", DOTA_V1_5_CLASSES),
}
_BUILTIN_SPLITS = {"train": True, "val": True, "test": False}  # split -> has labels


_BUILTIN_SUFFIXES = {"horizontal": "", "oriented": "_oriented"}  # box kind -> name suffix


def register_all_dota(root: Union[str, Path]) -> None:
    """Register ``dota_v1_{train,val,test}_1024`` and ``dota_v1.5_{...}_1024`` (horizontal boxes) and
    ``dota_v1_{train,val,test}_1024_oriented``, ``dota_v1.5_{...}_1024_oriented`` (oriented boxes) lazily.

    They are the patch sets ``<root>/DOTA-v1.0_1024/{train,val,test}`` and ``<root>/DOTA-v1.5_1024/...``
    (patch size 1024, gap 200: datasets/prepare_dota.py defaults); both kinds read the same patch set. Nothing
    is read now; a missing folder is reported when the dataset is loaded. Calling it again with the same
    root is a no-op; with another root it re-registers the names.
    """
    root = str(root)
    for prefix, (folder, classes) in _BUILTIN_VERSIONS.items():
        for split, has_labels in _BUILTIN_SPLITS.items():
            for boxes in BOX_KINDS:
                name = f"{prefix}_{split}_1024{_BUILTIN_SUFFIXES[boxes]}"
                split_root = os.path.join(root, folder, split)
                loader = partial(_load_registered, name, split_root, classes, has_labels, root, boxes)
                metadata = _metadata(split_root, classes, has_labels, boxes)
                register_dataset(name, loader, metadata, replace=True)
