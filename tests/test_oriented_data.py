"""Oriented data end to end: DOTA patch sets read as XYWHA boxes (whole and cut objects against Shapely),
label checks for oriented reading, DIOR-R XMLs, the builtin names, and rotated boxes through the mapper's
flips and resizes (against Detectron2's own rotated-box transforms, Shapely, and the drawn pixels)."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from shapely import affinity
from shapely.geometry import Polygon, box
from test_dota_scenes import GAP, PATCH, write_dota_folder

import ds2d2.data  # noqa: F401  (registers the builtin names)
from ds2d2.config import load_config
from ds2d2.data.builtin import DIOR_CLASSES, register_all_dior
from ds2d2.data.dota import DotaFormatError, load_dota_patches, parse_dota_labels, register_dota
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2.data.mapper import CheckedDatasetMapper
from ds2d2.data.synthetic import write_synthetic_dior, write_synthetic_dota
from ds2d2.data.voc import ROBNDBOX_CORNERS, load_voc_detection
from ds2d2.rotated.boxes import canonical_rotated_boxes, polygons_to_rotated_boxes

REPO = Path(__file__).resolve().parents[1]
DOTA_BASE = str(REPO / "configs" / "own" / "dota" / "Base-RetinaNet.yaml")
VOC_BASE = str(REPO / "configs" / "own" / "voc" / "Base-RetinaNet.yaml")
RATES = (0.5, 1.0, 1.5)  # objects are cut by patch borders at 1.5
SETTINGS = SplitSettings(PATCH, GAP, RATES, 0.7)


def rectangle(rotated_box) -> Polygon:
    """Shapely polygon of (cx, cy, w, h, angle CCW on screen): clockwise in Shapely's y-up frame."""
    cx, cy, w, h, angle = (float(v) for v in rotated_box)
    rotated = affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), -angle, origin=(0, 0))
    return affinity.translate(rotated, cx, cy)


def same_region(a, b, tol: float = 1e-6) -> bool:
    pa, pb = rectangle(a), rectangle(b)
    return pa.symmetric_difference(pb).area <= tol * max(pa.area, 1.0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("oriented_dota")
    scenes = write_dota_folder(root / "src")
    split_dota(root / "src", root / "dst", settings=SETTINGS, num_workers=1, progress=False, boxes="oriented")
    return scenes, root / "dst"


def test_patch_rboxes_whole_and_cut_objects(split):
    scenes, dst = split
    cut = 0
    for path in sorted((dst / "annotations").glob("*.json")):
        record = json.loads(path.read_text())
        objects = scenes[record["image"]]
        for obj, (poly, _, _) in zip(record["objects"], objects):
            assert obj["polygon"] == poly
        for patch in record["patches"]:
            rate, (left, up) = patch["scale"], patch["offset"]
            window = box(left, up, left + PATCH, up + PATCH)
            for a in patch["annotations"]:
                shape = Polygon(np.array(objects[a["object"]][0]).reshape(4, 2) * rate)
                inside = shape.intersection(window)
                rbox = np.array(a["rbox"])
                assert rbox[2] >= rbox[3] and -90 <= rbox[4] < 90
                in_image = rbox + [left, up, 0, 0, 0]
                if inside.area == pytest.approx(shape.area, rel=1e-12):
                    want = polygons_to_rotated_boxes(torch.tensor([list(shape.exterior.coords[:4])],
                                                                  dtype=torch.float64).reshape(1, 8))[0]
                    assert same_region(in_image, want.tolist())
                else:
                    cut += 1
                    envelope = inside.minimum_rotated_rectangle
                    assert rbox[2] * rbox[3] == pytest.approx(envelope.area, rel=1e-9)
                    assert rectangle(in_image).buffer(1e-6).covers(inside)
                    clipped = Polygon(np.array(a["polygon"]).reshape(-1, 2) + [left, up])
                    assert clipped.symmetric_difference(inside).area < 1e-6
    assert cut >= 5


def test_load_and_register_oriented(split, monkeypatch):
    scenes, dst = split
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})
    register_dota("tiny_oriented", dst, boxes="oriented")
    register_dota("tiny_horizontal", dst)
    assert MetadataCatalog.get("tiny_oriented").box_kind == "oriented"
    assert MetadataCatalog.get("tiny_horizontal").box_kind == "horizontal"
    oriented, horizontal = DatasetCatalog.get("tiny_oriented"), DatasetCatalog.get("tiny_horizontal")
    assert len(oriented) == len(horizontal)
    checked = 0
    for o, h in zip(oriented, horizontal):
        assert [a["category_id"] for a in o["annotations"]] == [a["category_id"] for a in h["annotations"]]
        for a, b in zip(o["annotations"], h["annotations"]):
            assert a["bbox_mode"] == BoxMode.XYWHA_ABS and len(a["bbox"]) == 5
            # the horizontal box of a whole object is the oriented box's hull (up to the labels' rounding to
            # 0.1 px, which leaves them not quite rectangles)
            hull = rectangle(a["bbox"]).bounds
            if b["bbox"][0] > 0 and b["bbox"][1] > 0 and b["bbox"][2] < PATCH and b["bbox"][3] < PATCH:
                assert hull[0] <= b["bbox"][0] + 1e-6 and hull[1] <= b["bbox"][1] + 1e-6
                assert hull[2] >= b["bbox"][2] - 1e-6 and hull[3] >= b["bbox"][3] - 1e-6
                np.testing.assert_allclose(hull, b["bbox"], atol=0.25)
                checked += 1
    assert checked > 20
    with pytest.raises(ValueError, match="'horizontal' or 'oriented'"):
        load_dota_patches(dst, boxes="rotated")


def test_patch_boxes_map_back_to_the_labels(split):
    scenes, dst = split
    dicts = load_dota_patches(dst, boxes="oriented")
    mapped = 0
    for d in dicts:
        if d["patch_scale"] != 1.0:
            continue
        labels = [polygons_to_rotated_boxes(torch.tensor([p], dtype=torch.float64))[0].tolist()
                  for p, _, _ in scenes[d["source_image"]]]
        for a in d["annotations"]:
            back = np.array(a["bbox"]) + [*d["patch_origin"], 0, 0, 0]
            if any(same_region(back, label) for label in labels):
                mapped += 1
    assert mapped > 20


def test_old_patch_sets_are_horizontal_only(split, tmp_path):
    _, dst = split
    old = tmp_path / "old"
    (old / "annotations").mkdir(parents=True)
    info = json.loads((dst / "dota_split.json").read_text())
    info["format"] = "ds2d2-dota-split/1"
    (old / "dota_split.json").write_text(json.dumps(info))
    for path in (dst / "annotations").glob("*.json"):
        record = json.loads(path.read_text())
        for patch in record["patches"]:
            for a in patch["annotations"]:
                del a["rbox"], a["polygon"]
        (old / "annotations" / path.name).write_text(json.dumps(record))
    assert load_dota_patches(old)  # horizontal reading works as before
    with pytest.raises(DotaFormatError, match="split the source again"):
        load_dota_patches(old, boxes="oriented")
    with pytest.raises(DotaFormatError, match="split the source again"):
        register_dota("old_oriented", old, boxes="oriented")


@pytest.mark.parametrize("line,problem", [
    ("0 0 10 10 20 20 30 30 plane 0", "degenerate polygon"),  # collinear along a diagonal
    ("0 0 10 5 10 0 0 5 plane 0", "self-intersecting"),
])
def test_oriented_reading_refuses_unusable_polygons(tmp_path, line, problem):
    label = tmp_path / "P0000.txt"
    label.write_text("imagesource:GoogleEarth\ngsd:0.1\n10 10 20 10 20 15 10 15 ship 0\n" + line + "\n")
    assert len(parse_dota_labels(label)) == 2  # horizontal boxes only need the bounds, as before
    with pytest.raises(DotaFormatError, match=rf"P0000.txt:4: {problem}"):
        parse_dota_labels(label, boxes="oriented")
    skipped = []
    assert len(parse_dota_labels(label, skipped=skipped, boxes="oriented")) == 1 and len(skipped) == 1


@pytest.mark.parametrize("bad, problem", [
    ("20 20 40 40 60 60 30 30 plane 0", "degenerate"),  # collinear
    ("20 20 60 40 60 20 20 40 plane 0", "self-intersecting"),  # a bow tie: its rectangle would hide it
])
def test_an_unusable_label_split_for_horizontal_boxes_is_named_when_read_oriented(tmp_path, bad, problem):
    write_dota_folder(tmp_path / "src", sizes=((200, 150),))
    label = tmp_path / "src" / "labelTxt" / "P0000.txt"
    lines = label.read_text().splitlines() + [bad]
    label.write_text("\n".join(lines) + "\n")
    split_dota(tmp_path / "src", tmp_path / "dst", settings=SETTINGS, num_workers=1, progress=False)
    assert load_dota_patches(tmp_path / "dst")
    with pytest.raises(DotaFormatError, match=rf"P0000.json: object at line {len(lines)} of P0000's label "
                                              rf"file has the polygon .*{problem}"):
        load_dota_patches(tmp_path / "dst", boxes="oriented")


def test_builtin_oriented_dota_names(tmp_path):
    for version in ("v1", "v1.5"):
        for split_name in ("train", "val", "test"):
            meta = MetadataCatalog.get(f"dota_{version}_{split_name}_1024_oriented")
            assert meta.box_kind == "oriented" and meta.evaluator_type == "dota_patches"
            assert MetadataCatalog.get(f"dota_{version}_{split_name}_1024").box_kind == "horizontal"
    with pytest.raises(FileNotFoundError, match="--boxes oriented"):
        DatasetCatalog.get("dota_v1_train_1024_oriented")


# ------------------------------------------------------------------------------------------------------------
# DIOR-R
# ------------------------------------------------------------------------------------------------------------
def robndbox(name: str, corners, difficult: int = 0) -> str:
    tags = "".join(f"<{t}>{v}</{t}>" for t, v in zip(ROBNDBOX_CORNERS, corners))
    return (f"<object><type>robndbox</type><name>{name}</name><difficult>{difficult}</difficult>"
            f"<robndbox>{tags}</robndbox><angle>0</angle></object>")


def write_diorr(root: Path, objects, size=(100, 80)) -> tuple:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(parents=True, exist_ok=True)
    text = (f"<annotation><filename>a.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{''.join(objects)}</annotation>")
    (root / "ann" / "a.xml").write_text(text)
    (root / "img" / "a.jpg").write_bytes(b"")
    return str(root / "img"), str(root / "ann")


def test_diorr_corners_give_the_minimum_area_rectangle(tmp_path):
    tilted = [30.0, 10.0, 50.0, 30.0, 40.0, 40.0, 20.0, 20.0]  # a rectangle turned by -45 degrees (clockwise)
    upright = [10, 50, 40, 50, 40, 60, 10, 60]
    outside = [200, 200, 210, 200, 210, 205, 200, 205]
    images, annotations = write_diorr(tmp_path, [robndbox("ship", tilted, 1), robndbox("airplane", upright),
                                                 robndbox("ship", outside)])
    (record,) = load_voc_detection(images, annotations, ["airplane", "ship"], boxes="oriented")
    first, second = record["annotations"]
    assert len(record["annotations"]) == 2  # the box wholly outside the image is dropped
    assert first["bbox_mode"] == second["bbox_mode"] == BoxMode.XYWHA_ABS
    assert (first["category_id"], first["difficult"], second["category_id"]) == (1, 1, 0)
    (cx, cy), (w, h), _ = cv2.minAreaRect(np.array(tilted, np.float32).reshape(4, 2))
    np.testing.assert_allclose(first["bbox"][:2], [cx, cy], atol=1e-4)
    assert sorted(first["bbox"][2:4]) == pytest.approx(sorted([w, h]), abs=1e-4)
    # the long edge runs from (30, 10) to (50, 30): down-right on screen, i.e. clockwise, -45 degrees
    assert first["bbox"][4] == pytest.approx(-45.0)
    assert same_region(first["bbox"], [cx, cy, w, h, 0.0]) is False
    assert rectangle(first["bbox"]).symmetric_difference(Polygon(np.reshape(tilted, (4, 2)))).area < 1e-6
    np.testing.assert_allclose(second["bbox"], [25.0, 55.0, 30.0, 10.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("obj,message", [
    ("<object><name>ship</name><bndbox><xmin>1</xmin></bndbox></object>", r"object #0: no <robndbox>"),
    (robndbox("ship", [0, 0, 10, 0, "nan", 5, 0, 5]), r"object #0: <x_right_bottom> is not finite"),
    (robndbox("ship", [0, 0, 10, 0, "ten", 5, 0, 5]), r"object #0: <x_right_bottom> is not a number"),
    (robndbox("ship", [0, 0, 10, 5, 10, 0, 0, 5]), r"object #0 \(ship\): self-intersecting polygon"),
    (robndbox("ship", [0, 0, 10, 10, 20, 20, 30, 30]), r"object #0 \(ship\): degenerate polygon"),
])
def test_bad_diorr_objects_name_file_and_object(tmp_path, obj, message):
    images, annotations = write_diorr(tmp_path, [obj])
    with pytest.raises(ValueError, match=r"a\.xml " + message):
        load_voc_detection(images, annotations, ["ship"], boxes="oriented")


def test_diorr_xml_entities_are_refused(tmp_path):
    images, annotations = write_diorr(tmp_path, [])
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxx">]><annotation>&x;</annotation>'
    (Path(annotations) / "a.xml").write_text(bomb)
    with pytest.raises(ValueError, match=r"a\.xml: refused"):
        load_voc_detection(images, annotations, ["ship"], boxes="oriented")


@pytest.mark.usefixtures("restore_catalogs")
def test_synthetic_diorr_matches_synthetic_dior(tmp_path):
    write_synthetic_dior(tmp_path / "synthetic_dior", num_images=8, seed=0, image_size=64)
    register_all_dior(str(tmp_path))
    for split in ("trainval", "test"):
        oriented = DatasetCatalog.get(f"synthetic_diorr_{split}")
        horizontal = DatasetCatalog.get(f"synthetic_dior_{split}")
        assert MetadataCatalog.get(f"synthetic_diorr_{split}").box_kind == "oriented"
        assert [d["file_name"] for d in oriented] == [d["file_name"] for d in horizontal]
        for o, h in zip(oriented, horizontal):
            classes = [a["category_id"] for a in o["annotations"]]
            assert classes == [b["category_id"] for b in h["annotations"]]
            for a, b in zip(o["annotations"], h["annotations"]):
                assert a["bbox_mode"] == BoxMode.XYWHA_ABS and 0 <= a["category_id"] < len(DIOR_CLASSES)
                # the DIOR box is the drawn outline's bounds rounded out to whole pixels; the outline lies
                # inside the oriented box, so the box's hull (clipped to the image) reaches the DIOR box to
                # within a pixel
                x0, y0, x1, y1 = rectangle(a["bbox"]).bounds
                hull = np.array([max(x0, 0), max(y0, 0), min(x1, 64), min(y1, 64)])
                assert np.all(hull[:2] <= np.array(b["bbox"][:2]) + 1 + 1e-3)
                assert np.all(hull[2:] >= np.array(b["bbox"][2:]) - 1 - 1e-3)
    (tmp_path / "elsewhere" / "DIOR" / "ImageSets").mkdir(parents=True)
    register_all_dior(str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="unpack DIOR-R's oriented annotations"):
        DatasetCatalog.get("diorr_train")


def test_builtin_diorr_names():
    for split in ("train", "val", "trainval", "test"):
        meta = MetadataCatalog.get(f"diorr_{split}")
        assert meta.box_kind == "oriented" and meta.evaluator_type == "voc_detection"
        assert meta.annotation_dir.endswith(str(Path("Annotations") / "Oriented Bounding Boxes"))
        assert MetadataCatalog.get(f"dior_{split}").box_kind == "horizontal"


# ------------------------------------------------------------------------------------------------------------
# DATASETS.OWN entries with BOXES: oriented
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_oriented")
    dota = write_synthetic_dota(root / "dota", num_images=5, seed=0, image_size=160, object_scale=0.5)
    dior = write_synthetic_dior(root / "dior", num_images=8, seed=0, image_size=64)
    return {"dota": dota, "dior": dior}


def dota_entry(root: Path, cache: Path, boxes: str) -> list:
    key = "DATASETS.OWN.my_dota_train"
    return [f"{key}.ROOT", str(root), f"{key}.CACHE", str(cache), f"{key}.BOXES", boxes,
            "DATASETS.TEST", "()"]


@pytest.mark.usefixtures("restore_catalogs")
def test_own_dota_entry_with_oriented_boxes(synthetic, tmp_path):
    cfg = load_config(DOTA_BASE, dota_entry(synthetic["dota"] / "train", tmp_path / "cache", "oriented"))
    assert cfg.DATASETS.OWN.my_dota_train.BOXES == "oriented"
    assert MetadataCatalog.get("my_dota_train").box_kind == "oriented"
    dicts = DatasetCatalog.get("my_dota_train")
    boxes = [a for d in dicts for a in d["annotations"]]
    assert boxes and all(a["bbox_mode"] == BoxMode.XYWHA_ABS and len(a["bbox"]) == 5 for a in boxes)
    with pytest.raises(ValueError, match=r"^DATASETS.OWN.my_dota_train.BOXES must be 'horizontal' or "
                                         r"'oriented', got 'rotated'$"):
        load_config(DOTA_BASE, dota_entry(synthetic["dota"] / "train", tmp_path / "other", "rotated"))


@pytest.mark.usefixtures("restore_catalogs")
def test_own_dota_entry_names_an_unusable_polygon(synthetic, tmp_path):
    raw = tmp_path / "train"
    shutil.copytree(synthetic["dota"] / "train", raw)
    label = sorted((raw / "labelTxt").glob("*.txt"))[0]
    lines = label.read_text().splitlines()
    lines.append("10 10 30 20 30 10 10 20 ship 0")  # a bow tie
    label.write_text("\n".join(lines) + "\n")
    expected = rf"^DATASETS.OWN.my_dota_train: {label}:{len(lines)}: self-intersecting polygon"
    with pytest.raises(ValueError, match=expected):
        load_config(DOTA_BASE, dota_entry(raw, tmp_path / "cache", "oriented"))
    load_config(DOTA_BASE, dota_entry(raw, tmp_path / "cache", "horizontal"))  # bounds only: accepted


def voc_entry(dior: Path, annotations: str) -> list:
    key = "DATASETS.OWN.my_voc_train"
    return [f"{key}.ROOT", str(dior), f"{key}.IMAGES", "JPEGImages-trainval", f"{key}.ANNOTATIONS",
            annotations, f"{key}.SPLIT_FILE", "ImageSets/Main/train.txt", f"{key}.BOXES", "oriented",
            "DATASETS.TEST", "()"]


@pytest.mark.usefixtures("restore_catalogs")
def test_own_voc_entry_reads_diorr_xmls(synthetic, tmp_path):
    dior = tmp_path / "dior"
    shutil.copytree(synthetic["dior"], dior)
    cfg = load_config(VOC_BASE, voc_entry(dior, "Annotations/Oriented Bounding Boxes"))
    assert cfg.DATASETS.OWN.my_voc_train.BOXES == "oriented"
    dicts = DatasetCatalog.get("my_voc_train")
    assert all(a["bbox_mode"] == BoxMode.XYWHA_ABS for d in dicts for a in d["annotations"])
    assert sum(len(d["annotations"]) for d in dicts) > 10
    xml = dior / "Annotations" / "Oriented Bounding Boxes" / f"{dicts[0]['image_id']}.xml"
    text = xml.read_text()
    start = text.index("<x_right_top>") + len("<x_right_top>")
    xml.write_text(text[:start] + "inf" + text[text.index("</x_right_top>"):])
    with pytest.raises(ValueError, match=rf"{xml.name} object #0: <x_right_top> is not finite: 'inf'"):
        DatasetCatalog.get("my_voc_train")


# ------------------------------------------------------------------------------------------------------------
# Rotated boxes through the mapper
# ------------------------------------------------------------------------------------------------------------
IMAGE_H, IMAGE_W = 96, 160
BOXES = np.array([
    [40.0, 30.0, 40.0, 12.0, 30.0],
    [110.0, 60.0, 50.0, 16.0, -70.0],
    [80.0, 50.0, 30.0, 20.0, 0.0],
    [60.0, 70.0, 36.0, 10.0, 90.0],
    [120.0, 25.0, 24.0, 14.0, 135.0],
])


def mapped(tmp_path: Path, augmentations, boxes: np.ndarray = BOXES, image: np.ndarray = None):
    image = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8) if image is None else image
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    record = {
        "file_name": str(path), "height": IMAGE_H, "width": IMAGE_W, "image_id": 0,
        "annotations": [{"bbox": list(b), "bbox_mode": BoxMode.XYWHA_ABS, "category_id": i % 3}
                        for i, b in enumerate(boxes)],
    }
    mapper = CheckedDatasetMapper(True, augmentations=augmentations, image_format="BGR")
    return mapper(record)


def detectron2_rotated(transform, boxes: np.ndarray) -> np.ndarray:
    """Detectron2's own rotated-box transform (``apply_rotated_box``), canonicalised."""
    moved = transform.apply_rotated_box(boxes.copy())
    return canonical_rotated_boxes(torch.tensor(moved)).numpy()


def test_horizontal_flip_moves_rotated_boxes(tmp_path):
    out = mapped(tmp_path, [T.RandomFlip(1.0, horizontal=True, vertical=False)])
    got = out["instances"].gt_boxes.tensor.numpy()
    want = detectron2_rotated(T.HFlipTransform(IMAGE_W), BOXES)
    assert out["instances"].gt_classes.tolist() == [0, 1, 2, 0, 1]
    for g, w, b in zip(got, want, BOXES):
        assert same_region(g, w, 1e-5)
        mirrored = affinity.scale(rectangle(b), xfact=-1, yfact=1, origin=(IMAGE_W / 2, 0))
        assert rectangle(g).symmetric_difference(mirrored).area < 1e-3
        assert g[2] >= g[3] and -90 <= g[4] < 90


def test_vertical_flip_moves_rotated_boxes(tmp_path):
    # Detectron2 has no rotated-box rule for VFlip: only the corners path covers it
    out = mapped(tmp_path, [T.RandomFlip(1.0, horizontal=False, vertical=True)])
    for g, b in zip(out["instances"].gt_boxes.tensor.numpy(), BOXES):
        mirrored = affinity.scale(rectangle(b), xfact=1, yfact=-1, origin=(0, IMAGE_H / 2))
        assert rectangle(g).symmetric_difference(mirrored).area < 1e-3


def test_uniform_resize_matches_detectron2(tmp_path):
    out = mapped(tmp_path, [T.Resize((IMAGE_H * 2, IMAGE_W * 2))])
    assert out["image"].shape[1:] == (IMAGE_H * 2, IMAGE_W * 2)
    want = detectron2_rotated(T.ResizeTransform(IMAGE_H, IMAGE_W, IMAGE_H * 2, IMAGE_W * 2), BOXES)
    for g, w in zip(out["instances"].gt_boxes.tensor.numpy(), want):
        assert same_region(g, w, 1e-5)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-3)


def test_non_uniform_resize_gives_the_smallest_rectangle_around_the_moved_box(tmp_path):
    out = mapped(tmp_path, [T.Resize((IMAGE_H, IMAGE_W * 2))])
    for g, b in zip(out["instances"].gt_boxes.tensor.numpy(), BOXES):
        stretched = affinity.scale(rectangle(b), xfact=2, yfact=1, origin=(0, 0))
        envelope = stretched.minimum_rotated_rectangle
        assert g[2] * g[3] == pytest.approx(envelope.area, rel=1e-4)
        assert rectangle(g).buffer(1e-3).covers(stretched)


def fill(shape, boxes: np.ndarray) -> np.ndarray:
    """Boolean mask of the rotated boxes (N, 5) drawn into an image of ``shape`` (OpenCV: angle clockwise)."""
    mask = np.zeros(shape, np.uint8)
    for b in boxes:
        corners = cv2.boxPoints(((b[0], b[1]), (b[2], b[3]), -b[4]))
        cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 1, shift=4)
    return mask > 0


def test_boxes_follow_the_drawn_pixels(tmp_path):
    """Draw the boxes into the image, augment image and boxes together: the moved boxes cover the moved
    objects' pixels (up to the anti-aliased edges), and boxes whose centres moved but angles did not would
    not."""
    boxes = BOXES[:2]
    image = np.repeat(fill((IMAGE_H, IMAGE_W), boxes)[..., None] * np.uint8(255), 3, axis=2)
    augmentations = [T.RandomFlip(1.0, horizontal=True, vertical=False), T.Resize((IMAGE_H * 2, IMAGE_W * 2))]
    out = mapped(tmp_path, augmentations, boxes, image)
    pixels = out["image"].numpy()[0] > 127
    moved = fill(pixels.shape, out["instances"].gt_boxes.tensor.numpy())
    assert (pixels & moved).sum() / (pixels | moved).sum() > 0.88
    unturned = boxes * [-2, 2, 2, 2, 1] + [IMAGE_W * 2, 0, 0, 0, 0]
    unturned = fill(pixels.shape, unturned)
    assert (pixels & unturned).sum() / (pixels | unturned).sum() < 0.5


def test_mixed_box_modes_are_refused(tmp_path):
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8))
    record = {"file_name": str(path), "height": IMAGE_H, "width": IMAGE_W, "image_id": 0, "annotations": [
        {"bbox": [40.0, 30.0, 40.0, 12.0, 30.0], "bbox_mode": BoxMode.XYWHA_ABS, "category_id": 0},
        {"bbox": [1.0, 2.0, 10.0, 12.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
    ]}
    with pytest.raises(ValueError, match="image.png: the annotations mix oriented"):
        CheckedDatasetMapper(True, augmentations=[], image_format="BGR")(record)
