"""Pascal-VOC-format detection datasets (DIOR, NWPU VHR-10, RSOD, HRRSD, users' own) for Detectron2.

One XML per image (``<size>`` with width/height, ``<object>`` with ``<name>``, optional ``<difficult>`` and
``<bndbox>`` in 1-based inclusive pixel indices). Boxes are converted to Detectron2's continuous XYXY_ABS
coordinates the way ``detectron2.data.datasets.pascal_voc`` does: ``(xmin - 1, ymin - 1, xmax, ymax)``, so a
box covering a whole W x H image is ``(0, 0, W, H)`` and ``xmin == xmax`` is a box one pixel wide.

A box with reversed corners (``xmin > xmax`` or ``ymin > ymax``) or a coordinate that is not a finite number
is an error naming the XML and the object. Valid boxes partly outside the image are clipped to it; those left
empty (wholly outside) are dropped; both are counted in the log, per XML and in total. XML is parsed with
``defusedxml``: entity declarations (entity expansion, "billion laughs") and external references are refused
with the file named.

Oriented boxes (``boxes="oriented"``, DIOR-R's ``Annotations/Oriented Bounding Boxes``): each ``<object>``
holds ``<robndbox>`` with the 4 corners ``x_left_top y_left_top x_right_top y_right_top x_right_bottom
y_right_bottom x_left_bottom y_left_bottom`` (pixels, used as continuous coordinates as given, like DOTA's;
DIOR-R's extra ``<angle>`` is not read: the corners say it all). The box is the minimum-area rectangle of the
corners (``ds2d2.rotated.boxes``: XYWHA_ABS, cx, cy, w, h, angle in degrees CCW). A non-finite corner, or
corners that are collinear or whose outline crosses itself, is an error naming the XML and the object. Boxes
wholly outside the image are dropped (counted like the horizontal ones); the others are not clipped.
"""

import logging
import math
import os
import xml.etree.ElementTree as ET
from functools import partial
from typing import Callable, Dict, Iterator, List, Sequence, Tuple, Union

import defusedxml
import defusedxml.ElementTree
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..rotated.boxes import polygons_to_rotated_boxes, quadrilateral_problem

__all__ = [
    "BOX_KINDS",
    "IMAGE_EXTENSIONS",
    "ROBNDBOX_CORNERS",
    "check_box_kind",
    "check_voc_paths",
    "collect_voc_classes",
    "load_voc_detection",
    "parse_xml",
    "register_dataset",
    "register_voc_detection",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
"""Image file extensions (compared lower-case) of every reader here: VOC image folders, DOTA ``images/``."""

BOX_KINDS = ("horizontal", "oriented")
"""Box kinds of every reader here: horizontal (BoxMode.XYXY_ABS) or oriented (BoxMode.XYWHA_ABS)."""
ROBNDBOX_CORNERS = ("x_left_top", "y_left_top", "x_right_top", "y_right_top", "x_right_bottom",
                    "y_right_bottom", "x_left_bottom", "y_left_bottom")
"""DIOR-R's ``<robndbox>`` children, in the order of a polygon x1 y1 ... x4 y4."""

SplitFiles = Union[str, Sequence[str], None]

_LOGGED_FILES = 10  # XMLs whose clipped / dropped boxes get a log line of their own; the rest are counted


def check_box_kind(value: object, where: str) -> str:
    """``value`` if it is one of BOX_KINDS, else a ValueError naming ``where`` (an argument or config key)."""
    if value not in BOX_KINDS:
        raise ValueError(f"{where} must be 'horizontal' or 'oriented', got {value!r}")
    return str(value)


def _as_list(split_file: SplitFiles) -> List[str]:
    if split_file is None:
        return []
    if isinstance(split_file, (str, os.PathLike)):
        return [os.fspath(split_file)]
    return [os.fspath(f) for f in split_file]


def check_voc_paths(image_dir: str, annotation_dir: str, split_file: SplitFiles = None) -> None:
    """Raise FileNotFoundError naming the first of the directories / split files that does not exist."""
    for kind, path in (("image directory", image_dir), ("annotation directory", annotation_dir)):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"VOC {kind} {path!r} does not exist")
    for path in _as_list(split_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VOC split file {path!r} does not exist")


def _check_classes(classes: Sequence[str]) -> None:
    if len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"classes must be distinct non-empty strings, got {list(classes)}")


def _read_split_ids(split_files: List[str], xml_names: set, images: Dict[str, List[str]]) -> List[str]:
    """Ids listed in the split files (in order); each must have an XML and exactly one image."""
    ids: List[str] = []
    seen: Dict[str, str] = {}
    for split_file in split_files:
        with open(split_file, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    image_id = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ValueError(f"{split_file}:{line_no}: not UTF-8 text ({raw[:40]!r})") from None
                if not image_id:
                    continue
                where = f"{split_file}:{line_no}"
                if image_id in seen:
                    raise ValueError(f"{where}: id {image_id!r} is listed twice (first at {seen[image_id]})")
                if image_id + ".xml" not in xml_names:
                    raise FileNotFoundError(f"{where}: no annotation {image_id}.xml for id {image_id!r}")
                if image_id not in images:
                    raise FileNotFoundError(
                        f"{where}: no image for id {image_id!r} ({'/'.join(IMAGE_EXTENSIONS)})"
                    )
                seen[image_id] = where
                ids.append(image_id)
    return ids


def _index_images(image_dir: str) -> Dict[str, List[str]]:
    """Map file stem -> image paths in ``image_dir`` with an extension of IMAGE_EXTENSIONS."""
    index: Dict[str, List[str]] = {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                index.setdefault(stem, []).append(entry.path)
    return index


def parse_xml(xml_file: str) -> ET.Element:
    """Root element of an XML file, parsed with entity declarations and external references refused
    (defusedxml); ValueError naming the file for those and for malformed XML (undecodable bytes included)."""
    try:
        return defusedxml.ElementTree.parse(xml_file, forbid_dtd=False, forbid_entities=True,
                                            forbid_external=True).getroot()
    except (ET.ParseError, LookupError) as e:  # LookupError: an unknown encoding="..." declaration
        raise ValueError(f"{xml_file}: not valid XML ({e})") from None
    except defusedxml.DefusedXmlException as e:
        raise ValueError(
            f"{xml_file}: refused: the XML declares entities or refers to external files ({e!r}); annotation "
            "XMLs need neither (entity expansion can blow up memory, external entities read other files)"
        ) from None


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing or empty <{tag}>")
    return child.text.strip()


def _parse_size(root: ET.Element, xml_file: str) -> Tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_file}: no <size> element (image width/height are read from the XML)")
    dims = []
    for tag in ("width", "height"):
        text = _text(size, tag, f"{xml_file} <size>")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{xml_file}: <size><{tag}> is not a number: {text!r}") from None
        if not value.is_integer() or value <= 0:
            raise ValueError(f"{xml_file}: <size><{tag}> must be a positive integer, got {text!r}")
        dims.append(int(value))
    return dims[0], dims[1]


def _parse_box(obj: ET.Element, where: str, name: str) -> List[float]:
    """VOC <bndbox> (1-based inclusive) -> continuous [x0, y0, x1, y1], unclipped; reversed corners are an
    error."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise ValueError(f"{where}: no <bndbox>")
    xmin, ymin, xmax, ymax = _numbers(bndbox, ("xmin", "ymin", "xmax", "ymax"), where, where)
    for low, high, axis in ((xmin, xmax, "x"), (ymin, ymax, "y")):
        if low > high:
            raise ValueError(
                f"{where} ({name}): reversed box: <{axis}min> {low:g} > <{axis}max> {high:g} (VOC boxes are "
                f"1-based and inclusive: {axis}min <= {axis}max, equal for a box one pixel wide)"
            )
    return [xmin - 1.0, ymin - 1.0, xmax, ymax]


def _known_objects(
    root: ET.Element, xml_file: str, class_to_id: Dict[str, int]
) -> Iterator[Tuple[ET.Element, str, str]]:
    """(element, "<file> object #i" for errors, class name) of each <object> of a VOC XML; an unknown class is
    a ValueError naming the file and the object."""
    for index, obj in enumerate(root.findall("object")):
        where = f"{xml_file} object #{index}"
        name = _text(obj, "name", where)
        if name not in class_to_id:
            raise ValueError(f"{where}: unknown class {name!r}; known classes: {list(class_to_id)}")
        yield obj, where, name


def _numbers(node: ET.Element, tags: Sequence[str], where_missing: str, where: str) -> List[float]:
    """The finite numbers in the children ``tags`` of ``node``; a missing, non-numeric or non-finite one is a
    ValueError naming ``where`` (``where_missing`` for a missing child) and the tag."""
    values = []
    for tag in tags:
        text = _text(node, tag, where_missing)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where}: <{tag}> is not a number: {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: <{tag}> is not finite: {text!r}")
        values.append(value)
    return values


def _parse_corners(obj: ET.Element, where: str, name: str) -> List[float]:
    """DIOR-R <robndbox> -> polygon [x1, y1, ..., x4, y4]; missing, non-numeric or non-finite corners and
    unusable quadrilaterals (collinear, self-intersecting) are errors."""
    robndbox = obj.find("robndbox")
    if robndbox is None:
        raise ValueError(f"{where}: no <robndbox> (an oriented box: {', '.join(ROBNDBOX_CORNERS)})")
    polygon = _numbers(robndbox, ROBNDBOX_CORNERS, f"{where} <robndbox>", where)
    problem = quadrilateral_problem(polygon)
    if problem is not None:
        raise ValueError(f"{where} ({name}): {problem}")
    return polygon


def _parse_difficult(obj: ET.Element, where: str) -> int:
    element = obj.find("difficult")
    if element is None or element.text is None or not element.text.strip():
        return 0
    text = element.text.strip()
    if text not in ("0", "1"):
        raise ValueError(f"{where}: <difficult> must be 0 or 1, got {text!r}")
    return int(text)


def _oriented_annotations(
    root: ET.Element, xml_file: str, class_to_id: Dict[str, int], width: int, height: int
) -> Tuple[List[dict], int]:
    """The XYWHA_ABS annotations of a DIOR-R XML and the number of boxes dropped as wholly outside the
    image."""
    polygons, kept = [], []
    for obj, where, name in _known_objects(root, xml_file, class_to_id):
        polygon = _parse_corners(obj, where, name)
        difficult = _parse_difficult(obj, where)
        xs, ys = polygon[0::2], polygon[1::2]
        if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
            continue
        polygons.append(polygon)
        kept.append({"category_id": class_to_id[name], "difficult": difficult})
    boxes = polygons_to_rotated_boxes(torch.tensor(polygons, dtype=torch.float64).reshape(-1, 8)).tolist()
    annotations = [{"bbox": box, "bbox_mode": BoxMode.XYWHA_ABS, **a} for box, a in zip(boxes, kept)]
    return annotations, len(root.findall("object")) - len(kept)


def _parse_annotation(
    xml_file: str, image_file: str, image_id: str, class_to_id: Dict[str, int], oriented: bool = False
) -> Tuple[dict, int, int]:
    """One VOC XML -> (Detectron2 dataset dict, number of clipped boxes, number of boxes dropped as empty);
    ``oriented``: DIOR-R's <robndbox> corners instead of <bndbox>."""
    root = parse_xml(xml_file)
    width, height = _parse_size(root, xml_file)
    record = {"file_name": image_file, "image_id": image_id, "height": height, "width": width}
    if oriented:
        record["annotations"], dropped = _oriented_annotations(root, xml_file, class_to_id, width, height)
        return record, 0, dropped
    annotations = []
    clipped = dropped = 0
    for obj, where, name in _known_objects(root, xml_file, class_to_id):
        box = _parse_box(obj, where, name)
        difficult = _parse_difficult(obj, where)
        x0, y0, x1, y1 = (
            min(max(box[0], 0.0), width),
            min(max(box[1], 0.0), height),
            min(max(box[2], 0.0), width),
            min(max(box[3], 0.0), height),
        )
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        if [x0, y0, x1, y1] != box:
            clipped += 1
        annotations.append(
            {
                "bbox": [x0, y0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": class_to_id[name],
                "difficult": difficult,
            }
        )
    record["annotations"] = annotations
    return record, clipped, dropped


def collect_voc_classes(annotation_dir: str) -> List[str]:
    """Every object ``<name>`` in the ``*.xml`` files of ``annotation_dir``, sorted; ValueError naming the
    file for invalid XML or an object without a name, and when no object is found."""
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(f"VOC annotation directory {annotation_dir!r} does not exist")
    names = set()
    xml_files = sorted(name for name in os.listdir(annotation_dir) if name.endswith(".xml"))
    for xml_name in xml_files:
        xml_file = os.path.join(annotation_dir, xml_name)
        root = parse_xml(xml_file)
        for index, obj in enumerate(root.findall("object")):
            names.add(_text(obj, "name", f"{xml_file} object #{index}"))
    if not names:
        raise ValueError(f"no <object><name> in the {len(xml_files)} XML files of {annotation_dir!r}")
    return sorted(names)


def _log_unused_images(images: Dict[str, List[str]], xml_names: set, image_dir: str) -> None:
    """Images of ``image_dir`` without an XML are not part of a dataset read without split file: say so."""
    unused = sorted(stem for stem in images if stem + ".xml" not in xml_names)
    if unused:
        logger.warning(
            f"{len(unused)} images in {image_dir!r} have no XML annotation and are not used "
            f"(e.g. {unused[:3]}); give a split file to choose the images explicitly."
        )


def load_voc_detection(
    image_dir: str,
    annotation_dir: str,
    classes: Sequence[str],
    split_file: SplitFiles = None,
    boxes: str = "horizontal",
) -> List[dict]:
    """Read a Pascal-VOC-format detection dataset into Detectron2 dataset dicts.

    Args:
        image_dir: folder of images; the image of id ``ID`` is the one file ``ID.<ext>`` with ext in
            IMAGE_EXTENSIONS (the extension in the XML ``<filename>`` is not used).
        annotation_dir: folder of ``ID.xml`` files.
        classes: class names; ``category_id`` is the index in this list.
        split_file: a text file (or several, concatenated) with one id per line; blank lines are ignored.
            Without it, every ``*.xml`` in ``annotation_dir`` (sorted) is loaded, and images without an XML
            are counted in a warning.
        boxes: "horizontal" (``<bndbox>``) or "oriented" (DIOR-R's ``<robndbox>`` corners).

    Returns:
        One dict per image: file_name, image_id (the id / XML stem), height, width (pixels, from the XML) and
        annotations: [{bbox [x0, y0, x1, y1] (float, continuous pixel coords), bbox_mode XYXY_ABS,
        category_id, difficult (0/1)}]. Boxes are clipped to the image; boxes empty after clipping are
        dropped; both are counted in one log line per XML concerned (the first few) and in a total.
        Oriented: bbox [cx, cy, w, h, angle] (degrees CCW), bbox_mode XYWHA_ABS, not clipped; boxes wholly
        outside the image are dropped and counted.

    Raises:
        FileNotFoundError / ValueError naming the file (and line or object) for any bad input.
    """
    check_voc_paths(image_dir, annotation_dir, split_file)
    _check_classes(classes)
    oriented = check_box_kind(boxes, "boxes") == "oriented"
    class_to_id = {name: i for i, name in enumerate(classes)}
    split_files = _as_list(split_file)
    xml_names = {name for name in os.listdir(annotation_dir) if name.endswith(".xml")}
    images = _index_images(image_dir)
    if split_files:
        ids = _read_split_ids(split_files, xml_names, images)
    else:
        ids = sorted(os.path.splitext(name)[0] for name in xml_names)
        _log_unused_images(images, xml_names, image_dir)

    dicts = []
    clipped = dropped = files_concerned = 0
    for image_id in ids:
        xml_file = os.path.join(annotation_dir, image_id + ".xml")
        candidates = images.get(image_id, [])
        if len(candidates) != 1:
            problem = "no image" if not candidates else f"several images {sorted(candidates)}"
            raise FileNotFoundError(f"{xml_file}: {problem} named {image_id}.<ext> in {image_dir!r}")
        record, n_clipped, n_dropped = _parse_annotation(
            xml_file, candidates[0], image_id, class_to_id, oriented
        )
        dicts.append(record)
        clipped += n_clipped
        dropped += n_dropped
        if n_clipped or n_dropped:
            files_concerned += 1
            if files_concerned <= _LOGGED_FILES:
                logger.info(
                    f"{xml_file}: clipped {n_clipped} boxes to the image, dropped {n_dropped} boxes empty "
                    "after clipping"
                )
    source = annotation_dir if not split_files else ", ".join(split_files)
    logger.info(
        f"Loaded {len(dicts)} images with {sum(len(d['annotations']) for d in dicts)} boxes from {source}; "
        f"clipped {clipped} boxes to their image, dropped {dropped} boxes empty after clipping "
        f"(in {files_concerned} XML files)."
    )
    return dicts


def register_dataset(name: str, loader: Callable[[], List[dict]], metadata: dict, *, replace: bool) -> None:
    """Register ``loader`` and ``metadata`` under ``name`` in Detectron2's catalogs.

    Registering the same metadata again is a no-op (re-import). A different registration under an existing
    name replaces it when ``replace`` is true and raises ValueError otherwise.
    """
    if name in DatasetCatalog.list():
        current = MetadataCatalog.get(name).as_dict()
        if all(current.get(key) == value for key, value in metadata.items()):
            return
        if not replace:
            raise ValueError(f"dataset {name!r} is already registered with other metadata: {current}")
        logger.info(f"Re-registering dataset {name!r} with {metadata}")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_voc_detection(
    name: str,
    *,
    image_dir: str,
    annotation_dir: str,
    classes: Sequence[str],
    split_file: SplitFiles = None,
    evaluator_type: str = "voc_detection",
    boxes: str = "horizontal",
) -> None:
    """Register a Pascal-VOC-format dataset under ``name`` (see :func:`load_voc_detection` for the arguments).

    Directories and split files are checked now (FileNotFoundError); the XMLs are read, and their errors
    raised, when the dataset is loaded with ``DatasetCatalog.get(name)``. Metadata: thing_classes,
    evaluator_type, image_dir, annotation_dir, split_file, box_kind (``boxes``).
    """
    check_voc_paths(image_dir, annotation_dir, split_file)
    _check_classes(classes)
    boxes = check_box_kind(boxes, "boxes")
    metadata = {
        "thing_classes": list(classes),
        "evaluator_type": evaluator_type,
        "image_dir": image_dir,
        "annotation_dir": annotation_dir,
        "split_file": split_file,
        "box_kind": boxes,
    }
    loader = partial(load_voc_detection, image_dir, annotation_dir, list(classes), split_file, boxes)
    register_dataset(name, loader, metadata, replace=False)
