"""The synthetic generator writes deterministic data in the exact DIOR and DOTA release layouts, with the
content the models are meant to learn (crowds, small and large objects, classes told apart by high-frequency
texture)."""
import hashlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import load_script
from ds2d2.data.synthetic import (
    MARKER_FILE,
    SYNTHETIC_DIOR_CLASSES,
    SYNTHETIC_DOTA_CLASSES,
    write_synthetic_dior,
    write_synthetic_dota,
)

REPO = Path(__file__).resolve().parents[1]
# The 20 DIOR classes and 15 DOTA v1.0 classes, written out here independently of the package.
DIOR_20 = {
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "Expressway-Service-area", "Expressway-toll-station", "golffield", "groundtrackfield", "harbor",
    "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
}
DOTA_15 = {
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter", "roundabout",
    "soccer-ball-field", "swimming-pool",
}
HBB = "Annotations/Horizontal Bounding Boxes"
SMALL_DOTA = dict(image_size=600)  # normal scenes 450-750 px, every fourth one 180-300 px


def tree_digest(root: Path) -> dict:
    """{relative path: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_voc(path: Path) -> tuple[str, int, int, list[tuple[str, int, int, int, int]]]:
    root = ET.parse(path).getroot()
    size = root.find("size")
    corners = ("xmin", "ymin", "xmax", "ymax")
    boxes = [(o.findtext("name"), *(int(o.find("bndbox").findtext(k)) for k in corners))
             for o in root.iter("object")]
    return root.findtext("filename"), int(size.findtext("width")), int(size.findtext("height")), boxes


def read_dota(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[:2], [line.split() for line in lines[2:]]


@pytest.fixture(scope="module")
def dior(tmp_path_factory) -> Path:
    return write_synthetic_dior(tmp_path_factory.mktemp("dior") / "out", num_images=40, seed=3)


@pytest.fixture(scope="module")
def dota(tmp_path_factory) -> Path:
    return write_synthetic_dota(tmp_path_factory.mktemp("dota") / "out", num_images=8, seed=3, **SMALL_DOTA)


def test_same_arguments_give_identical_bytes_and_the_seed_matters(tmp_path, dior, dota):
    assert tree_digest(write_synthetic_dior(tmp_path / "a", 40, 3)) == tree_digest(dior)
    assert tree_digest(write_synthetic_dota(tmp_path / "b", 8, 3, **SMALL_DOTA)) == tree_digest(dota)
    other = tree_digest(write_synthetic_dior(tmp_path / "c", 40, 4))
    assert other.keys() == tree_digest(dior).keys() and other != tree_digest(dior)


def test_dior_layout_is_the_release_layout(dior):
    files = {str(p.relative_to(dior)) for p in dior.rglob("*") if p.is_file()}
    ids = [f"{i:05d}" for i in range(1, 41)]
    # 40 images, split 50/20/30: test = 12 images, val = 8, train = 20; trainval holds ids 1-28.
    expected = {f"{HBB}/{i}.xml" for i in ids} | {f"Annotations/Oriented Bounding Boxes/{i}.xml" for i in ids}
    expected |= {f"JPEGImages-trainval/{i}.jpg" for i in ids[:28]}
    expected |= {f"JPEGImages-test/{i}.jpg" for i in ids[28:]}
    expected |= {f"ImageSets/Main/{s}.txt" for s in ("train", "val", "test")} | {MARKER_FILE}
    assert files == expected
    lists = {s: (dior / "ImageSets/Main" / f"{s}.txt").read_text().split("\n")
             for s in ("train", "val", "test")}
    assert all(lines[-1] == "" for lines in lists.values())  # one id per line, newline-terminated
    train, val, test = (lines[:-1] for lines in lists.values())
    assert (len(train), len(val)) == (20, 8) and sorted(train + val) == ids[:28] and test == ids[28:]
    assert train == sorted(train) and val == sorted(val)
    assert train != ids[:20]  # train and val ids interleave, as in the real lists


def test_dior_xml_matches_the_images_and_boxes_lie_inside(dior):
    names, cut = set(), 0
    for xml in sorted((dior / HBB).glob("*.xml")):
        filename, width, height, boxes = read_voc(xml)
        folder = "JPEGImages-trainval" if int(xml.stem) <= 28 else "JPEGImages-test"
        image = cv2.imread(str(dior / folder / filename))
        assert filename == f"{xml.stem}.jpg" and image.shape == (height, width, 3) == (128, 128, 3)
        root = ET.parse(xml).getroot()
        assert root.findtext("size/depth") == "3" and root.findtext("source/database") == "DIOR"
        assert all(o.findtext("pose") == "Unspecified" for o in root.iter("object"))
        assert boxes, f"{xml} has no object"
        for name, x0, y0, x1, y1 in boxes:  # VOC: 1-based, inclusive
            assert 1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height, (xml, name)
            names.add(name)
            cut += x0 == 1 or y0 == 1 or x1 == width or y1 == height
    assert names == set(SYNTHETIC_DIOR_CLASSES) and set(SYNTHETIC_DIOR_CLASSES) <= DIOR_20
    assert 4 <= len(SYNTHETIC_DIOR_CLASSES) <= 6
    assert cut >= 5  # some objects are cut by the image border


def test_dior_has_crowds_small_and_large_objects(dior):
    counts, sides = [], []
    for xml in (dior / HBB).glob("*.xml"):
        boxes = read_voc(xml)[3]
        counts.append(len(boxes))
        sides += [max(x1 - x0, y1 - y0) + 1 for _, x0, y0, x1, y1 in boxes]
    sides = np.array(sides)
    assert max(counts) >= 30 and sum(c >= 20 for c in counts) >= 4
    assert np.mean(sides <= 12) > 0.4 and np.sum(sides >= 30) >= 10 and sides.min() >= 3


def high_pass_energy(patch: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the grey image (edges excluded)."""
    g = patch.astype(np.float64).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.mean(lap**2))


def test_tennis_and_basketball_courts_share_colour_and_differ_in_high_frequencies(dior):
    colour, energy = {"tenniscourt": [], "basketballcourt": []}, {"tenniscourt": [], "basketballcourt": []}
    for xml in (dior / HBB).glob("*.xml"):
        filename, _, _, boxes = read_voc(xml)
        folder = "JPEGImages-trainval" if int(xml.stem) <= 28 else "JPEGImages-test"
        image = cv2.imread(str(dior / folder / filename))
        for name, x0, y0, x1, y1 in boxes:
            if name in colour and min(x1 - x0, y1 - y0) >= 6:
                patch = image[y0 - 1:y1, x0 - 1:x1]
                colour[name].append(patch.reshape(-1, 3).mean(axis=0))
                energy[name].append(high_pass_energy(patch))
    assert min(len(v) for v in energy.values()) >= 15
    assert np.abs(np.mean(colour["tenniscourt"], 0) - np.mean(colour["basketballcourt"], 0)).max() < 15
    assert np.mean(energy["basketballcourt"]) > 1.3 * np.mean(energy["tenniscourt"])


def test_dota_layout_and_labels(dota):
    splits = {s: sorted(p.stem for p in (dota / s / "images").glob("*")) for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == [f"P{i:04d}" for i in range(8)]
    assert [len(v) for v in splits.values()] == [4, 2, 2]  # 50/20/30 of 8 (val and test rounded)
    assert not (dota / "test" / "labelTxt").exists()
    sizes, n_objects, n_difficult = [], 0, 0
    for split in ("train", "val"):
        assert sorted(p.stem for p in (dota / split / "labelTxt").glob("*.txt")) == splits[split]
        for name in splits[split]:
            image = cv2.imread(str(dota / split / "images" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            h, w = image.shape[:2]
            sizes.append((h, w))
            header, objects = read_dota(dota / split / "labelTxt" / f"{name}.txt")
            assert header[0] == "imagesource:GoogleEarth"
            assert header[1].startswith("gsd:") and 0.05 < float(header[1][4:]) < 0.5
            for fields in objects:
                assert len(fields) == 10 and fields[8] in SYNTHETIC_DOTA_CLASSES and fields[9] in ("0", "1")
                poly = np.array(fields[:8], dtype=float).reshape(4, 2)
                assert poly.min() >= 0, (name, fields)
                assert poly[:, 0].max() <= w - 1 and poly[:, 1].max() <= h - 1, (name, fields)
                edges = np.roll(poly, -1, axis=0) - poly
                edges /= np.linalg.norm(edges, axis=1, keepdims=True)
                assert np.abs((edges * np.roll(edges, -1, axis=0)).sum(1)).max() < 0.05  # right angles
                assert np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1]) > 0
                n_objects += 1
                n_difficult += fields[9] == "1"
    assert set(SYNTHETIC_DOTA_CLASSES) <= DOTA_15 and n_objects >= 100 and n_difficult >= 3
    assert any(h != w for h, w in sizes)


def test_dota_default_scenes_are_large_crowded_and_rotated(tmp_path):
    out = write_synthetic_dota(tmp_path / "d", num_images=2, seed=0, split=(1.0, 0.0, 0.0))
    (h0, w0), (h1, w1) = (cv2.imread(str(out / "train/images" / f"P000{i}.png")).shape[:2] for i in (0, 1))
    assert 1500 <= min(h0, w0) and max(h0, w0) <= 2500 and max(h1, w1) < 1024
    _, objects = read_dota(out / "train/labelTxt/P0000.txt")
    poly = np.array([o[:8] for o in objects], dtype=float).reshape(-1, 4, 2)
    angles = np.degrees(np.arctan2(*(poly[:, 1] - poly[:, 0]).T[::-1])) % 90
    assert len(objects) >= 200 and np.histogram(angles, bins=9, range=(0, 90))[0].min() > 0


def test_existing_dataset_is_kept_other_arguments_rewrite_and_foreign_folders_are_refused(tmp_path):
    out = write_synthetic_dior(tmp_path / "d", 6, 0, image_size=64)
    first = out / "JPEGImages-trainval/00001.jpg"
    os.utime(first, (0, 0))
    write_synthetic_dior(out, 6, 0, image_size=64)
    assert first.stat().st_mtime == 0  # skipped
    write_synthetic_dior(out, 4, 0, image_size=64)
    assert len(list((out / HBB).glob("*.xml"))) == 4 and first.stat().st_mtime > 0  # no stale files left
    write_synthetic_dota(out, 2, 0, image_size=200)
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "test", "train", "val"]
    foreign = tmp_path / "real"
    (foreign / "Annotations").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="real"):
        write_synthetic_dior(foreign, 4, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_images=0), "num_images"),
    (dict(seed=-1), "seed"),
    (dict(split=(0.5, 0.5, 0.5)), "split"),
    (dict(num_images=2, split=(0.0, 0.5, 0.5)), "no training image"),
    (dict(image_size=16), "image_size"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_dior(tmp_path / "x", **{"num_images": 4, "seed": 0, **kwargs})
    assert not (tmp_path / "x").exists()


def test_command_line_writes_what_the_api_writes(tmp_path):
    cli = load_script(REPO / "datasets" / "make_synthetic.py", "make_synthetic")
    cli.main(["--format", "dior", "--out", str(tmp_path / "cli"), "--num-images", "5", "--seed", "7",
              "--image-size", "96"])
    api = write_synthetic_dior(tmp_path / "api", num_images=5, seed=7, image_size=96)
    assert tree_digest(tmp_path / "cli") == tree_digest(api)
    cli.main(["--format", "dota", "--out", str(tmp_path / "cli_dota"), "--num-images", "3",
              "--min-size", "150", "--max-size", "180", "--image-size", "300"])
    assert tree_digest(tmp_path / "cli_dota") == tree_digest(
        write_synthetic_dota(tmp_path / "api_dota", 3, 0, 300, min_size=150, max_size=180))
    with pytest.raises(SystemExit):
        cli.main(["--format", "dior", "--out", str(tmp_path / "bad"), "--min-size", "100"])
