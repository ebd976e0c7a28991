"""Hostile or broken annotation and image input (issue 24): refused with the file and the entry or line named.

Malformed boxes, non-UTF-8 annotation files, XML entity expansion and external entities, deeply nested
JSON, COCO images outside the image folder, images-only COCO files in training, and images that are huge
(declared in a tiny header), truncated or undecodable on every reading path: the DOTA split, the tools, and
the training/test data loaders.
"""

import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from conftest import load_script, tiny_cfg
from test_dota_scenes import write_dota_folder
from test_voc_data import CLASSES, make_voc, obj, xml

from ds2d2.config import load_config
from ds2d2.data.coco import load_coco_detection, register_coco_detection
from ds2d2.data.dota import DotaFormatError, parse_dota_labels
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2.data.mapper import CheckedDatasetMapper
from ds2d2.data.voc import collect_voc_classes, load_voc_detection
from ds2d2.engine import Trainer
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS, ImageReadError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_catalogs")


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_jpeg(path: Path, width: int = 80, height: int = 60, truncate: bool = False) -> None:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    path.write_bytes(data[: len(data) // 2] if truncate else data)


def coco(annotations=None, file_name: str = "a.jpg") -> dict:
    return {
        "images": [{"id": 1, "file_name": file_name, "width": 80, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100}]
        if annotations is None else annotations,
        "categories": [{"id": 3, "name": "ship"}],
    }


def write_coco(folder: Path, content, name: str = "x.json") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content) if not isinstance(content, str) else content)
    return str(folder / name)


# ------------------------------------------------------------------------------------------------------------
# 6. Malformed boxes are refused, not dropped
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox", [[5, 5, -3, 10], [5, 5, 10, -0.5]], ids=["negative-width", "negative-height"]
)
def test_coco_box_of_negative_size_names_json_and_annotation(tmp_path, bbox):
    write_jpeg(tmp_path / "a.jpg")
    ann = {"id": 7, "image_id": 1, "category_id": 3, "bbox": bbox, "area": 1}
    json_file = write_coco(tmp_path, coco([ann]))
    message = re.escape(f"{json_file}: annotations[0] (id 7): 'bbox' {bbox!r} has a negative width or height")
    with pytest.raises(ValueError, match=message):
        register_coco_detection("neg", json_file, str(tmp_path))
    assert "neg" not in DatasetCatalog.list()


def test_coco_zero_size_box_is_dropped_and_counted_with_the_json_named(tmp_path, caplog):
    write_jpeg(tmp_path / "a.jpg")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0},  # zero width
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [70, 50, 20, 20], "area": 400},  # clipped
    ]
    json_file = write_coco(tmp_path, coco(annotations))
    register_coco_detection("zero", json_file, str(tmp_path))
    with caplog.at_level(logging.INFO, logger="ds2d2.data.coco"):
        (record,) = load_coco_detection(json_file, str(tmp_path), "zero")
    assert [a["bbox"] for a in record["annotations"]] == [[70, 50, 80, 60]]
    assert f"from {json_file}; clipped 1 boxes to their image, dropped 1 boxes empty after clipping (or of " \
        "zero size in the file)" in caplog.text


@pytest.mark.parametrize(
    "box, axis", [((30, 5, 20, 40), "x"), ((5, 30, 40, 20), "y")], ids=["xmin>xmax", "ymin>ymax"]
)
def test_voc_reversed_box_names_xml_and_object(tmp_path, box, axis):
    img, ann = make_voc(tmp_path, {"a": xml([obj("ship", (1, 1, 5, 5)), obj("vehicle", box)])})
    low, high = (box[0], box[2]) if axis == "x" else (box[1], box[3])
    where = f"{os.path.join(ann, 'a.xml')} object #1 (vehicle)"
    message = re.escape(f"{where}: reversed box: <{axis}min> {low} > <{axis}max> {high}")
    with pytest.raises(ValueError, match=message):
        load_voc_detection(img, ann, CLASSES)


# ------------------------------------------------------------------------------------------------------------
# 7b. Non-UTF-8 annotation files
# ------------------------------------------------------------------------------------------------------------


def test_non_utf8_coco_json_names_the_file(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    text = json.dumps(coco()).replace('"ship"', '"caf\u00e9"')
    (tmp_path / "x.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'x.json'}: not UTF-8 text (byte ")):
        register_coco_detection("latin", str(tmp_path / "x.json"), str(tmp_path))


def test_non_utf8_dota_label_names_file_and_line(tmp_path):
    label = tmp_path / "P0000.txt"
    label.write_bytes(b"gsd:0.1\n1 1 9 1 9 9 1 9 plane 0\n1 1 9 1 9 9 1 9 caf\xe9 0\n")
    with pytest.raises(DotaFormatError, match=re.escape(f"{label}:3: not UTF-8 text")):
        parse_dota_labels(label)


def test_non_utf8_dota_label_named_by_prepare_dota(tmp_path, capsys):
    prepare = load_script(REPO / "datasets" / "prepare_dota.py", "prepare_dota")
    write_dota_folder(tmp_path / "src", sizes=((300, 280),))
    label = tmp_path / "src" / "labelTxt" / "P0000.txt"
    label.write_bytes(b"\xff\xfe" + label.read_bytes())  # a UTF-16 byte-order mark
    assert prepare.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst")]) == 1
    assert f"prepare_dota: error: {label}:1: not UTF-8 text" in capsys.readouterr().err


def test_non_utf8_voc_xml_and_split_file_are_named(tmp_path):
    img, ann = make_voc(tmp_path, {"a": xml([obj("ship", (1, 1, 5, 5))])})
    Path(ann, "a.xml").write_bytes(xml([obj("caf\u00e9", (1, 1, 5, 5))]).encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{os.path.join(ann, 'a.xml')}: not valid XML")):
        collect_voc_classes(ann)
    split = tmp_path / "train.txt"
    split.write_bytes(b"a\n\xe9t\xe9\n")
    with pytest.raises(ValueError, match=re.escape(f"{split}:2: not UTF-8 text")):
        load_voc_detection(img, ann, CLASSES, str(split))


# ------------------------------------------------------------------------------------------------------------
# 10. XML entity expansion and external entities
# ------------------------------------------------------------------------------------------------------------


def billion_laughs(levels: int = 5, copies: int = 10) -> str:
    """A VOC XML whose class name expands to ``copies ** levels`` times "lol" (300 KB for 5 x 10)."""
    entities = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{k} "{f"&l{k - 1};" * copies}">' for k in range(1, levels + 1)
    ]
    doctype = f"<!DOCTYPE annotation [{''.join(entities)}]>"
    return '<?xml version="1.0"?>' + doctype + xml([obj(f"&l{levels};", (1, 1, 5, 5))])


def test_billion_laughs_xml_is_refused_naming_the_file(tmp_path):
    img, ann = make_voc(tmp_path, {"a": xml([obj("ship", (1, 1, 5, 5))]), "b": billion_laughs()})
    message = re.escape(f"{os.path.join(ann, 'b.xml')}: refused: the XML declares entities")
    with pytest.raises(ValueError, match=message):
        collect_voc_classes(ann)
    with pytest.raises(ValueError, match=message):
        load_voc_detection(img, ann, ["lol" * 10 ** 5, "ship"])


def test_external_entity_xml_is_refused_and_reads_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7f3a")
    doctype = f'<!DOCTYPE annotation [<!ENTITY leak SYSTEM "file://{secret}">]>'
    text = '<?xml version="1.0"?>' + doctype + xml([obj("&leak;", (1, 1, 5, 5))])
    img, ann = make_voc(tmp_path / "voc", {"a": text})
    with pytest.raises(ValueError) as error:
        collect_voc_classes(ann)
    assert str(error.value).startswith(f"{os.path.join(ann, 'a.xml')}: refused: the XML declares entities")
    assert "MARKER-7f3a" not in str(error.value)


# ------------------------------------------------------------------------------------------------------------
# 9. Deeply nested JSON, images-only COCO files in training
# ------------------------------------------------------------------------------------------------------------


def test_deeply_nested_coco_json_names_the_file(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    json_file = write_coco(tmp_path, "[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=re.escape(f"{json_file}: nested too deeply to parse")):
        register_coco_detection("deep", json_file, str(tmp_path))


def test_images_only_coco_is_a_test_set_but_refused_for_training(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    json_file = write_coco(tmp_path, coco(annotations=[]))
    register_coco_detection("images_only", json_file, str(tmp_path))
    assert [r["annotations"] for r in DatasetCatalog.get("images_only")] == [[]]
    cfg = tiny_cfg("RetinaNet", ["DATALOADER.NUM_WORKERS", 0])
    cfg.DATASETS.TRAIN = ("images_only",)
    message = re.escape(f"DATASETS.TRAIN: dataset 'images_only' comes from {json_file}, whose 'annotations'")
    with pytest.raises(ValueError, match=message):
        Trainer.build_train_loader(cfg)


# ------------------------------------------------------------------------------------------------------------
# 11. COCO file_name leading outside the image folder
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """tmp/images (the image folder, with a.jpg and sub/), tmp/outside.jpg and tmp/images/link.jpg -> it."""
    (tmp_path / "images" / "sub").mkdir(parents=True)
    write_jpeg(tmp_path / "images" / "a.jpg")
    write_jpeg(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", tmp_path / "images" / "link.jpg")
    return tmp_path


@pytest.mark.parametrize("kind", ["dot-dot", "absolute", "symlink"])
def test_coco_image_outside_the_folder_is_refused(outside, kind):
    file_name = {"dot-dot": "../outside.jpg", "absolute": str(outside / "outside.jpg"), "symlink": "link.jpg"}
    json_file = write_coco(outside / "ann", coco(file_name=file_name[kind]))
    message = re.escape(
        f"{json_file}: images[0] (id 1): file_name {file_name[kind]!r} leads outside the image folder "
        f"{str(outside / 'images')!r} (to {str(outside / 'outside.jpg')!r})"
    )
    with pytest.raises(ValueError, match=message):
        register_coco_detection("out", json_file, str(outside / "images"))
    register_coco_detection("out", json_file, str(outside / "images"), allow_outside_images=True)
    assert DatasetCatalog.get("out")[0]["file_name"] == os.path.join(outside / "images", file_name[kind])


def test_coco_path_that_stays_inside_is_accepted(outside):
    json_file = write_coco(outside / "ann", coco(file_name="sub/../a.jpg"))
    assert register_coco_detection("inside", json_file, str(outside / "images")) == ["ship"]


def test_own_coco_entry_allows_outside_images_only_when_told(outside):
    json_file = write_coco(outside / "ann", coco(file_name="../outside.jpg"))
    opts = ["DATASETS.OWN.mine.FORMAT", "coco", "DATASETS.OWN.mine.JSON", json_file,
            "DATASETS.OWN.mine.IMAGES", str(outside / "images"), "DATASETS.TRAIN", "('mine',)"]
    base = str(REPO / "configs" / "synthetic" / "Base-RetinaNet.yaml")
    with pytest.raises(ValueError, match=r"DATASETS\.OWN\.mine: .*leads outside the image folder"):
        load_config(base, opts)
    cfg = load_config(base, opts + ["DATASETS.OWN.mine.ALLOW_OUTSIDE_IMAGES", "True"])
    assert cfg.DATASETS.OWN.mine.ALLOW_OUTSIDE_IMAGES is True
    assert DatasetCatalog.get("mine")[0]["file_name"] == os.path.join(outside / "images", "../outside.jpg")


# ------------------------------------------------------------------------------------------------------------
# 8, 9. Huge, truncated and undecodable images: training/test loaders, DOTA split, tools
# ------------------------------------------------------------------------------------------------------------


def one_image_dataset(tmp_path: Path, image: Path) -> str:
    """Register COCO dataset "one" of the single image ``image`` (80 x 60, one box); returns its name."""
    json_file = write_coco(tmp_path / "ann", coco(file_name=image.name))
    register_coco_detection("one", json_file, str(image.parent))
    return "one"


def test_truncated_jpeg_in_training_names_the_file(tmp_path):
    write_jpeg(tmp_path / "a.jpg", truncate=True)
    cfg = tiny_cfg("RetinaNet", ["DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 1, "SEED", 1])
    cfg.DATASETS.TRAIN = (one_image_dataset(tmp_path, tmp_path / "a.jpg"),)
    with pytest.raises(ImageReadError, match=re.escape(f"'{tmp_path / 'a.jpg'}' is a truncated JPEG")):
        next(iter(Trainer.build_train_loader(cfg)))


def test_decompression_bomb_in_testing_names_the_file_and_the_key(tmp_path):
    (tmp_path / "a.png").write_bytes(png_header(30000, 30000))  # over PIL's limit and ds2d2's default
    cfg = tiny_cfg("RetinaNet", ["DATALOADER.NUM_WORKERS", 0])
    name = one_image_dataset(tmp_path, tmp_path / "a.png")
    message = re.escape(f"'{tmp_path / 'a.png'}' is 30000 x 30000") + r".*INPUT\.MAX_PIXELS"
    with pytest.raises(ImageReadError, match=message):
        next(iter(Trainer.build_test_loader(cfg, name)))


def test_input_max_pixels_is_the_readers_limit(tmp_path):
    write_jpeg(tmp_path / "a.jpg")  # 80 x 60 = 4800 pixels
    cfg = tiny_cfg("RetinaNet")
    assert cfg.INPUT.MAX_PIXELS == DEFAULT_MAX_PIXELS
    record = {"file_name": str(tmp_path / "a.jpg"), "height": 60, "width": 80, "image_id": 1, "annotations": [
        {"bbox": [1.0, 2.0, 30.0, 40.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]}
    cfg.INPUT.MAX_PIXELS = 4800
    assert CheckedDatasetMapper(cfg, True)(record)["instances"].gt_classes.tolist() == [0]
    cfg.INPUT.MAX_PIXELS = 4799
    with pytest.raises(ImageReadError, match=re.escape(f"'{tmp_path / 'a.jpg'}' is 80 x 60 = 4800 pixels")):
        CheckedDatasetMapper(cfg, True)(record)
    cfg.INPUT.MAX_PIXELS = 0
    with pytest.raises(ValueError, match=r"INPUT\.MAX_PIXELS must be an integer >= 1"):
        CheckedDatasetMapper(cfg, True)


def test_mapper_gives_detectron2s_pixels_in_rgb_and_bgr(tmp_path):
    from detectron2.data import DatasetMapper

    write_jpeg(tmp_path / "a.jpg")
    record = {"file_name": str(tmp_path / "a.jpg"), "height": 60, "width": 80, "image_id": 1}
    for image_format in ("BGR", "RGB"):
        cfg = tiny_cfg("RetinaNet", ["INPUT.FORMAT", image_format])
        ours, theirs = CheckedDatasetMapper(cfg, False)(record), DatasetMapper(cfg, False)(record)
        assert ours["image"].equal(theirs["image"]), image_format


def test_dota_split_refuses_an_image_over_the_limit_before_writing(tmp_path):
    write_dota_folder(tmp_path / "src", sizes=((300, 280), (200, 100)))
    image = tmp_path / "src" / "images" / "P0000.png"
    with pytest.raises(DotaFormatError, match=re.escape(f"'{image}' is 300 x 280 = 84000 pixels, more than")):
        split_dota(tmp_path / "src", tmp_path / "dst", settings=SplitSettings(256, 64), num_workers=1,
                   progress=False, max_pixels=83999)
    assert not (tmp_path / "dst").exists()
    report = split_dota(tmp_path / "src", tmp_path / "dst", settings=SplitSettings(256, 64), num_workers=1,
                        progress=False, max_pixels=84000)
    assert report.split_now == 2


def test_prepare_dota_max_pixels_flag(tmp_path, capsys):
    prepare = load_script(REPO / "datasets" / "prepare_dota.py", "prepare_dota")
    write_dota_folder(tmp_path / "src", sizes=((300, 280),))
    argv = ["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--patch-size", "256"]
    argv += ["--gap", "64"]
    with pytest.raises(SystemExit):
        prepare.main(argv + ["--max-pixels", "0"])
    assert "--max-pixels: must be an integer of at least 1" in capsys.readouterr().err
    assert prepare.main(argv + ["--max-pixels", "1000"]) == 1
    image = tmp_path / "src" / "images" / "P0000.png"
    assert f"prepare_dota: error: '{image}' is 300 x 280 = 84000 pixels" in capsys.readouterr().err


def test_infer_large_image_refuses_a_bomb_and_checks_max_pixels(tmp_path, capsys):
    infer = load_script(REPO / "tools" / "infer_large_image.py", "infer_large_image")
    (tmp_path / "bomb.png").write_bytes(png_header(100000, 100000))
    argv = ["--onnx", str(tmp_path / "none.onnx"), "--input", str(tmp_path / "bomb.png"), "--output",
            str(tmp_path / "out")]
    assert infer.main(argv) == 1
    bomb = tmp_path / "bomb.png"
    assert f"infer_large_image: error: '{bomb}' is 100000 x 100000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main(argv + ["--max-pixels", "-5"])
    assert "--max-pixels: must be an integer of at least 1" in capsys.readouterr().err
