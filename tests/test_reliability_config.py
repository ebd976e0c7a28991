"""Bad configs fail before the first iteration, naming the key and the value or file. The distiller's own
checks (teacher/amplifier files, depth, class count and list) are tested at build time in test_distiller.py;
here: dataset names, SOLVER.CHECKPOINT_MAX_TO_KEEP, the keys read at build time (INPUT.MAX_PIXELS,
SOLVER.CLIP_GRADIENTS, MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD), the whole train_net.py path for two bad
configs, every MODEL.DS2D2 key ``checks.check_config`` refuses before the teacher is built (terms that all
distil nothing included), and DATASETS.OWN entries whose files cannot be read."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.modeling import build_model

from conftest import tiny_cfg
import ds2d2.data.own as own
import ds2d2.meta_arch.distiller as distiller
from ds2d2.checks import TERM_WEIGHTS, check_config
from ds2d2.config import LOSS_KEYS, load_config
from ds2d2.data import register_coco_detection
from ds2d2.distill import DISTILL_TERM_REGISTRY
from ds2d2.engine import Trainer
from ds2d2.teacher import resolve_teacher_config
from reliability_setup import (
    register_in_process,
    run_train_net,
    tiny_trainer_config,
    write_data,
    write_distiller_config,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize("key", ["TRAIN", "TEST"])
def test_unregistered_dataset_is_named_before_anything_is_built(data_root, tmp_path, monkeypatch, key):
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path)
    cfg.DATASETS[key] = ("dior_trainvall",)

    def build_model(cls, cfg):
        raise AssertionError("the model was built before the dataset names were checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    expected = rf"DATASETS.{key}: dataset 'dior_trainvall' is not registered \(did you mean 'dior_trainval'"
    with pytest.raises(ValueError, match=expected):
        Trainer(cfg)


@pytest.mark.parametrize("value", [-1, 1.5])
def test_bad_checkpoint_max_to_keep_is_named_before_building(data_root, tmp_path, monkeypatch, value):
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path)
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = value

    def build_model(cls, cfg):
        raise AssertionError("the model was built before SOLVER.CHECKPOINT_MAX_TO_KEEP was checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    with pytest.raises(ValueError, match=rf"SOLVER.CHECKPOINT_MAX_TO_KEEP must be an integer >= 0.*{value}"):
        Trainer(cfg)


# Keys outside MODEL.DS2D2 that the data mapper, the optimizer or the distiller read only once the model (and
# a teacher) is built: each is refused by check_config before.
BAD_BUILD_TIME_KEYS = [
    ("INPUT.MAX_PIXELS", 0, r"INPUT.MAX_PIXELS must be an integer >= 1 \(pixels.*got 0"),
    ("INPUT.MAX_PIXELS", 1e6, r"INPUT.MAX_PIXELS must be an integer >= 1 \(pixels.*got 1000000.0"),
    ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full", r"CLIP_TYPE must be one of \(.value., .norm., .full_mo"),
    ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.0, r"CLIP_GRADIENTS.CLIP_VALUE must be a finite number > 0"),
    ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", float("inf"), r"CLIP_GRADIENTS.CLIP_VALUE must be a finite"),
    ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", -2.0, r"CLIP_GRADIENTS.NORM_TYPE must be a number > 0"),
    ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", float("nan"), r"CLIP_GRADIENTS.NORM_TYPE must be a number > 0"),
    ("MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD", "yes", r"INHERIT_TEACHER_NECK_HEAD must be True or False"),
]


@pytest.mark.parametrize("key, value, message", BAD_BUILD_TIME_KEYS)
def test_build_time_keys_are_named_before_the_trainer_builds_anything(data_root, tmp_path, monkeypatch, key,
                                                                      value, message):
    cfg = tiny_trainer_config("RetinaNet", register_in_process(data_root), tmp_path)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    check_config(cfg)  # the clipping defaults (value, 1.0, L2) pass
    set_key(cfg, key, value)

    def build_model(cls, cfg):
        raise AssertionError(f"the model was built before {key} was checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    with pytest.raises(ValueError, match=message):
        Trainer(cfg)


def test_clipping_settings_are_only_checked_when_enabled_and_the_max_norm_may_be_inf():
    cfg = load_config(SYNTHETIC_RETINANET, register=False)
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full",
                         "SOLVER.CLIP_GRADIENTS.NORM_TYPE", -1.0])
    check_config(cfg, datasets=())  # not enabled: ignored, as Detectron2 ignores them
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"])
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.NORM_TYPE must be a number > 0"):
        check_config(cfg, datasets=())
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = float("inf")  # Detectron2's documented L-inf
    check_config(cfg, datasets=())


def register_coco_set(folder: Path, name: str, with_boxes: bool) -> str:
    """Register COCO dataset ``name`` in ``folder``: one 80x60 image with one 'ship' box, or (images-only)
    none; its JSON path returned."""
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((60, 80, 3), np.uint8))
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0}
    content = {"images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}],
               "annotations": [box] if with_boxes else [], "categories": [{"id": 1, "name": "ship"}]}
    (folder / "x.json").write_text(json.dumps(content))
    register_coco_detection(name, str(folder / "x.json"), str(folder))
    return str(folder / "x.json")


def test_training_needs_one_dataset_with_boxes_checked_before_building(catalog, tmp_path, monkeypatch):
    images_only = register_coco_set(tmp_path / "images_only", "images_only", with_boxes=False)
    register_coco_set(tmp_path / "labelled", "labelled", with_boxes=True)
    cfg = tiny_cfg("RetinaNet", ["MODEL.RETINANET.NUM_CLASSES", 1, "DATALOADER.NUM_WORKERS", 0])
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.OUTPUT_DIR = ("images_only",), ("images_only",), str(tmp_path)

    def build_model(cls, cfg):
        raise AssertionError("the model was built before the training data was checked for boxes")

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    message = re.escape(f"DATASETS.TRAIN: dataset 'images_only' comes from {images_only}, whose "
                        "'annotations' list is empty: nothing to train on")
    with pytest.raises(ValueError, match=message):
        Trainer(cfg)
    check_config(cfg, datasets=["TEST"])  # --eval-only: a test set needs no boxes
    cfg.DATASETS.TRAIN = ("images_only", "labelled")  # beside a labelled set: its images are filtered out
    check_config(cfg)
    loader = Trainer.build_train_loader(cfg)
    assert [d["file_name"] for d in loader.dataset] == [str(tmp_path / "labelled" / "a.jpg")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, opts, expected",
    [
        (
            [],
            ["MODEL.DS2D2.TEACHER_WEIGHTS", "absent/teacher.pth"],
            "MODEL.DS2D2.TEACHER_WEIGHTS: checkpoint 'absent/teacher.pth' does not exist",
        ),
        (
            ["--eval-only"],
            ["DATASETS.TEST", ("no_such_set",)],
            "DATASETS.TEST: dataset 'no_such_set' is not registered",
        ),
    ],
    ids=["missing-teacher-weights", "eval-only-unregistered-test-set"],
)
def test_train_net_fails_before_the_first_iteration(data_root, tmp_path, flags, opts, expected):
    config = write_distiller_config(tmp_path, "RetinaNet")
    out = tmp_path / "out"
    proc = run_train_net(data_root, config, out, ["SOLVER.MAX_ITER", 4, *opts], flags=flags, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in output
    assert "Starting training" not in output and "Start inference" not in output
    assert not list(out.glob("*.pth")) and not (out / "metrics.json").exists()


# ---- config.load_config / checks.check_config, without a trainer ------------------------------------------
SYNTHETIC_RETINANET = "configs/synthetic/retinanet_R50_to_R18.yaml"
REPO = Path(__file__).resolve().parents[1]


def test_load_config_names_the_key_of_an_empty_or_missing_file():
    with pytest.raises(ValueError, match="MODEL.DS2D2.TEACHER_CONFIG is empty"):
        load_config("", key="MODEL.DS2D2.TEACHER_CONFIG")
    with pytest.raises(FileNotFoundError, match="--config-file: config file 'absent.yaml' does not exist"):
        load_config("absent.yaml")


def test_load_config_merges_the_file_then_the_overrides():
    cfg = load_config(SYNTHETIC_RETINANET, ["MODEL.DS2D2.LOSS.EXPLICIT_LOW", "0.25"], register=False)
    assert cfg.MODEL.META_ARCHITECTURE == "DS2D2Distiller" and cfg.MODEL.DS2D2.LOSS.EXPLICIT_LOW == 0.25


@pytest.mark.parametrize(
    "arch, key, value, message",
    [
        ("DS2D2Amplifier", "AMPLIFIER_INIT", "half", "MODEL.DS2D2.AMPLIFIER_INIT must be one of"),
        ("DS2D2Distiller", "IMPLICIT_INPUT", "both", "MODEL.DS2D2.IMPLICIT_INPUT must be one of"),
        ("DS2D2Distiller", "LOSS.ROI_CLS_REDUCTION", "avg", "LOSS.ROI_CLS_REDUCTION must be one of"),
        ("DS2D2Distiller", "LOSS.EXPLICIT_HIGH", -1.0, "LOSS.EXPLICIT_HIGH must be a finite number"),
        ("DS2D2Distiller", "TERMS", ["FitNet", "FitNet"], "MODEL.DS2D2.TERMS must list distinct terms"),
        ("DS2D2Distiller", "TERMS", ["NoSuchKD"], "MODEL.DS2D2.TERMS must list distinct terms"),
        ("DS2D2Distiller", "WAVELET", "no_such_wavelet", "MODEL.DS2D2.WAVELET: unknown wavelet"),
        ("DS2D2Distiller", "FITNET.WEIGHT", -0.5, r"MODEL.DS2D2.FITNET.WEIGHT must be a finite number >= 0"),
        ("DS2D2Distiller", "CROSSKD.BOX_WEIGHT", float("nan"), r"MODEL.DS2D2.CROSSKD.BOX_WEIGHT must be"),
        ("DS2D2Distiller", "FGD.GAMMA", -1e-4, r"MODEL.DS2D2.FGD.GAMMA must be a finite number >= 0"),
        ("DS2D2Distiller", "FGD.TEMPERATURE", 0.0, r"MODEL.DS2D2.FGD.TEMPERATURE must be a finite num.* > 0"),
        ("DS2D2Distiller", "PKD.WEIGHT", "10", r"MODEL.DS2D2.PKD.WEIGHT must be a finite number >= 0"),
        ("DS2D2Distiller", "MGD.MASK_RATIO", 1.0, r"MODEL.DS2D2.MGD.MASK_RATIO must be a number in \[0, 1\)"),
    ],
)
def test_check_config_names_each_bad_ds2d2_key(arch, key, value, message):
    cfg = load_config(SYNTHETIC_RETINANET, register=False)
    cfg.MODEL.META_ARCHITECTURE = arch
    set_ds2d2_key(cfg, key, value)
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())


def set_key(cfg, key: str, value) -> None:
    """``cfg.<key> = value`` for a dotted ``key``, the value as it is (no YAML parsing)."""
    node, _, leaf = key.rpartition(".")
    target = cfg
    for part in node.split("."):
        target = target[part]
    target[leaf] = value


def set_ds2d2_key(cfg, key: str, value) -> None:
    """``cfg.MODEL.DS2D2.<key> = value`` for a dotted ``key``."""
    set_key(cfg, f"MODEL.DS2D2.{key}", value)


# One per class of key (issue 24 point 5): a weight < 0, an exponent or a temperature <= 0, no term at all.
BAD_DISTILLER_KEYS = [
    ("LOSS.ROI_CLS_WEIGHT", -0.5, r"MODEL.DS2D2.LOSS.ROI_CLS_WEIGHT must be a finite number >= 0, got -0.5"),
    ("LOSS.DENSE_BETA", 0.0, r"MODEL.DS2D2.LOSS.DENSE_BETA must be a finite number > 0, got 0.0"),
    ("LOSS.ROI_TEMPERATURE", -1.0, r"MODEL.DS2D2.LOSS.ROI_TEMPERATURE must be a finite number > 0, got -1.0"),
    ("TERMS", [], r"MODEL.DS2D2.TERMS is empty"),
]


@pytest.mark.parametrize("key, value, message", BAD_DISTILLER_KEYS, ids=[k for k, _, _ in BAD_DISTILLER_KEYS])
def test_bad_distiller_key_is_named_before_the_teacher_is_built(monkeypatch, key, value, message):
    built = []
    monkeypatch.setattr(distiller, "resolve_teacher_config", lambda cfg: built.append("teacher config"))
    monkeypatch.setattr(distiller, "build_frozen_detector", lambda *args, **kw: built.append("teacher"))
    cfg = load_config(SYNTHETIC_RETINANET, ["MODEL.DEVICE", "cpu"], register=False)
    set_ds2d2_key(cfg, key, value)
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
    assert built == []


def terms_config(terms, zero_weights=()):
    """The synthetic RetinaNet distiller config with MODEL.DS2D2.TERMS ``terms``, ``zero_weights`` at 0."""
    cfg = load_config(SYNTHETIC_RETINANET, ["MODEL.DEVICE", "cpu"], register=False)
    cfg.MODEL.DS2D2.TERMS = list(terms)
    for key in zero_weights:
        set_ds2d2_key(cfg, key, 0.0)
    return cfg


def test_term_weights_name_every_registered_term():
    assert set(TERM_WEIGHTS) == {name for name, _ in DISTILL_TERM_REGISTRY}


@pytest.mark.parametrize("term", sorted(TERM_WEIGHTS))
def test_a_lone_term_with_all_weights_zero_is_refused_and_any_one_weight_turns_it_on(term):
    """Issue 24's TERMS [] case, reached through weights: the teacher would be built to distil nothing."""
    weights = TERM_WEIGHTS[term]
    cfg = terms_config([term], weights)
    if len(weights) == 1:  # a term with one weight and no other switch
        message = rf"MODEL.DS2D2.{weights[0]} must be a finite number > 0, got 0.0"
    else:
        named = ", ".join(rf"MODEL.DS2D2.{key} 0.0" for key in weights)
        message = rf"No term of MODEL.DS2D2.TERMS \['{term}'\] distils anything, .*\({named}\)"
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())
    for key in weights:
        on = terms_config([term], [k for k in weights if k != key])
        set_ds2d2_key(on, key, 1e-3)
        check_config(on, datasets=())


def test_ds2d2_with_its_four_loss_weights_zero_is_refused_before_the_teacher_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(distiller, "resolve_teacher_config", lambda cfg: built.append("teacher config"))
    monkeypatch.setattr(distiller, "build_frozen_detector", lambda *args, **kw: built.append("teacher"))
    cfg = terms_config(["DS2D2Explicit", "DS2D2Implicit"], [f"LOSS.{k}" for k in LOSS_KEYS])
    message = r"distils anything.*MODEL.DS2D2.LOSS.EXPLICIT_LOW 0.0, .*MODEL.DS2D2.LOSS.IMPLICIT_HIGH 0.0"
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
    assert built == []


@pytest.mark.parametrize("terms, off", [
    (["DS2D2Explicit", "DS2D2Implicit"], "DS2D2Explicit"),  # an ablated DS2D2 stream
    (["DS2D2Explicit", "DS2D2Implicit"], "DS2D2Implicit"),
    (["FGD", "PKD"], "FGD"),
])
def test_a_term_that_turns_itself_off_may_be_listed_beside_one_that_distils(terms, off):
    cfg = terms_config(terms, TERM_WEIGHTS[off])
    check_config(cfg, datasets=())
    assert not DISTILL_TERM_REGISTRY.get(off).enabled(cfg)  # so the distiller does not build it


@pytest.mark.parametrize("term", ["FitNet", "CrossKD", "PKD", "MGD"])
def test_a_term_built_whatever_its_weights_is_refused_at_zero_beside_others(term):
    weights = TERM_WEIGHTS[term]
    check_config(terms_config(["DS2D2Explicit"], weights), datasets=())  # not in TERMS: 0 is a valid weight
    cfg = terms_config(["DS2D2Explicit", term], weights)
    if len(weights) == 1:
        message = rf"MODEL.DS2D2.{weights[0]} must be a finite number > 0, got 0.0"
    else:
        message = rf"MODEL.DS2D2.TERMS lists {term}, whose weights are all 0 \(MODEL.DS2D2.{weights[0]} 0.0"
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())


def test_default_configs_of_every_term_pass_the_checks():
    cfg = load_config(SYNTHETIC_RETINANET, register=False)
    cfg.MODEL.DS2D2.TERMS = ["DS2D2Explicit", "DS2D2Implicit", "FitNet", "CrossKD", "FGD", "PKD", "MGD"]
    check_config(cfg, datasets=())


def test_check_config_checks_datasets_only_when_asked():
    cfg = load_config(SYNTHETIC_RETINANET, register=False)
    cfg.DATASETS.TEST = ("no_such_set",)
    check_config(cfg, datasets=())  # keys only
    with pytest.raises(ValueError, match="DATASETS.TEST: dataset 'no_such_set' is not registered"):
        check_config(cfg, datasets=["TEST"])


# ---- DATASETS.OWN entries whose files cannot be read: the entry's key named, whatever the exception -------
def own_entry_config(folder, name: str, entry: str) -> str:
    """A config file declaring ``DATASETS.OWN.<name>`` (YAML flow mapping ``entry``) as the training set."""
    path = folder / "own.yaml"
    path.write_text(
        f"_BASE_: {REPO / 'configs' / 'synthetic' / 'retinanet_R18_student.yaml'}\n"
        f"DATASETS:\n  OWN:\n    {name}: {entry}\n  TRAIN: [{name}]\n  TEST: []\n"
    )
    return str(path)


def test_own_coco_entry_with_a_non_utf8_json_is_named(tmp_path):
    (tmp_path / "ann.json").write_bytes(b"\xff\xfe{\x00}\x00")
    entry = f"{{FORMAT: coco, ROOT: {tmp_path}, JSON: ann.json}}"
    config = own_entry_config(tmp_path, "reliability_latin_coco", entry)
    with pytest.raises(ValueError, match="DATASETS.OWN.reliability_latin_coco: ") as error:
        load_config(config)
    assert not isinstance(error.value, TypeError)


def test_own_dota_entry_with_a_non_utf8_label_file_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "P0001.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "labelTxt" / "P0001.txt").write_bytes(b"1 1 9 1 9 9 1 9 \xe9glise 0\n")
    config = own_entry_config(tmp_path, "reliability_latin_dota", f"{{FORMAT: dota, ROOT: {tmp_path}}}")
    with pytest.raises(ValueError, match="DATASETS.OWN.reliability_latin_dota: ") as error:
        load_config(config)
    assert not isinstance(error.value, TypeError)


@pytest.mark.parametrize(
    "raised, kind",
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ValueError),
        (json.JSONDecodeError("Expecting value", "{", 1), ValueError),
        (FileNotFoundError("images/a.jpg does not exist"), FileNotFoundError),
        (ValueError("bad box"), ValueError),
    ],
    ids=["UnicodeDecodeError", "JSONDecodeError", "FileNotFoundError", "ValueError"],
)
def test_own_entry_errors_of_any_constructor_get_the_key(tmp_path, monkeypatch, raised, kind):
    """Whatever a reader raises, the error names the entry and keeps the message (and the type, where it
    takes one message), chained to the original."""
    (tmp_path / "ann.json").write_text("{}")

    def register_coco_detection(*args, **kwargs):
        raise raised

    monkeypatch.setattr(own, "register_coco_detection", register_coco_detection)
    entry = f"{{FORMAT: coco, ROOT: {tmp_path}, JSON: ann.json}}"
    config = own_entry_config(tmp_path, "reliability_raising_coco", entry)
    with pytest.raises(kind) as error:
        load_config(config)
    assert type(error.value) is kind and error.value.__cause__ is raised
    assert str(error.value) == f"DATASETS.OWN.reliability_raising_coco: {raised}"


SYNTHETIC = REPO / "configs" / "synthetic"


def test_an_unknown_key_is_named_with_the_file_and_line_that_set_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"_BASE_: {SYNTHETIC / 'retinanet_R50_teacher.yaml'}\nTEST:\n  EVAL_PERIOD: 0\n"
                    "  DOTA_TASK2: true\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {base}\nSEED: 3\n")
    with pytest.raises(KeyError, match=re.escape(f"{base}:4: TEST.DOTA_TASK2 is not a config key")) as e:
        load_config(str(child), register=False)
    assert str(child) in str(e.value)


def test_a_teachers_recorded_config_from_another_version_is_named(tmp_path):
    # a teacher trained by a version with TEST.DOTA_TASK2 (since renamed): its recorded config.yaml names it
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    recorded = teacher_dir / "config.yaml"
    dumped = load_config(str(SYNTHETIC / "retinanet_R50_teacher.yaml"), register=False).dump()
    recorded.write_text(dumped.replace("\nTEST:\n", "\nTEST:\n  DOTA_TASK2: true\n", 1))
    line = recorded.read_text().splitlines().index("  DOTA_TASK2: true") + 1
    cfg = load_config(str(SYNTHETIC / "retinanet_R50_to_R18.yaml"), register=False)
    cfg.MODEL.DS2D2.TEACHER_WEIGHTS = str(teacher_dir / "model_final.pth")
    with pytest.raises(KeyError, match=re.escape(f"{recorded}:{line}: TEST.DOTA_TASK2 is not a config key")):
        resolve_teacher_config(cfg)


def test_a_value_of_the_wrong_type_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"_BASE_: {SYNTHETIC / 'retinanet_R50_teacher.yaml'}\nSOLVER:\n  MAX_ITER: many\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: Type mismatch")):
        load_config(str(path), register=False)
