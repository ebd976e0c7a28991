"""Pascal-VOC loader and DIOR registration: conversions, odd layouts and every bad-input case."""

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import cv2
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ds2d2.data.builtin import DIOR_CLASSES, register_all_dior
from ds2d2.data.voc import load_voc_detection, register_voc_detection

CLASSES = ["airplane", "ship", "vehicle"]


pytestmark = pytest.mark.usefixtures("restore_catalogs")


def obj(name: str, box: Sequence, difficult: Optional[str] = None) -> str:
    tags = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return f"<object><name>{name}</name>{diff}<bndbox>{tags}</bndbox></object>"


def xml(objects: Sequence[str] = (), size: Optional[tuple] = (100, 80), filename: str = "x.jpg") -> str:
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    return f"<annotation><filename>{filename}</filename>{size_xml}{''.join(objects)}</annotation>"


def make_voc(root: Path, items: dict, image_ext: str = ".jpg") -> tuple:
    """items: id -> XML text. Writes root/img/<id><ext> (empty: never decoded) and root/ann/<id>.xml."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(parents=True, exist_ok=True)
    for image_id, text in items.items():
        (root / "ann" / f"{image_id}.xml").write_text(text)
        (root / "img" / f"{image_id}{image_ext}").write_bytes(b"")
    return str(root / "img"), str(root / "ann")


def test_load_converts_voc_coordinates_like_detectron2(tmp_path):
    img, ann = make_voc(
        tmp_path,
        {
            "b": xml([obj("ship", (1, 1, 100, 80)), obj("vehicle", (11, 21, 30, 40), difficult="1")]),
            "a": xml([obj("airplane", (5.5, 6, 7, 8), difficult="0")], size=(64, 32)),
        },
    )
    dicts = load_voc_detection(img, ann, CLASSES)
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    a, b = dicts
    assert (a["height"], a["width"], a["file_name"]) == (32, 64, os.path.join(img, "a.jpg"))
    assert a["annotations"] == [
        {"bbox": [4.5, 5.0, 7.0, 8.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "difficult": 0}
    ]
    # 1-based inclusive (1, 1, W, H) is the whole image (0, 0, W, H) in continuous coordinates
    assert b["annotations"][0]["bbox"] == [0.0, 0.0, 100.0, 80.0]
    assert b["annotations"][1] == {
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 2,
        "difficult": 1,
    }
    assert all(isinstance(v, float) for d in dicts for o in d["annotations"] for v in o["bbox"])


@pytest.mark.parametrize("disk_ext", [".png", ".tif", ".TIFF", ".jpeg"])
def test_image_found_by_stem_whatever_the_xml_filename_says(tmp_path, disk_ext):
    img, ann = make_voc(tmp_path, {"0001": xml([obj("ship", (2, 2, 9, 9))], filename="0001.jpg")}, disk_ext)
    (tmp_path / "img" / "0001.txt").write_text("not an image")
    (d,) = load_voc_detection(img, ann, CLASSES)
    assert d["file_name"] == os.path.join(img, "0001" + disk_ext)


def test_ambiguous_or_missing_image_names_the_xml(tmp_path):
    img, ann = make_voc(tmp_path, {"0001": xml()})
    (tmp_path / "img" / "0001.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"0001\.xml: several images"):
        load_voc_detection(img, ann, CLASSES)
    for f in (tmp_path / "img").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"0001\.xml: no image"):
        load_voc_detection(img, ann, CLASSES)


def test_split_files_order_blank_lines_and_concatenation(tmp_path):
    img, ann = make_voc(tmp_path, {i: xml() for i in ("a", "b", "c", "d")})
    (tmp_path / "train.txt").write_text("c\n\n  a \n")
    (tmp_path / "val.txt").write_text("\nd\n")
    dicts = load_voc_detection(img, ann, CLASSES, str(tmp_path / "train.txt"))
    assert [d["image_id"] for d in dicts] == ["c", "a"]
    dicts = load_voc_detection(img, ann, CLASSES, [str(tmp_path / "train.txt"), str(tmp_path / "val.txt")])
    assert [d["image_id"] for d in dicts] == ["c", "a", "d"]


@pytest.mark.parametrize(
    "missing, message",
    [("xml", r"no annotation zz\.xml"), ("image", r"no image for id 'zz'")],
)
def test_split_line_naming_missing_file_gives_file_and_line(tmp_path, missing, message):
    img, ann = make_voc(tmp_path, {"a": xml(), "zz": xml()})
    os.remove(os.path.join(ann, "zz.xml") if missing == "xml" else os.path.join(img, "zz.jpg"))
    split = tmp_path / "test.txt"
    split.write_text("a\n\nzz\n")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{split}:3") + ".*" + message):
        load_voc_detection(img, ann, CLASSES, str(split))


def test_duplicate_split_id_is_an_error(tmp_path):
    img, ann = make_voc(tmp_path, {"a": xml()})
    (tmp_path / "s1.txt").write_text("a\n")
    (tmp_path / "s2.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"s2\.txt:1: id 'a' is listed twice \(first at .*s1\.txt:1\)"):
        load_voc_detection(img, ann, CLASSES, [str(tmp_path / "s1.txt"), str(tmp_path / "s2.txt")])


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><size>", r"bad\.xml: not valid XML"),
        (xml(size=None), r"bad\.xml: no <size>"),
        (xml(size=(0, 80)), r"bad\.xml: <size><width> must be a positive integer"),
        (xml(size=(100, "abc")), r"bad\.xml: <size><height> is not a number"),
        (
            xml([obj("ship", (1, 1, 5, 5)), obj("ship", (1, "x", 5, 5))]),
            r"bad\.xml object #1: <ymin> is not a num",
        ),
        (xml([obj("ship", (1, 1, 5, "nan"))]), r"bad\.xml object #0: <ymax> is not finite"),
        (xml([obj("ship", (1, 1, 5, ""))]), r"bad\.xml object #0: missing or empty <ymax>"),
        (xml(["<object><name>ship</name></object>"]), r"bad\.xml object #0: no <bndbox>"),
        (xml(["<object><bndbox/></object>"]), r"bad\.xml object #0: missing or empty <name>"),
        (xml([obj("ship", (1, 1, 5, 5), difficult="2")]), r"bad\.xml object #0: <difficult> must be 0 or 1"),
        (
            xml([obj("ship", (1, 1, 5, 5)), obj("tank", (1, 1, 5, 5))]),
            r"bad\.xml object #1: unknown class 'tank'; known classes: \['airplane', 'ship', 'vehicle'\]",
        ),
    ],
)
def test_bad_xml_names_file_and_object(tmp_path, text, message):
    img, ann = make_voc(tmp_path, {"good": xml([obj("ship", (1, 1, 5, 5))]), "bad": text})
    with pytest.raises(ValueError, match=message):
        load_voc_detection(img, ann, CLASSES)


def test_boxes_clipped_and_empty_ones_dropped_and_counted(tmp_path, caplog):
    objects = [
        obj("ship", (-9, 5, 20, 200)),  # partly outside: clipped to (0, 4, 20, 80)
        obj("ship", (150, 10, 190, 20)),  # entirely right of the 100-px image: empty after clipping
        obj("ship", (5, 5, 5, 5)),  # one pixel (1-based inclusive): kept as (4, 4, 5, 5)
    ]
    img, ann = make_voc(tmp_path, {"a": xml(objects), "b": xml([obj("ship", (0, 0, 101, 10))])})
    with caplog.at_level(logging.INFO, logger="ds2d2.data.voc"):
        a, b = load_voc_detection(img, ann, CLASSES)
    assert [o["bbox"] for o in a["annotations"]] == [[0.0, 4.0, 20.0, 80.0], [4.0, 4.0, 5.0, 5.0]]
    assert b["annotations"][0]["bbox"] == [0.0, 0.0, 100.0, 10.0]
    messages = [r.getMessage() for r in caplog.records]
    (total,) = [m for m in messages if m.startswith("Loaded")]
    assert "clipped 2 boxes" in total and "dropped 1 boxes" in total and ann in total
    assert "(in 2 XML files)" in total
    per_file = [m for m in messages if m.startswith(os.path.join(ann, ""))]
    assert per_file == [
        f"{os.path.join(ann, 'a.xml')}: clipped 1 boxes to the image, dropped 1 boxes empty after clipping",
        f"{os.path.join(ann, 'b.xml')}: clipped 1 boxes to the image, dropped 0 boxes empty after clipping",
    ]


def test_missing_directories_fail_at_registration(tmp_path):
    img, ann = make_voc(tmp_path, {"a": xml()})
    with pytest.raises(FileNotFoundError, match="image directory .*nope"):
        register_voc_detection("t_voc", image_dir=str(tmp_path / "nope"), annotation_dir=ann, classes=CLASSES)
    with pytest.raises(FileNotFoundError, match="annotation directory .*nope"):
        register_voc_detection("t_voc", image_dir=img, annotation_dir=str(tmp_path / "nope"), classes=CLASSES)
    with pytest.raises(FileNotFoundError, match=r"split file .*val\.txt"):
        register_voc_detection(
            "t_voc", image_dir=img, annotation_dir=ann, classes=CLASSES, split_file=str(tmp_path / "val.txt")
        )
    assert "t_voc" not in DatasetCatalog.list()


def test_register_sets_metadata_and_reports_xml_errors_on_load(tmp_path):
    img, ann = make_voc(tmp_path, {"a": xml([obj("ship", (1, 1, 5, 5))]), "b": xml(size=None)})
    (tmp_path / "split.txt").write_text("a\n")
    split = str(tmp_path / "split.txt")
    register_voc_detection("t_voc_a", image_dir=img, annotation_dir=ann, classes=CLASSES, split_file=split)
    register_voc_detection("t_voc_a", image_dir=img, annotation_dir=ann, classes=CLASSES, split_file=split)
    meta = MetadataCatalog.get("t_voc_a")
    assert (meta.thing_classes, meta.evaluator_type) == (CLASSES, "voc_detection")
    assert (meta.image_dir, meta.annotation_dir, meta.split_file) == (img, ann, split)
    assert [d["image_id"] for d in DatasetCatalog.get("t_voc_a")] == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        register_voc_detection("t_voc_a", image_dir=img, annotation_dir=ann, classes=CLASSES)

    register_voc_detection("t_voc_all", image_dir=img, annotation_dir=ann, classes=CLASSES)
    with pytest.raises(ValueError, match=r"b\.xml: no <size>"):
        DatasetCatalog.get("t_voc_all")


def make_dior(root: Path, annotation_folder: str = "Annotations/Horizontal Bounding Boxes") -> None:
    """Three DIOR images: train 00001, val 00002 (in JPEGImages-trainval), test 00003 (in JPEGImages-test)."""
    dior = root / "DIOR"
    for folder in (annotation_folder, "JPEGImages-trainval", "JPEGImages-test", "ImageSets/Main"):
        (dior / folder).mkdir(parents=True, exist_ok=True)
    for image_id, split, cls in (
        ("00001", "train", "windmill"),
        ("00002", "val", "airplane"),
        ("00003", "test", "dam"),
    ):
        (dior / annotation_folder / f"{image_id}.xml").write_text(
            xml([obj(cls, (1, 1, 9, 9))], size=(800, 800))
        )
        image_folder = "JPEGImages-test" if split == "test" else "JPEGImages-trainval"
        (dior / image_folder / f"{image_id}.jpg").write_bytes(b"")
        (dior / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{image_id}\n")


@pytest.mark.parametrize("annotation_folder", ["Annotations/Horizontal Bounding Boxes", "Annotations"])
def test_register_all_dior_reads_the_release_layout(tmp_path, annotation_folder):
    make_dior(tmp_path, annotation_folder)
    register_all_dior(str(tmp_path))
    ids = {
        split: [d["image_id"] for d in DatasetCatalog.get(f"dior_{split}")]
        for split in ("train", "val", "test")
    }
    assert ids == {"train": ["00001"], "val": ["00002"], "test": ["00003"]}
    trainval = DatasetCatalog.get("dior_trainval")
    assert [d["image_id"] for d in trainval] == ["00001", "00002"]
    assert [d["annotations"][0]["category_id"] for d in trainval] == [DIOR_CLASSES.index("windmill"), 0]
    assert "JPEGImages-trainval" in trainval[1]["file_name"]
    assert "JPEGImages-test" in DatasetCatalog.get("dior_test")[0]["file_name"]
    meta = MetadataCatalog.get("dior_test")
    assert meta.thing_classes == list(DIOR_CLASSES) and meta.evaluator_type == "voc_detection"
    assert meta.annotation_dir == str(tmp_path / "DIOR" / annotation_folder)
    assert len(MetadataCatalog.get("dior_trainval").split_file) == 2


def test_register_all_dior_is_lazy_and_idempotent(tmp_path):
    register_all_dior(str(tmp_path))  # nothing exists: registering must not fail
    register_all_dior(str(tmp_path))  # again: no-op, no "already registered"
    assert MetadataCatalog.get("synthetic_dior_test").thing_classes == list(DIOR_CLASSES)
    for name in ("dior_trainval", "synthetic_dior_test"):
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + ".*DETECTRON2_DATASETS"):
            DatasetCatalog.get(name)
    # a layout that differs from the one assumed at registration (plain Annotations/) needs re-registering
    make_dior(tmp_path, "Annotations")
    with pytest.raises(ValueError, match="changed since registration.*register_all_dior"):
        DatasetCatalog.get("dior_test")
    register_all_dior(str(tmp_path))
    assert [d["image_id"] for d in DatasetCatalog.get("dior_test")] == ["00003"]


def test_register_all_dior_reports_missing_split_list(tmp_path):
    make_dior(tmp_path)
    os.remove(tmp_path / "DIOR" / "ImageSets" / "Main" / "val.txt")
    register_all_dior(str(tmp_path))
    assert DatasetCatalog.get("dior_train")
    with pytest.raises(FileNotFoundError, match=r"split file .*val\.txt"):
        DatasetCatalog.get("dior_trainval")


def test_synthetic_dior_loads_through_the_dior_path(tmp_path):
    synthetic = pytest.importorskip("ds2d2.data.synthetic")
    synthetic.write_synthetic_dior(tmp_path / "synthetic_dior", num_images=8, seed=0, image_size=64)
    register_all_dior(str(tmp_path))
    splits = {
        split: DatasetCatalog.get(f"synthetic_dior_{split}") for split in ("train", "val", "trainval", "test")
    }
    ids = {split: [d["image_id"] for d in dicts] for split, dicts in splits.items()}
    assert sorted(ids["trainval"]) == sorted(ids["train"] + ids["val"])
    assert ids["test"] and not set(ids["test"]) & set(ids["trainval"])
    records = splits["trainval"] + splits["test"]
    assert sum(len(d["annotations"]) for d in records) > 0
    for d in records:
        assert cv2.imread(d["file_name"]).shape[:2] == (d["height"], d["width"]) == (64, 64)
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 0 <= a["category_id"] < len(DIOR_CLASSES)
