"""Datasets declared in the config (DATASETS.OWN): VOC folders, COCO JSONs and raw DOTA folders written from
the synthetic generator, registered, trained on and evaluated through train_net.py and run_pipeline.py; the
teacher of stage 3 built from the config its own run recorded; bad input named."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ds2d2.checks import check_dataset_classes
from ds2d2.data.coco import load_coco_detection, register_coco_detection
from ds2d2.config import load_config
from ds2d2.data.own import register_own_datasets
from ds2d2.data.synthetic import write_synthetic_dior, write_synthetic_dota
from ds2d2.teacher import check_teacher_classes, resolve_teacher_config

from conftest import tiny_stages

ROOT = Path(__file__).resolve().parents[1]
OWN = ROOT / "configs" / "own"
VOC_BASE, COCO_BASE, DOTA_BASE = (str(OWN / f / "Base-RetinaNet.yaml") for f in ("voc", "coco", "dota"))

# every stage tiny and on CPU: R-18 with a narrow FPN and head, 64 px inputs, 2 iterations of 2 images
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
]


# ------------------------------------------------------------------------------------------------------------
# Data in the three formats, from the synthetic generator
# ------------------------------------------------------------------------------------------------------------


def xml_objects(xml_file: Path) -> List[dict]:
    text = xml_file.read_text()
    objects = []
    for name, box in re.findall(r"<name>(.*?)</name>.*?<bndbox>(.*?)</bndbox>", text, re.S):
        tags = ("xmin", "ymin", "xmax", "ymax")
        coords = [float(re.search(f"<{t}>(.*?)</{t}>", box).group(1)) for t in tags]
        objects.append({"name": name, "box": coords})
    return objects


def write_voc(root: Path) -> Path:
    """A plain VOC folder (JPEGImages/, Annotations/, ImageSets/Main/{train,test}.txt) of 8 synthetic 64 px
    images: train = the generator's train + val, test = its test."""
    dior = write_synthetic_dior(root / "dior", num_images=8, seed=0, image_size=64)
    voc = root / "voc"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    for image in sorted(dior.glob("JPEGImages-*/*.jpg")):
        shutil.copy(image, voc / "JPEGImages" / image.name)
    for xml in sorted((dior / "Annotations" / "Horizontal Bounding Boxes").glob("*.xml")):
        shutil.copy(xml, voc / "Annotations" / xml.name)
    lists = dior / "ImageSets" / "Main"
    train = (lists / "train.txt").read_text() + (lists / "val.txt").read_text()
    (voc / "ImageSets/Main/train.txt").write_text(train)
    shutil.copy(lists / "test.txt", voc / "ImageSets/Main/test.txt")
    shutil.rmtree(dior)
    return voc


def voc_classes(voc: Path) -> List[str]:
    return sorted({o["name"] for xml in (voc / "Annotations").glob("*.xml") for o in xml_objects(xml)})


def write_coco(voc: Path, root: Path) -> Path:
    """The VOC folder as COCO: images/, annotations/{train,test}.json; category ids 10, 20, ... (not 1..K)."""
    classes = voc_classes(voc)
    coco = root / "coco"
    shutil.copytree(voc / "JPEGImages", coco / "images")
    (coco / "annotations").mkdir()
    categories = [{"id": 10 * (i + 1), "name": name} for i, name in enumerate(classes)]
    for split in ("train", "test"):
        data = {"info": {}, "images": [], "annotations": [], "categories": categories}
        for stem in (voc / "ImageSets/Main" / f"{split}.txt").read_text().split():
            data["images"].append({"id": int(stem), "file_name": f"{stem}.jpg", "width": 64, "height": 64})
            for obj in xml_objects(voc / "Annotations" / f"{stem}.xml"):
                x0, y0, x1, y1 = obj["box"]
                w, h = x1 - x0 + 1, y1 - y0 + 1
                data["annotations"].append({
                    "id": len(data["annotations"]) + 1, "image_id": int(stem), "bbox": [x0 - 1, y0 - 1, w, h],
                    "area": w * h, "iscrowd": 0, "category_id": 10 * (classes.index(obj["name"]) + 1),
                })
        (coco / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return coco


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("own_data")
    voc = write_voc(root)
    dota = write_synthetic_dota(root / "dota", num_images=5, seed=0, image_size=160, object_scale=0.5)
    return {"root": root, "voc": voc, "coco": write_coco(voc, root), "dota": dota}


def roots(fmt: str, root: Path) -> list:
    """Command-line overrides pointing the example config's train and test entries at ``root``."""
    return [f"DATASETS.OWN.my_{fmt}_train.ROOT", str(root), f"DATASETS.OWN.my_{fmt}_test.ROOT", str(root)]


def voc_opts(data, **overrides) -> list:
    return roots("voc", data["voc"]) + [v for pair in overrides.items() for v in pair]


def coco_opts(data) -> list:
    return roots("coco", data["coco"])


# ------------------------------------------------------------------------------------------------------------
# Registration from the config (in process)
# ------------------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("restore_catalogs")


def test_voc_entries_register_and_record_their_classes(data, tmp_path, monkeypatch):
    cfg = load_config(VOC_BASE, voc_opts(data))
    classes = voc_classes(data["voc"])
    entry = cfg.DATASETS.OWN.my_voc_train
    assert entry.CLASSES == classes and entry.ROOT == str(data["voc"])
    assert entry.IMAGES == str(data["voc"] / "JPEGImages")
    assert entry.SPLIT_FILE == str(data["voc"] / "ImageSets" / "Main" / "train.txt")
    meta = MetadataCatalog.get("my_voc_train")
    assert meta.evaluator_type == "voc_detection" and meta.thing_classes == classes
    train, test = DatasetCatalog.get("my_voc_train"), DatasetCatalog.get("my_voc_test")
    assert len(train) == 6 and len(test) == 2
    assert not {d["image_id"] for d in train} & {d["image_id"] for d in test}
    # the config as recorded (config.yaml) registers the same datasets again (a no-op), from any directory
    (tmp_path / "config.yaml").write_text(cfg.dump())
    monkeypatch.chdir(tmp_path)
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.DATASETS.OWN == cfg.DATASETS.OWN
    assert register_own_datasets(again, ["my_voc_test"]) == ["my_voc_test"]


def test_coco_entries_take_classes_and_ids_from_the_json(data):
    cfg = load_config(COCO_BASE, coco_opts(data))
    meta = MetadataCatalog.get("my_coco_train")
    classes = voc_classes(data["voc"])
    assert meta.evaluator_type == "coco" and meta.thing_classes == classes
    assert meta.json_file == str(data["coco"] / "annotations" / "train.json")
    assert cfg.DATASETS.OWN.my_coco_test.CLASSES == classes
    dicts = DatasetCatalog.get("my_coco_train")
    load_config(VOC_BASE, voc_opts(data))
    voc = {d["image_id"]: d for d in DatasetCatalog.get("my_voc_train")}
    assert len(dicts) == len(voc) == 6
    for d in dicts:  # the same boxes and classes as the VOC folder they were written from
        expected = voc[f"{d['image_id']:05d}"]["annotations"]
        assert [a["category_id"] for a in d["annotations"]] == [a["category_id"] for a in expected]
        for a, b in zip(d["annotations"], expected):
            assert a["bbox_mode"] == BoxMode.XYXY_ABS and a["bbox"] == pytest.approx(b["bbox"])


def test_entries_can_be_added_and_overridden_on_the_command_line(data):
    json_file = str(data["coco"] / "annotations" / "test.json")
    opts = coco_opts(data) + [
        "DATASETS.OWN.extra.FORMAT", "coco", "DATASETS.OWN.extra.JSON", json_file,
        "DATASETS.OWN.extra.IMAGES", str(data["coco"] / "images"), "DATASETS.TEST", "('extra',)",
    ]
    cfg = load_config(COCO_BASE, opts)
    assert cfg.DATASETS.OWN.extra.JSON == json_file and len(DatasetCatalog.get("extra")) == 2
    with pytest.raises(ValueError, match=r"DATASETS.OWN.other.ROOT: no dataset 'other' is declared .*FORMAT"):
        load_config(COCO_BASE, ["DATASETS.OWN.other.ROOT", "/tmp"])


def test_the_same_name_for_other_data_is_refused(data):
    load_config(VOC_BASE, voc_opts(data))
    opts = voc_opts(data, **{"DATASETS.OWN.my_voc_train.SPLIT_FILE": "ImageSets/Main/test.txt"})
    expected = (r"DATASETS.OWN.my_voc_train: dataset name 'my_voc_train' is already registered by a "
                r"DATASETS.OWN entry .*train.txt.*this entry is .*test.txt")
    with pytest.raises(ValueError, match=expected):
        load_config(VOC_BASE, opts)
    builtin = ["DATASETS.OWN.dior_train.FORMAT", "voc", "DATASETS.OWN.dior_train.ROOT", str(data["voc"])]
    with pytest.raises(ValueError, match="dataset name 'dior_train' is already registered elsewhere"):
        load_config(VOC_BASE, voc_opts(data) + builtin)


def test_a_name_given_twice_in_the_yaml_is_refused(tmp_path, data):
    config = tmp_path / "twice.yaml"
    config.write_text(
        f'_BASE_: "{VOC_BASE}"\nDATASETS:\n  OWN:\n    a:\n      FORMAT: voc\n      ROOT: "{data["voc"]}"\n'
        f'    a:\n      FORMAT: voc\n      ROOT: "/elsewhere"\n'
    )
    with pytest.raises(ValueError, match=r"twice.yaml:7: DATASETS.OWN.a is given twice \(first at line 4\)"):
        load_config(str(config), voc_opts(data))


@pytest.mark.parametrize(
    "opts, message",
    [
        (["DATASETS.OWN.my_voc_train.ROOT", "/no/such/folder"],
         r"DATASETS.OWN.my_voc_train.ROOT: folder '/no/such/folder' does not exist"),
        (["DATASETS.OWN.my_voc_train.SPLIT_FILE", "ImageSets/Main/nope.txt"],
         r"DATASETS.OWN.my_voc_train.SPLIT_FILE: file '.*nope.txt' does not exist"),
        (["DATASETS.OWN.my_voc_train.FORMAT", "yolo"], r"DATASETS.OWN.my_voc_train.FORMAT must be one of"),
        (["DATASETS.OWN.my_voc_train.CLASSES", "['ship', 'ship']"],
         r"my_voc_train.CLASSES names a class twice"),
        (["DATASETS.OWN.x.FORMAT", "voc", "DATASETS.OWN.x.JSON", "a.json"],
         r"DATASETS.OWN.x.JSON is not a key of format 'voc'"),
    ],
    ids=["missing-root", "missing-split-file", "unknown-format", "duplicate-class", "key-of-another-format"],
)
def test_bad_entries_are_named(data, opts, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_config(VOC_BASE, voc_opts(data) + opts)


def test_voc_image_annotation_mismatch_is_named(tmp_path, data):
    voc = tmp_path / "voc"
    shutil.copytree(data["voc"], voc)
    (voc / "JPEGImages" / "00002.jpg").unlink()
    load_config(VOC_BASE, roots("voc", voc))
    with pytest.raises(FileNotFoundError, match=r"train.txt:\d+: no image for id '00002'"):
        DatasetCatalog.get("my_voc_train")


def test_voc_images_without_xml_are_counted(tmp_path, data, caplog):
    voc = tmp_path / "voc"
    shutil.copytree(data["voc"], voc)
    (voc / "Annotations" / "00003.xml").unlink()
    opts = ["DATASETS.OWN.all.FORMAT", "voc", "DATASETS.OWN.all.ROOT", str(voc), "DATASETS.TEST", "('all',)"]
    load_config(VOC_BASE, voc_opts(data) + opts)
    with caplog.at_level(logging.WARNING, logger="ds2d2.data.voc"):
        assert len(DatasetCatalog.get("all")) == 7
    assert "1 images in" in caplog.text
    assert "have no XML annotation and are not used (e.g. ['00003'])" in caplog.text


def coco_json(images=None, annotations=None, categories=None) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}] if images is None else images,
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100}]
        if annotations is None else annotations,
        "categories": [{"id": 3, "name": "ship"}] if categories is None else categories,
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}],
         r"not a COCO detection file: its top level is a list"),
        ({"images": [], "annotations": []}, r"not a COCO detection file: no list 'categories'"),
        (coco_json(annotations=[{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1}]),
         r"annotations\[0\] \(id 1\): image_id 7 is not the id of any entry of 'images'"),
        (coco_json(annotations=[{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "area": 1}]),
         r"annotations\[0\] \(id 1\): category_id 4 is not the id of any entry of 'categories'"),
        (coco_json(images=[{"id": 1, "file_name": "b.jpg", "width": 40, "height": 30}]),
         r"1 of its 1 images are not in the image folder .*\['b.jpg'\]"),
        (coco_json(annotations=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1]}]),
         r"annotations\[0\] \(id 1\): 'bbox' must be \[x, y, width, height\]"),
        (coco_json(images=[{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}] * 2),
         r"images\[1\]: image id 1 is used twice"),
    ],
    ids=["results-file", "no-categories", "unknown-image", "unknown-category", "missing-image-file",
         "bad-bbox", "duplicate-image-id"],
)
def test_bad_coco_json_is_named(tmp_path, content, message):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "x.json").write_text(json.dumps(content))
    where = re.escape(str(tmp_path / "x.json")) + ": "
    with pytest.raises((ValueError, FileNotFoundError), match=where + message):
        register_coco_detection("bad_coco", str(tmp_path / "x.json"), str(tmp_path))
    assert "bad_coco" not in DatasetCatalog.list()


def test_coco_boxes_are_clipped_and_empty_ones_dropped_and_counted(tmp_path, caplog):
    (tmp_path / "a.jpg").write_bytes(b"")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20], "area": 400},  # partly outside
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [45, 5, 5, 5], "area": 25},  # wholly outside
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12},
    ]
    (tmp_path / "x.json").write_text(json.dumps(coco_json(annotations=annotations)))
    register_coco_detection("clip_coco", str(tmp_path / "x.json"), str(tmp_path))
    with caplog.at_level(logging.INFO, logger="ds2d2.data.coco"):
        (record,) = load_coco_detection(str(tmp_path / "x.json"), str(tmp_path), "clip_coco")
    assert [a["bbox"] for a in record["annotations"]] == [[30, 20, 40, 30], [1, 2, 4, 6]]
    assert "with 2 boxes" in caplog.text and "clipped 1 boxes" in caplog.text
    assert "dropped 1 boxes" in caplog.text


def test_dota_label_without_image_is_named(tmp_path, data):
    raw = tmp_path / "train"
    shutil.copytree(data["dota"] / "train", raw)
    next((raw / "images").iterdir()).unlink()
    opts = ["DATASETS.OWN.my_dota_train.ROOT", str(raw), "DATASETS.OWN.my_dota_train.CACHE",
            str(tmp_path / "c"), "DATASETS.TEST", "()"]
    expected = r"DATASETS.OWN.my_dota_train: Images and label files of .* do not match:\n  .*txt: no image"
    with pytest.raises(ValueError, match=expected):
        load_config(DOTA_BASE, opts)


def test_dota_images_are_split_under_input_max_pixels(tmp_path, data):
    """A DATASETS.OWN DOTA entry is split under the config's INPUT.MAX_PIXELS (not the reader's default): one
    pixel below the largest image refuses that image by name, with the entry's key and the key to raise,
    before any patch is cut; at the image's size the split goes through."""
    sizes = {p: cv2.imread(str(p)).shape[:2] for p in (data["dota"] / "train" / "images").iterdir()}
    largest = max(sizes, key=lambda p: sizes[p][0] * sizes[p][1])
    height, width = sizes[largest]
    cache = tmp_path / "cache"
    key = "DATASETS.OWN.my_dota_train"
    opts = [f"{key}.ROOT", str(data["dota"] / "train"), f"{key}.CACHE", str(cache), "DATASETS.TEST", "()"]
    expected = (re.escape(f"{key}: '{largest}' is {width} x {height} = {width * height} "
                          f"pixels, more than the limit of {width * height - 1} pixels.")
                + r".*INPUT\.MAX_PIXELS in a training config")
    with pytest.raises(ValueError, match=expected):
        load_config(DOTA_BASE, opts + ["INPUT.MAX_PIXELS", str(width * height - 1)])
    assert not list(cache.rglob("*.png"))
    bad = r"^INPUT\.MAX_PIXELS must be an integer >= 1 \(pixels: width x height\), got 0$"
    with pytest.raises(ValueError, match=bad):
        load_config(DOTA_BASE, opts + ["INPUT.MAX_PIXELS", "0"])
    cfg = load_config(DOTA_BASE, opts + ["INPUT.MAX_PIXELS", str(width * height)])
    assert cfg.DATASETS.OWN.my_dota_train.CACHE == str(cache) and list(cache.rglob("*.png"))


def test_train_and_test_classes_must_agree(data):
    classes = voc_classes(data["voc"])
    cfg = load_config(VOC_BASE, voc_opts(data, **{"DATASETS.OWN.my_voc_test.CLASSES": str(classes[::-1])}))
    with pytest.raises(ValueError, match=r"DATASETS.TEST: dataset 'my_voc_test' has the classes .* but "
                                         r"DATASETS.TRAIN 'my_voc_train' has"):
        check_dataset_classes(cfg)


def test_head_must_predict_the_data_classes(data):
    cfg = load_config(VOC_BASE, voc_opts(data))
    n = len(voc_classes(data["voc"]))
    assert n != 10, "the example config's NUM_CLASSES must differ from the data's for this test"
    expected = (rf"MODEL.RETINANET.NUM_CLASSES is 10, but dataset 'my_voc_train' \(DATASETS.TRAIN\) has {n} "
                rf"classes .*: set MODEL.RETINANET.NUM_CLASSES {n}")
    with pytest.raises(ValueError, match=expected):
        check_dataset_classes(cfg)


# ------------------------------------------------------------------------------------------------------------
# The teacher as it was trained
# ------------------------------------------------------------------------------------------------------------


def test_teacher_is_built_from_the_config_recorded_next_to_its_weights(tmp_path, caplog):
    from detectron2.modeling import build_model

    cfg = tiny_stages(tmp_path, "RetinaNet")  # teacher.yaml (FPN 64), teacher.pth, no config.yaml
    assert resolve_teacher_config(cfg)[1] == str(tmp_path / "teacher.yaml")
    # the teacher file now says FPN 32 (as a config without the run's overrides would): only the config the
    # teacher's run recorded builds the teacher of these weights
    recorded = (tmp_path / "teacher.yaml").read_text()
    (tmp_path / "config.yaml").write_text(recorded)
    narrow = load_config(str(tmp_path / "teacher.yaml"), ["MODEL.FPN.OUT_CHANNELS", "32"], register=False)
    (tmp_path / "teacher32.yaml").write_text(narrow.dump())
    cfg.MODEL.DS2D2.TEACHER_CONFIG = str(tmp_path / "teacher32.yaml")
    with caplog.at_level(logging.INFO, logger="ds2d2.teacher"):
        model = build_model(cfg)
    assert f"Teacher config: {tmp_path / 'config.yaml'}, recorded next to" in caplog.text
    assert "MODEL.FPN.OUT_CHANNELS (recorded 64, file 32)" in caplog.text
    assert model.teacher.backbone.output_shape()["p3"].channels == 64
    # a real mismatch stays an error, and names the recorded file
    (tmp_path / "config.yaml").write_text(recorded.replace("NUM_CLASSES: 3", "NUM_CLASSES: 5"))
    with pytest.raises(ValueError, match=r"Teacher \(.*config.yaml\) predicts 5 classes, the student 3"):
        build_model(cfg)


def test_teacher_and_student_class_lists_must_agree(data, tmp_path):
    student = load_config(VOC_BASE, voc_opts(data))
    teacher = student.clone()
    teacher.DATASETS.OWN.my_voc_train.CLASSES = student.DATASETS.OWN.my_voc_train.CLASSES[::-1]
    expected = r"The teacher \(t.yaml\) was trained on 'my_voc_train' with the classes"
    with pytest.raises(ValueError, match=expected):
        check_teacher_classes(teacher, student, "t.yaml")


# ------------------------------------------------------------------------------------------------------------
# End to end through the command line
# ------------------------------------------------------------------------------------------------------------


def run(data, *cmd) -> str:
    env = dict(os.environ, DETECTRON2_DATASETS=str(data["root"]), OMP_NUM_THREADS="1")
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, *map(str, cmd)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_coco_trains_and_evaluates_with_coco_ap(data, tmp_path):
    n = len(voc_classes(data["voc"]))
    run(data, ROOT / "train_net.py", "--config-file", OWN / "coco" / "retinanet_R101.yaml", *coco_opts(data),
        *TINY, "MODEL.RETINANET.NUM_CLASSES", n, "OUTPUT_DIR", tmp_path)
    results = read_json(tmp_path / "eval_results.json")
    assert set(results) == {"bbox"} and {"AP", "AP50", "AP75"} <= set(results["bbox"])
    assert f"CLASSES:\n      - {voc_classes(data['voc'])[0]}" in (tmp_path / "config.yaml").read_text()


@pytest.mark.slow
def test_raw_dota_is_split_once_trained_on_and_scored_on_full_images(data, tmp_path, monkeypatch, caplog):
    opts = []
    for split in ("train", "val"):  # 64 px patches with a 16 px overlap
        key = f"DATASETS.OWN.my_dota_{split}"
        opts += [f"{key}.ROOT", data["dota"] / split, f"{key}.PATCH_SIZE", 64, f"{key}.GAP", 16]
    opts += [*TINY, "OUTPUT_DIR", tmp_path]
    log = run(data, ROOT / "train_net.py", "--config-file", OWN / "dota" / "retinanet_R101.yaml", *opts)
    split = re.findall(r"DATASETS.OWN.(my_dota_\w+): .* -> .*: (\d+) images \((\d+) split now\)", log)
    counts = [str(len(list((data["dota"] / s / "images").iterdir()))) for s in ("train", "val")]
    assert sorted(split) == [("my_dota_train", counts[0], counts[0]), ("my_dota_val", counts[1], counts[1])]
    results = read_json(tmp_path / "eval_results.json")
    assert set(results) == {"bbox", "dota_task2"} and "mAP" in results["dota_task2"]
    caches = sorted((data["root"] / "ds2d2_cache").iterdir())
    assert [c.name.rsplit("-", 1)[0] for c in caches] == ["my_dota_train", "my_dota_val"]
    recorded = (tmp_path / "config.yaml").read_text()
    assert f"CACHE: {caches[0]}" in recorded and "- small-vehicle" in recorded
    # the next process that registers them reuses the patches: nothing is split a second time
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data["root"]))
    with caplog.at_level(logging.INFO, logger="ds2d2.data.own"):
        load_config(str(OWN / "dota" / "retinanet_R101.yaml"), [str(o) for o in opts])
    assert caplog.text.count("(0 split now)") == 2


@pytest.mark.slow
def test_pipeline_distils_on_a_voc_folder_with_overrides_reaching_the_teacher(data, tmp_path):
    """The issue's case: the class count (and the tiny model) come from command-line overrides, which the
    teacher config file does not hold; stage 3 must build the teacher as its run trained it."""
    n = len(voc_classes(data["voc"]))
    out = tmp_path / "pipeline"
    config = OWN / "voc" / "retinanet_R101_to_R18.yaml"
    log = run(data, ROOT / "tools" / "run_pipeline.py", "--config", config, "--output", out, "--",
              *voc_opts(data), *TINY, "MODEL.RETINANET.NUM_CLASSES", n)
    assert f"Teacher config: {out / 'teacher' / 'config.yaml'}, recorded next to" in log
    for stage in ("teacher", "amplifier", "student", "ds2d2"):
        results = read_json(out / stage / "eval_results.json")
        assert set(results) == {"bbox", "voc_ap50"}, stage
    assert "| ds2d2 |" in (out / "results.md").read_text()
    ckpt = torch.load(out / "ds2d2" / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["model"]["student.head.cls_score.bias"].shape == (9 * n,)  # 9 anchors per position


@pytest.mark.slow
def test_pipeline_stops_before_training_on_a_bad_config(data, tmp_path):
    config = OWN / "voc" / "retinanet_R101_to_R18.yaml"  # NUM_CLASSES 10, not the data's
    command = [sys.executable, ROOT / "tools" / "run_pipeline.py", "--config", config, "--output",
               tmp_path / "p"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([*command, "--", *voc_opts(data)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1
    expected = (r"run_pipeline: stage teacher \(configs/own/voc/retinanet_R101.yaml\): "
                r"MODEL.RETINANET.NUM_CLASSES is 10, but dataset 'my_voc_train'")
    assert re.search(expected, proc.stderr), proc.stderr
    assert not (tmp_path / "p" / "teacher").exists()
