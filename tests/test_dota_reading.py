"""Raw DOTA reading: label lines, headers, file pairing, and each kind of bad input named by file and line."""

import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from test_dota_scenes import write_dota_folder

from ds2d2.data.dota import (
    DOTA_V1_5_CLASSES,
    DOTA_V1_CLASSES,
    DotaFormatError,
    pair_dota_files,
    parse_dota_labels,
    read_image,
    register_all_dota,
)

GOOD = "imagesource:GoogleEarth\ngsd:0.13\n10 20 30 20 30 45 10 45 plane 0\n\n1.5 2 8 1 9 6.5 2 7 ship\n"


def test_parse_headers_fields_and_bounds(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(GOOD)
    objects = parse_dota_labels(path, DOTA_V1_CLASSES)
    assert [(o.category, o.difficult, o.line) for o in objects] == [("plane", 0, 3), ("ship", 0, 5)]
    assert objects[0].bbox == (10.0, 20.0, 30.0, 45.0)
    assert objects[1].bbox == (1.5, 1.0, 9.0, 7.0)
    assert objects[1].polygon == (1.5, 2.0, 8.0, 1.0, 9.0, 6.5, 2.0, 7.0)


@pytest.mark.parametrize(
    "line, message",
    [
        ("10 20 30 20 30 45 10 plane", "expected 9 or 10 fields"),
        ("10 20 30 20 30 45 10 45 plane 0 extra", "expected 9 or 10 fields"),
        ("10 20 30 x 30 45 10 45 plane 0", "non-numeric"),
        ("10 20 30 20 30 nan 10 45 plane 0", "non-finite"),
        ("10 20 30 20 30 45 10 45 zeppelin 0", "unknown category 'zeppelin'"),
        ("10 20 30 20 30 45 10 45 plane hard", "difficult must be"),
        ("10 20 10 20 10 45 10 45 plane 0", "degenerate"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(GOOD + line + "\n")
    with pytest.raises(DotaFormatError, match=message) as err:
        parse_dota_labels(path, DOTA_V1_CLASSES)
    assert f"{path}:6:" in str(err.value)


def test_skip_mode_reports_every_bad_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(GOOD + "1 2 3 plane\n10 20 30 20 30 45 10 45 zeppelin 1\n")
    skipped = []
    objects = parse_dota_labels(path, DOTA_V1_CLASSES, skipped)
    assert len(objects) == 2
    assert [s.split(": ")[0] for s in skipped] == [f"{path}:6", f"{path}:7"]


def test_v15_adds_container_crane():
    assert DOTA_V1_5_CLASSES[:15] == DOTA_V1_CLASSES and DOTA_V1_5_CLASSES[15] == "container-crane"
    assert len(set(DOTA_V1_CLASSES)) == 15


def test_pairing_requires_both_files(tmp_path):
    write_dota_folder(tmp_path, sizes=((60, 50), (70, 60)))
    assert [s for s, _, lab in pair_dota_files(tmp_path) if lab is not None] == ["P0000", "P0001"]
    (tmp_path / "labelTxt" / "P0001.txt").rename(tmp_path / "labelTxt" / "P0009.txt")
    with pytest.raises(DotaFormatError) as err:
        pair_dota_files(tmp_path)
    assert "P0001.png: no label file" in str(err.value) and "P0009.txt: no image P0009" in str(err.value)


def test_unlabelled_folder_and_stray_files(tmp_path):
    write_dota_folder(tmp_path, sizes=((60, 50),), labels=False)
    assert [lab for _, _, lab in pair_dota_files(tmp_path)] == [None]
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(DotaFormatError, match="notes.txt: not an image"):
        pair_dota_files(tmp_path)


def test_undecodable_image_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DotaFormatError, match=r"broken\.png'?: unreadable PNG header"):
        read_image(path)


def test_builtin_names_are_lazy_and_explain_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})
    register_all_dota(str(tmp_path))  # nothing exists under tmp_path: registering must still work
    for name in ("dota_v1_train_1024", "dota_v1_val_1024", "dota_v1_test_1024", "dota_v1.5_val_1024"):
        assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get("dota_v1.5_test_1024")
    assert meta.evaluator_type == "dota_patches" and meta.has_labels is False
    assert meta.thing_classes == list(DOTA_V1_5_CLASSES)
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("dota_v1_val_1024")
    assert str(tmp_path / "DOTA-v1.0_1024" / "val") in str(err.value) and "DETECTRON2_DATASETS" in str(
        err.value
    )


def test_builtin_dota_registration_is_idempotent(tmp_path):
    from ds2d2.data import register_all_dota

    before = MetadataCatalog.get("dota_v1_val_1024").dota_root
    try:
        register_all_dota(tmp_path)
        register_all_dota(tmp_path)  # the same root again: a no-op, not an error
        assert MetadataCatalog.get("dota_v1_val_1024").dota_root == str(tmp_path / "DOTA-v1.0_1024" / "val")
    finally:
        register_all_dota(os.path.dirname(os.path.dirname(before)))


def test_importing_ds2d2_leaves_the_synthetic_generator_out():
    code = "import sys, ds2d2; assert 'ds2d2.data.synthetic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
