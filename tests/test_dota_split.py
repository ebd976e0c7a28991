"""Splitting: the devkit's windows and keep rule, exact coordinate mapping, padding, determinism, resuming."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from shapely.geometry import Polygon, box
from conftest import load_script
from test_dota_scenes import CLASSES, GAP, PATCH, bounds, write_dota_folder

from ds2d2.data.dota import DOTA_V1_CLASSES, DotaFormatError, load_dota_patches, register_dota
from ds2d2.data.dota_split import SplitSettings, inside_fraction, patch_starts, split_dota

REPO = Path(__file__).resolve().parents[1]
RATES = (0.5, 1.0, 1.5)
SETTINGS = SplitSettings(PATCH, GAP, RATES, 0.7)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(source folder, objects per image, patch set folder) of the three test scenes split at three rates."""
    root = tmp_path_factory.mktemp("dota")
    scenes = write_dota_folder(root / "src")
    report = split_dota(root / "src", root / "dst", settings=SETTINGS, num_workers=2, progress=False)
    assert report.images == 3 and report.split_now == 3
    return root / "src", scenes, root / "dst", report


def records(dst: Path):
    return {p.stem: json.loads(p.read_text()) for p in sorted((dst / "annotations").glob("*.json"))}


def test_patch_starts_by_hand():
    assert patch_starts(200, 256, 64) == [0]  # smaller than a patch: one padded window
    assert patch_starts(256, 256, 64) == [0]
    assert patch_starts(640, 256, 64) == [0, 192, 384]  # exact fit
    assert patch_starts(700, 256, 64) == [0, 192, 384, 444]  # last window moved back to the border


def test_windows_are_the_devkits(split, tmp_path):
    from dotadevkit.ops.ImgSplit import DataSplitter

    src, _, dst, _ = split
    ours = {
        (r["image"], tuple(p["offset"]))
        for r in records(dst).values()
        for p in r["patches"]
        if p["scale"] == 1
    }
    DataSplitter(str(src), str(tmp_path), gap=GAP, subsize=PATCH, num_process=1).splitdata(1)
    theirs = set()
    for name in os.listdir(tmp_path / "images"):
        stem, _, left, up = Path(name).stem.replace("___", "__").split("__")
        theirs.add((stem, (int(left), int(up))))
    assert ours == theirs


def test_inside_fraction_matches_shapely():
    rng = np.random.default_rng(1)
    for _ in range(200):
        poly = rng.uniform(0, 100, 2) + rng.uniform(-40, 40, (4, 2)) * [1, 0.5]
        poly = np.array(
            Polygon(poly).convex_hull.exterior.coords[:-1]
        )  # a convex quadrilateral (or triangle)
        x0, y0 = rng.uniform(0, 60, 2)
        window = (x0, y0, x0 + rng.uniform(10, 80), y0 + rng.uniform(10, 80))
        fraction, clipped = inside_fraction(poly, window)
        inter = Polygon(poly).intersection(box(*window))
        assert fraction == pytest.approx(inter.area / Polygon(poly).area, abs=1e-9)
        if inter.area > 0:
            np.testing.assert_allclose(
                np.concatenate([clipped.min(0), clipped.max(0)]), inter.bounds, atol=1e-9
            )


def test_keep_rule_and_exact_mapping(split):
    """Against shapely: kept iff > 70% of the polygon is inside the window; box = clipped polygon's bounds;
    whole objects map back to their original boxes exactly."""
    _, scenes, dst, _ = split
    checked_cut = 0
    for stem, record in records(dst).items():
        objects = scenes[stem]
        for patch in record["patches"]:
            rate, (left, up) = patch["scale"], patch["offset"]
            sw, sh = round(record["width"] * rate), round(record["height"] * rate)
            window = box(left, up, min(left + PATCH, sw), min(up + PATCH, sh))
            kept = {a["object"]: a for a in patch["annotations"]}
            for i, (poly, category, difficult) in enumerate(objects):
                shape = Polygon(np.array(poly).reshape(4, 2) * rate)
                fraction = shape.intersection(window).area / shape.area
                assert (i in kept) == (fraction > 0.7), (stem, patch["file"], i, fraction)
                if i not in kept:
                    continue
                a = kept[i]
                assert (a["category"], a["difficult"]) == (category, difficult)
                expected = np.array(shape.intersection(window).bounds) - [left, up, left, up]
                np.testing.assert_allclose(a["bbox"], expected, atol=1e-9)
                back = np.array(a["bbox"]) / rate + np.repeat([patch["origin"]], 2, axis=0).ravel()
                if fraction == 1.0:
                    np.testing.assert_allclose(back, bounds(poly), rtol=0, atol=1e-9)
                else:
                    checked_cut += 1
                    assert np.all(back[:2] >= np.array(bounds(poly))[:2] - 1e-9)
                    assert np.all(back[2:] <= np.array(bounds(poly))[2:] + 1e-9)
    assert checked_cut > 10  # objects across patch borders were exercised


def test_every_object_is_whole_in_some_patch_at_rates_up_to_one(split):
    _, scenes, dst, report = split
    for stem, record in records(dst).items():
        assert record["lost_objects"]["0.5"] == [] and record["lost_objects"]["1.0"] == []
        whole = {a["object"] for p in record["patches"] if p["scale"] == 1.0 for a in p["annotations"]}
        assert whole == set(range(len(scenes[stem])))
    assert report.objects == sum(len(v) for v in scenes.values())
    assert report.lost["1.0"] == 0


def test_patch_pixels_and_padding(split):
    src, _, dst, _ = split
    for stem, record in records(dst).items():
        image = cv2.imread(str(src / "images" / f"{stem}.png"))
        for patch in record["patches"]:
            pixels = cv2.imread(str(dst / "images" / patch["file"]))
            assert pixels.shape == (PATCH, PATCH, 3)
            if patch["scale"] != 1.0:
                continue
            left, up = patch["offset"]
            expected = np.zeros_like(pixels)
            crop = image[up : up + PATCH, left : left + PATCH]
            expected[: crop.shape[0], : crop.shape[1]] = crop
            np.testing.assert_array_equal(pixels, expected)
    small = records(dst)["P0001"]  # 200 x 150: one padded patch per rate <= 1
    assert [p["offset"] for p in small["patches"] if p["scale"] <= 1.0] == [[0, 0], [0, 0]]


def test_split_is_deterministic_and_resumable(split, tmp_path):
    src, _, dst, _ = split
    again = tmp_path / "again"
    split_dota(src, again, settings=SETTINGS, num_workers=1, progress=False)
    files = sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (dst / f).read_bytes() == (again / f).read_bytes(), f

    # interrupted run: P0002's record and one of its patches never got written
    (again / "annotations" / "P0002.json").unlink()
    first_patch = next((again / "images").glob("P0002__*.png"))
    first_patch.unlink()
    untouched = again / "annotations" / "P0000.json"
    os.utime(untouched, (1, 1))
    report = split_dota(src, again, settings=SETTINGS, num_workers=1, progress=False)
    assert (report.split_now, report.images) == (1, 3)
    assert os.stat(untouched).st_mtime == 1
    for f in files:
        assert (dst / f).read_bytes() == (again / f).read_bytes(), f

    with pytest.raises(ValueError, match="other gap"):
        split_dota(src, again, settings=SplitSettings(PATCH, 32, RATES), num_workers=1, progress=False)


def test_register_and_load(split, monkeypatch):
    _, scenes, dst, _ = split
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})
    register_dota("tiny_dota_patches", dst)
    meta = MetadataCatalog.get("tiny_dota_patches")
    assert meta.thing_classes == list(DOTA_V1_CLASSES) and meta.evaluator_type == "dota_patches"
    assert meta.has_labels is True and meta.dota_root == str(dst)
    dicts = DatasetCatalog.get("tiny_dota_patches")
    assert [d["image_id"] for d in dicts] == list(range(len(dicts)))
    d = next(
        d for d in dicts if d["source_image"] == "P0002" and d["patch_scale"] == 0.5 and d["patch_origin"][0]
    )
    assert (d["height"], d["width"]) == (PATCH, PATCH) and os.path.isfile(d["file_name"])
    left = round(650 * 0.5) - PATCH
    assert d["patch_origin"] == (left / 0.5, 0.0)
    ann = d["annotations"][0]
    assert ann["bbox_mode"] == BoxMode.XYXY_ABS and DOTA_V1_CLASSES[ann["category_id"]] in CLASSES
    assert set(ann) == {"bbox", "bbox_mode", "category_id", "difficult"}

    with pytest.raises(DotaFormatError, match="not in the given classes"):
        load_dota_patches(dst, ["plane", "ship"])


def test_unlabelled_split_and_bad_labels(tmp_path):
    write_dota_folder(tmp_path / "test", sizes=((300, 280),), labels=False)
    split_dota(tmp_path / "test", tmp_path / "test_p", settings=SETTINGS, num_workers=1, progress=False)
    dicts = load_dota_patches(tmp_path / "test_p")
    expected = sum(
        len(patch_starts(round(300 * r), PATCH, GAP)) * len(patch_starts(round(280 * r), PATCH, GAP))
        for r in RATES
    )
    assert len(dicts) == expected and all("annotations" not in d for d in dicts)

    write_dota_folder(tmp_path / "bad", sizes=((300, 280),))
    label = tmp_path / "bad" / "labelTxt" / "P0000.txt"
    label.write_text(label.read_text() + "1 2 3 4 5 6 7 8 airship 0\n")
    with pytest.raises(DotaFormatError, match=r"P0000.txt:\d+: category 'airship'"):
        split_dota(tmp_path / "bad", tmp_path / "bad_p", settings=SETTINGS, num_workers=1, progress=False)
    assert not (tmp_path / "bad_p").exists()  # labels are checked before anything is written

    write_dota_folder(tmp_path / "broken", sizes=((300, 280), (200, 100)))
    (tmp_path / "broken" / "images" / "P0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DotaFormatError, match=r"P0001\.png'?: unreadable PNG header"):
        split_dota(
            tmp_path / "broken", tmp_path / "broken_p", settings=SETTINGS, num_workers=2, progress=False
        )
    assert not (tmp_path / "broken_p" / "annotations" / "P0001.json").exists()


def test_cli_reports_bad_lines_or_skips_them_with_a_count(tmp_path, capsys):
    prepare = load_script(REPO / "datasets" / "prepare_dota.py", "prepare_dota")
    scenes = write_dota_folder(tmp_path / "src", sizes=((300, 280),))
    label = tmp_path / "src" / "labelTxt" / "P0000.txt"
    good = len(label.read_text().splitlines())
    label.write_text(label.read_text() + "1 2 3 4 5 6 7 plane\n1 2 3 4 5 6 7 8 plane x\n")
    argv = [
        "--src",
        str(tmp_path / "src"),
        "--dst",
        str(tmp_path / "dst"),
        "--patch-size",
        "256",
        "--gap",
        "64",
    ]
    assert prepare.main(argv) == 1
    assert f"P0000.txt:{good + 1}: expected 9 or 10 fields" in capsys.readouterr().err

    assert prepare.main(argv + ["--skip-invalid", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"P0000.txt:{good + 1}:" in err and f"P0000.txt:{good + 2}: difficult must be" in err
    assert "2 invalid label lines skipped" in err
    assert len(records(tmp_path / "dst")["P0000"]["objects"]) == len(scenes["P0000"])
    assert prepare.main(argv + ["--gap", "300"]) == 1  # gap >= patch size
    assert "gap < patch_size" in capsys.readouterr().err
