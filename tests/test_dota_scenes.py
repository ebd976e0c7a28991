"""Tiny DOTA-layout scenes for the DOTA tests (imported by the other test_dota_* files), and checks of them.

Objects are rotated rectangles, one per 50-px grid cell (so their boxes never overlap), at most 40 px across,
so with 256-px patches and a 64-px gap each one lies whole inside some patch at rates <= 1.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

CLASSES = ("plane", "ship", "storage-tank")  # all DOTA v1.0 names: the splitter picks the v1.0 list
SIZES = ((517, 301), (200, 150), (650, 433))  # odd sizes, one smaller than a 256-px patch
CELL = 50
PATCH, GAP = 256, 64


def rotated_rectangle(cx: float, cy: float, w: float, h: float, angle: float) -> List[float]:
    """Corners (x1, y1, ..., x4, y4) of a w x h rectangle centred at (cx, cy), rotated by ``angle`` rad."""
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2 @ np.array([[c, s], [-s, c]]) + [cx, cy]
    return [round(float(v), 1) for v in corners.ravel()]


def scene_objects(width: int, height: int, rng: np.random.Generator) -> List[Tuple[List[float], str, int]]:
    """(polygon, category, difficult) for every grid cell of a width x height image."""
    objects = []
    for gy in range(height // CELL):
        for gx in range(width // CELL):
            w, h = rng.uniform(12, 28), rng.uniform(6, 16)
            poly = rotated_rectangle((gx + 0.5) * CELL, (gy + 0.5) * CELL, w, h, rng.uniform(0, np.pi))
            objects.append((poly, CLASSES[int(rng.integers(len(CLASSES)))], int(rng.random() < 0.1)))
    return objects


def write_dota_folder(
    root: Path, sizes: Sequence[Tuple[int, int]] = SIZES, seed: int = 0, labels: bool = True
) -> Dict[str, List[Tuple[List[float], str, int]]]:
    """Write root/images/P<k>.png (+ root/labelTxt/P<k>.txt with header lines); return objects per stem."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if labels:
        (root / "labelTxt").mkdir(exist_ok=True)
    scenes = {}
    for k, (width, height) in enumerate(sizes):
        stem = f"P{k:04d}"
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        objects = scene_objects(width, height, rng)
        if labels:
            lines = ["imagesource:GoogleEarth", "gsd:0.146343590398"]
            lines += [" ".join(map(str, poly)) + f" {cat} {diff}" for poly, cat, diff in objects]
            (root / "labelTxt" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        scenes[stem] = objects
    return scenes


def bounds(poly: Sequence[float]) -> List[float]:
    return [min(poly[0::2]), min(poly[1::2]), max(poly[0::2]), max(poly[1::2])]


def test_scene_objects_are_small_and_disjoint():
    objects = scene_objects(517, 301, np.random.default_rng(0))
    boxes = np.array([bounds(p) for p, _, _ in objects])
    assert len(objects) == (517 // CELL) * (301 // CELL)
    assert np.all(boxes[:, 2:] - boxes[:, :2] < GAP)
    for i, a in enumerate(boxes):
        others = np.delete(boxes, i, axis=0)
        overlap = (
            (others[:, 0] < a[2]) & (others[:, 2] > a[0]) & (others[:, 1] < a[3]) & (others[:, 3] > a[1])
        )
        assert not overlap.any()


def test_written_folder_round_trips(tmp_path):
    scenes = write_dota_folder(tmp_path, sizes=((120, 90),))
    assert cv2.imread(str(tmp_path / "images" / "P0000.png")).shape == (90, 120, 3)
    lines = (tmp_path / "labelTxt" / "P0000.txt").read_text().splitlines()
    assert lines[0].startswith("imagesource:") and len(lines) == 2 + len(scenes["P0000"])
