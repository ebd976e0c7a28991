"""Deterministic synthetic remote-sensing detection data, written in the real DIOR (with DIOR-R's oriented
annotations) and DOTA release layouts.

One scene renderer (:func:`render_scene`) draws a textured background (multi-scale noise, fields with crop
rows, roads, unannotated buildings) and annotated objects: many small ones, some large ones, crowded groups
(parking lots, tank farms, moored ships, court complexes). Classes that share shape, size and colour differ
only in high-frequency texture (tennis courts are striped, basketball courts finely checkered; small vehicles
have windows, large vehicles cargo ribs), which is what spectral distillation is about.

The writers only write files (plus a ``.synthetic.json`` marker that no loader reads): the project's real DIOR
and DOTA loaders are what read them back. Every random draw comes from a numpy Generator seeded by (seed,
format, image index), and images are written with fixed encoder settings, so equal arguments give
byte-identical files.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "SYNTHETIC_DIOR_CLASSES",
    "SYNTHETIC_DOTA_CLASSES",
    "MARKER_FILE",
    "ObjectStyle",
    "SceneLayout",
    "SceneObject",
    "render_scene",
    "write_synthetic_dior",
    "write_synthetic_dota",
    "DEFAULT_SPLIT",
]

RGB = tuple[int, int, int]

MARKER_FILE = ".synthetic.json"
_GENERATOR_VERSION = 3  # bump when the output changes, so that old outputs are regenerated (3: DIOR-R XMLs)
_REF_SIZE = 128  # object sizes below are in pixels of a 128 px DIOR image (SceneLayout.scale = 1)
_SUPERSAMPLE = 4  # objects are rasterised on a 4x finer grid, then box-filtered (anti-aliased)
_SENSOR_NOISE = 2.5  # std of the per-pixel Gaussian noise (grey levels)


@dataclass(frozen=True)
class ObjectStyle:
    """How one class looks. Lengths are in pixels at ``SceneLayout.scale == 1``.

    shape: outline, "rect" | "circle" | "hull" (ship, pointed bow) | "plane" (fuselage, wings, tail).
    texture: high-frequency detail, "plain" | "stripes" | "checker" | "rings" | "windshield" | "deck".
    length: (min, max) of the long side, sampled log-uniformly (so small objects dominate).
    aspect: (min, max) of short side / long side.
    colours: base RGB colours; each object jitters one by a few grey levels.
    contrast: texture amplitude (grey levels); period: texture period (px).
    group: (min rows, max rows, min cols, max cols) of a crowded group, or None if the class never crowds.
    group_weight: relative chance that a crowded group is of this class.
    gap: spacing between members of a crowded group (px); pad: RGB of the ground under a group (parking lot,
    tank-farm concrete, harbour water).
    """

    shape: str
    texture: str
    length: tuple[float, float]
    aspect: tuple[float, float]
    colours: tuple[RGB, ...]
    contrast: float = 0.0
    period: float = 4.0
    group: tuple[int, int, int, int] | None = None
    group_weight: float = 0.0
    gap: float = 1.5
    pad: RGB = (120, 120, 116)


@dataclass(frozen=True)
class SceneLayout:
    """How crowded a scene is. A tile is a (128 * scale)^2 px area; counts are Poisson means per tile.

    scale: multiplies every object, texture and background length (1: 128 px DIOR images).
    objects_per_tile: scattered annotated objects. groups_per_tile: crowded groups of one class.
    group_size: multiplies the largest row and column counts of a group.
    buildings_per_tile: plain grey rectangles, not annotated (hard negatives).
    fields_per_tile, roads_per_tile: background fields with crop rows, road segments.
    border_prob: chance that a scattered object is cut by the image border (at most half of it outside).
    difficult_prob: chance that an object is faded (drawn at half opacity) and flagged difficult.
    """

    scale: float = 1.0
    objects_per_tile: float = 7.0
    groups_per_tile: float = 0.6
    group_size: float = 1.0
    buildings_per_tile: float = 2.0
    fields_per_tile: float = 1.5
    roads_per_tile: float = 0.6
    border_prob: float = 0.1
    difficult_prob: float = 0.0


@dataclass(frozen=True)
class SceneObject:
    """One annotated object. corners: (4, 2) oriented box (x, y) in pixels, clockwise on screen (y down),
    first corner at the object's rear-left; outline: (N, 2) drawn polygon, inside the oriented box."""

    name: str
    corners: np.ndarray
    outline: np.ndarray
    difficult: bool


_COURT_COLOURS: tuple[RGB, ...] = ((62, 112, 150), (70, 128, 92), (150, 82, 70))
_CAR_COLOURS: tuple[RGB, ...] = (
    (232, 232, 228), (178, 180, 182), (36, 38, 42), (172, 42, 40), (42, 64, 150))
_ASPHALT: RGB = (82, 82, 86)
_GENERIC_STYLES: dict[str, ObjectStyle] = {
    "plane": ObjectStyle("plane", "plain", (14, 42), (0.85, 1.0), ((226, 226, 224), (200, 204, 210))),
    "ship": ObjectStyle("hull", "deck", (10, 30), (0.24, 0.32), ((236, 236, 230), (196, 194, 188)), 40,
                        3.0, group=(1, 2, 3, 7), group_weight=1.0, gap=2.0, pad=(46, 70, 92)),
    "tank": ObjectStyle("circle", "rings", (6, 20), (1.0, 1.0), ((222, 222, 216), (204, 202, 192)), 50,
                        4.0, group=(2, 4, 2, 5), group_weight=2.0, gap=2.0, pad=(150, 146, 136)),
    "court_stripes": ObjectStyle("rect", "stripes", (12, 28), (0.5, 0.6), _COURT_COLOURS, 42, 4.0,
                                 group=(1, 2, 2, 3), group_weight=0.5, gap=2.0, pad=(126, 136, 120)),
    "court_checker": ObjectStyle("rect", "checker", (12, 28), (0.5, 0.6), _COURT_COLOURS, 42, 4.0,
                                 group=(1, 2, 2, 3), group_weight=0.5, gap=2.0, pad=(126, 136, 120)),
    "small_vehicle": ObjectStyle("rect", "windshield", (6, 10), (0.45, 0.55), _CAR_COLOURS, 60, 4.0,
                                 group=(2, 5, 6, 14), group_weight=4.0, gap=1.5, pad=_ASPHALT),
    "large_vehicle": ObjectStyle("rect", "deck", (8, 16), (0.38, 0.48), _CAR_COLOURS, 60, 2.0,
                                 group=(1, 3, 3, 8), group_weight=1.5, gap=1.5, pad=_ASPHALT),
}
_BUILDING = ObjectStyle(
    "rect", "plain", (10, 24), (0.6, 1.0), ((168, 164, 158), (150, 150, 152), (182, 170, 160)))

_DIOR_STYLES: dict[str, ObjectStyle] = {  # in DIOR's class order
    "airplane": _GENERIC_STYLES["plane"],
    "basketballcourt": _GENERIC_STYLES["court_checker"],
    "ship": _GENERIC_STYLES["ship"],
    "storagetank": _GENERIC_STYLES["tank"],
    "tenniscourt": _GENERIC_STYLES["court_stripes"],
    "vehicle": _GENERIC_STYLES["small_vehicle"],
}
_DOTA_STYLES: dict[str, ObjectStyle] = {  # in DOTA v1.0's class order
    "plane": _GENERIC_STYLES["plane"],
    "ship": _GENERIC_STYLES["ship"],
    "storage-tank": _GENERIC_STYLES["tank"],
    "tennis-court": _GENERIC_STYLES["court_stripes"],
    "basketball-court": _GENERIC_STYLES["court_checker"],
    "large-vehicle": _GENERIC_STYLES["large_vehicle"],
    "small-vehicle": _GENERIC_STYLES["small_vehicle"],
}
SYNTHETIC_DIOR_CLASSES: tuple[str, ...] = tuple(_DIOR_STYLES)
SYNTHETIC_DOTA_CLASSES: tuple[str, ...] = tuple(_DOTA_STYLES)

_DIOR_LAYOUT = SceneLayout()
_DOTA_LAYOUT = SceneLayout(objects_per_tile=2.0, groups_per_tile=0.12, group_size=2.0,
                           buildings_per_tile=1.5, fields_per_tile=1.0, roads_per_tile=0.3, border_prob=0.0,
                           difficult_prob=0.08)
_GROUND_TINTS: tuple[RGB, ...] = ((88, 104, 72), (128, 112, 90), (112, 112, 108), (140, 132, 100))


# ------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------
def _local_outline(shape: str, length: float, width: float) -> np.ndarray:
    """(N, 2) polygon in the object frame (u along the long side, v across), inside [-L/2, L/2] x
    [-W/2, W/2]."""
    a, b = length / 2, width / 2
    if shape == "rect":
        pts = [(-a, -b), (a, -b), (a, b), (-a, b)]
    elif shape == "circle":
        t = np.arange(32) * (2 * math.pi / 32)
        return np.stack([a * np.cos(t), a * np.sin(t)], axis=1)
    elif shape == "hull":
        pts = [(-a, -b), (0.45 * a, -b), (a, 0.0), (0.45 * a, b), (-a, b)]
    elif shape == "plane":
        f = 0.075 * length  # fuselage half width
        top = [(a, 0.0), (0.8 * a, -f), (0.25 * a, -f), (-0.1 * a, -b), (-0.3 * a, -b), (-0.2 * a, -f),
               (-0.75 * a, -f), (-a, -0.35 * b), (-a, 0.0)]
        pts = top + [(u, -v) for u, v in reversed(top[1:-1])]
    else:
        raise ValueError(f"unknown object shape {shape!r}")
    return np.asarray(pts, dtype=np.float64)


def _to_image(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate (N, 2) object-frame points by ``angle`` (radians, clockwise on screen) about (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + local[:, 0] * c - local[:, 1] * s, cy + local[:, 0] * s + local[:, 1] * c], axis=1)


def _to_local(x: np.ndarray, y: np.ndarray, cx: float, cy: float,
              angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_to_image` for coordinate grids."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return dx * c + dy * s, -dx * s + dy * c


def _texture(kind: str, u: np.ndarray, v: np.ndarray, length: float, width: float,
             period: float) -> np.ndarray:
    """Texture value in [-1, 1] at object-frame points (u, v) of an object of the given size (px)."""
    if kind == "plain":
        return np.zeros(np.broadcast_shapes(u.shape, v.shape))
    if kind == "stripes":  # bars across the long axis
        return np.where(np.mod(u / period, 1.0) < 0.5, 1.0, -1.0) + 0 * v
    if kind == "checker":  # squares of half a period, like the bars of "stripes"
        return np.where((np.floor(2 * u / period) + np.floor(2 * v / period)) % 2 == 0, 1.0, -1.0)
    if kind == "rings":  # tank roof: dark ring and a bright centre
        r = np.hypot(u, v) / (length / 2)
        return np.where((r > 0.55) & (r < 0.75), -1.0, np.where(r < 0.25, 0.5, 0.0))
    if kind == "windshield":  # dark front window, lighter rear window
        t = u / length
        return np.where((t > 0.12) & (t < 0.3), -1.0, np.where((t > -0.38) & (t < -0.26), -0.6, 0.0)) + 0 * v
    if kind == "deck":  # cargo ribs / deck hatches in a central band
        inside = np.abs(v) < width / 4
        return np.where(inside & (np.mod(u / period, 1.0) < 0.5), -1.0, 0.0)
    raise ValueError(f"unknown object texture {kind!r}")


# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------
def _paint(img: np.ndarray, outline: np.ndarray, colour_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
           ss: int = _SUPERSAMPLE, opacity: float = 1.0) -> None:
    """Composite a polygon into ``img`` (H, W, 3 float32) in place, anti-aliased by ``ss`` x ``ss``
    supersampling.

    outline: (N, 2) polygon (x, y) in pixels; pixel (i, j) covers [j, j+1) x [i, i+1).
    colour_at(x, y): colours (..., 3) at broadcastable pixel-coordinate grids x (1, w) and y (h, 1).
    """
    h, w = img.shape[:2]
    x0, y0 = np.floor(outline.min(axis=0)).astype(int)
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    ph, pw = y1 - y0, x1 - x0
    # OpenCV puts pixel centres on integers; shift=4 gives 4 fractional bits
    pts = np.rint(((outline - (x0, y0)) * ss - 0.5) * 16).astype(np.int32)
    mask = np.zeros((ph * ss, pw * ss), np.uint8)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    xs = x0 + (np.arange(pw * ss) + 0.5) / ss
    ys = y0 + (np.arange(ph * ss) + 0.5) / ss
    colour = np.asarray(colour_at(xs[None, :], ys[:, None]), dtype=np.float32)
    m = mask.astype(np.float32)[..., None]
    alpha = m.reshape(ph, ss, pw, ss, 1).mean(axis=(1, 3)) * opacity
    premultiplied = (colour * m).reshape(ph, ss, pw, ss, 3).mean(axis=(1, 3)) * opacity
    region = img[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += premultiplied


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 value noise: unit-variance lattice values every ``cell`` px, smoothstep-interpolated."""
    cell = max(cell, 1.0)
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)

    def weights(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = (np.arange(n, dtype=np.float32) + 0.5) / np.float32(cell)
        i = t.astype(np.int64)
        f = t - i
        return i, f * f * (3 - 2 * f)

    ix, fx = weights(w)
    iy, fy = weights(h)
    rows = grid[:, ix] * (1 - fx) + grid[:, ix + 1] * fx  # (gh, w), separable interpolation
    return rows[iy] * (1 - fy)[:, None] + rows[iy + 1] * fy[:, None]


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _road(img: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Composite one anti-aliased straight road segment (60-200 px long at scale 1) into ``img`` in place."""
    h, w = img.shape[:2]
    angle, px, py = rng.uniform(0, math.pi), rng.uniform(0, w), rng.uniform(0, h)
    half_length, half_width = rng.uniform(30, 100) * scale, rng.uniform(1.2, 2.5) * scale
    colour = _jitter(rng, (112, 112, 110), 12)
    c, s = math.cos(angle), math.sin(angle)
    reach_x, reach_y = abs(c) * half_length + half_width + 1, abs(s) * half_length + half_width + 1
    x0, x1 = max(int(px - reach_x), 0), min(int(px + reach_x) + 1, w)
    y0, y1 = max(int(py - reach_y), 0), min(int(py + reach_y) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - px
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - py
    along = np.clip(xs * c + ys * s, -half_length, half_length)
    distance = np.hypot(xs - along * c, ys - along * s)  # to the segment
    alpha = np.clip(half_width + 0.5 - distance, 0.0, 1.0)[..., None]
    region = img[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * colour


def _background(rng: np.random.Generator, h: int, w: int, layout: SceneLayout, tiles: float) -> np.ndarray:
    """(h, w, 3) float32 RGB ground: tinted multi-scale noise, fields with crop rows, roads."""
    s = layout.scale
    tint = _jitter(rng, _GROUND_TINTS[rng.integers(len(_GROUND_TINTS))], 10)
    img = np.empty((h, w, 3), np.float32)
    img[:] = tint
    octaves = ((48, 14), (16, 9), (5, 5), (2, 3))  # (cell px, amplitude in grey levels)
    luminance = sum(amp * _smooth_noise(rng, h, w, cell * s) for cell, amp in octaves)
    img += luminance[..., None]
    for c in range(3):  # slow colour variation
        img[..., c] += 6 * _smooth_noise(rng, h, w, 40 * s)
    for _ in range(rng.poisson(layout.fields_per_tile * tiles)):
        length = rng.uniform(30, 90) * s
        cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, math.pi)
        outline = _to_image(_local_outline("rect", length, length * rng.uniform(0.4, 1.0)), cx, cy, angle)
        colour = _jitter(rng, tint, 20)
        period, row_angle = rng.uniform(5, 9) * s, angle + rng.choice([0.0, math.pi / 2])

        def field(x: np.ndarray, y: np.ndarray, cx=cx, cy=cy, a=row_angle, p=period,
                  col=colour) -> np.ndarray:
            u, _ = _to_local(x, y, cx, cy, a)
            return col + 6.0 * np.sin(2 * math.pi * u / p)[..., None]

        _paint(img, outline, field, ss=2)
    for _ in range(rng.poisson(layout.roads_per_tile * tiles)):
        _road(img, rng, s)
    return img


@dataclass(frozen=True)
class _Member:
    """One object of a placement, relative to the placement's centre (px, radians)."""

    dx: float
    dy: float
    angle: float
    length: float
    width: float


@dataclass(frozen=True)
class _Placement:
    """Objects placed together, relative to a centre; pad: (N, 2) ground polygon under them, or None."""

    members: list[_Member]
    pad: np.ndarray | None = None

    def extent(self) -> np.ndarray:
        """(4,) bounds (x0, y0, x1, y1) of the pad and all oriented boxes, relative to the centre."""
        parts = [_to_image(_local_outline("rect", m.length, m.width), m.dx, m.dy, m.angle)
                 for m in self.members]
        pts = np.concatenate(parts + ([self.pad] if self.pad is not None else []))
        return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _group(rng: np.random.Generator, style: ObjectStyle, layout: SceneLayout) -> _Placement:
    """A crowded group on a pad: rows x cols slots (85% occupied), side by side, long axes parallel."""
    assert style.group is not None
    r0, r1, c0, c1 = style.group
    rows = int(rng.integers(r0, math.ceil(r1 * layout.group_size) + 1))
    cols = int(rng.integers(c0, math.ceil(c1 * layout.group_size) + 1))
    length = _log_uniform(rng, style.length) * layout.scale
    width = length * rng.uniform(*style.aspect)
    gap = style.gap * layout.scale
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    members = []
    for r in range(rows):
        for k in range(cols):
            if rng.random() > 0.85:
                continue
            gu, gv = (k - (cols - 1) / 2) * (width + gap), (r - (rows - 1) / 2) * (length + gap)
            angle = theta + math.pi / 2 + rng.normal(0, 0.03)
            members.append(_Member(gu * c - gv * s, gu * s + gv * c, angle, length * rng.uniform(0.93, 1.0),
                                   width * rng.uniform(0.93, 1.0)))
    pad = _to_image(_local_outline("rect", cols * (width + gap) + 2 * gap, rows * (length + gap) + 2 * gap),
                    0.0, 0.0, theta)
    return _Placement(members, pad)


def _single(rng: np.random.Generator, style: ObjectStyle, scale: float) -> _Placement:
    length = _log_uniform(rng, style.length) * scale
    angle, width = rng.uniform(0, 2 * math.pi), length * rng.uniform(*style.aspect)
    return _Placement([_Member(0.0, 0.0, angle, length, width)])


def _find_spot(rng: np.random.Generator, extent: np.ndarray, h: int, w: int, occupied: list[np.ndarray],
               cut_by_border: bool, attempts: int = 30) -> tuple[float, float] | None:
    """A centre where ``extent`` (relative bounds) touches no ``occupied`` box (which it then joins). With
    ``cut_by_border`` up to half of it may lie outside the image along one axis, otherwise it lies inside
    [0, w-1] x [0, h-1]. None when no spot was found in ``attempts`` random tries."""
    lo_x, hi_x = -extent[0], w - 1 - extent[2]
    lo_y, hi_y = -extent[1], h - 1 - extent[3]
    if cut_by_border:
        if rng.random() < 0.5:
            lo_x, hi_x = 0.0, float(w)
        else:
            lo_y, hi_y = 0.0, float(h)
    if hi_x < lo_x or hi_y < lo_y:
        return None
    taken = np.asarray(occupied).reshape(-1, 4)
    for _ in range(attempts):
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        box = extent + (cx - 1, cy - 1, cx + 1, cy + 1)  # one pixel of margin
        if not np.any((box[0] < taken[:, 2]) & (taken[:, 0] < box[2]) & (box[1] < taken[:, 3]) &
                      (taken[:, 1] < box[3])):
            occupied.append(box)
            return cx, cy
    return None


def _draw(img: np.ndarray, rng: np.random.Generator, style: ObjectStyle, member: _Member, cx: float,
          cy: float, difficult: bool, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Paint one object (faded if difficult); returns its (4, 2) oriented box and (N, 2) outline (px)."""
    x, y, angle = cx + member.dx, cy + member.dy, member.angle
    outline = _to_image(_local_outline(style.shape, member.length, member.width), x, y, angle)
    corners = _to_image(_local_outline("rect", member.length, member.width), x, y, angle)
    colour = _jitter(rng, style.colours[rng.integers(len(style.colours))], 8)

    def shade(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        u, v = _to_local(xs, ys, x, y, angle)
        tex = _texture(style.texture, u, v, member.length, member.width, style.period * scale)
        return colour + style.contrast * tex[..., None]

    _paint(img, outline, shade, opacity=0.5 if difficult else 1.0)
    return corners, outline


def render_scene(rng: np.random.Generator, height: int, width: int, styles: Mapping[str, ObjectStyle],
                 layout: SceneLayout) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one scene. Returns the (height, width, 3) uint8 RGB image and its annotated objects.

    Crowded groups are placed first, then unannotated buildings, then scattered objects (classes drawn
    uniformly); placements never overlap. At least one scattered object is attempted, so scenes are rarely
    empty.
    """
    tiles = height * width / (_REF_SIZE * layout.scale) ** 2
    img = _background(rng, height, width, layout, tiles)
    names = list(styles)
    group_weights = np.array([styles[n].group_weight if styles[n].group else 0.0 for n in names])
    occupied: list[np.ndarray] = []
    objects: list[SceneObject] = []

    def place(name: str | None, style: ObjectStyle, placement: _Placement, cut_by_border: bool) -> None:
        spot = _find_spot(rng, placement.extent(), height, width, occupied, cut_by_border)
        if spot is None:
            return
        if placement.pad is not None:
            pad_colour = _jitter(rng, style.pad, 6)
            _paint(img, placement.pad + spot, lambda x, y: np.broadcast_to(pad_colour, (*np.broadcast_shapes(
                x.shape, y.shape), 3)), ss=2)
        for member in placement.members:
            difficult = name is not None and rng.random() < layout.difficult_prob
            corners, outline = _draw(img, rng, style, member, spot[0], spot[1], difficult, layout.scale)
            if name is not None:
                objects.append(SceneObject(name, corners, outline, difficult))

    if group_weights.sum() > 0:
        for _ in range(rng.poisson(layout.groups_per_tile * tiles)):
            name = names[rng.choice(len(names), p=group_weights / group_weights.sum())]
            place(name, styles[name], _group(rng, styles[name], layout), False)
    for _ in range(rng.poisson(layout.buildings_per_tile * tiles)):
        place(None, _BUILDING, _single(rng, _BUILDING, layout.scale), False)
    for _ in range(1 + rng.poisson(layout.objects_per_tile * tiles)):
        name = names[rng.integers(len(names))]
        place(name, styles[name], _single(rng, styles[name], layout.scale), rng.random() < layout.border_prob)
    img += rng.normal(0.0, _SENSOR_NOISE, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


# ------------------------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------------------------
DEFAULT_SPLIT = (0.5, 0.2, 0.3)  # train, val, test fractions
_DIOR_DIRS = ("Annotations", "JPEGImages-trainval", "JPEGImages-test", "ImageSets")
_DIOR_HBB = Path("Annotations") / "Horizontal Bounding Boxes"
_DIOR_OBB = Path("Annotations") / "Oriented Bounding Boxes"
_DOTA_DIRS = ("train", "val", "test")
_FORMAT_CODES = {"dior": 0, "dota": 1}


def _rng(seed: int, fmt: str, *key: int) -> np.random.Generator:
    """Independent stream per (seed, format, key): image i looks the same whatever ``num_images`` is."""
    return np.random.default_rng(np.random.SeedSequence([seed, _FORMAT_CODES[fmt], *key]))


def _split_counts(num_images: int, split: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) image counts from fractions; test and val are rounded, train takes the rest."""
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(
            f"split must be three non-negative fractions (train, val, test) summing to 1, got {split}")
    n_test, n_val = round(num_images * split[2]), round(num_images * split[1])
    if num_images - n_test - n_val < 1:
        raise ValueError(f"split {tuple(split)} of {num_images} images leaves no training image")
    return num_images - n_test - n_val, n_val, n_test


def _check_common(num_images: int, seed: int) -> None:
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _start(out: Path, args: dict) -> bool:
    """Prepare ``out`` for writing a dataset described by ``args``; False when it already holds exactly that.

    A directory holding an earlier synthetic dataset (marker present) has that dataset's folders removed; a
    non-empty directory without a marker is refused, since it may hold real data.
    """
    marker = out / MARKER_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
            old_format = previous["args"]["format"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{marker}: not a synthetic-dataset marker ({e}); remove {out} by hand") from e
        if previous == {"args": args, "complete": True}:
            return False
        for name in _DIOR_DIRS if old_format == "dior" else _DOTA_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists, is not empty and has no {MARKER_FILE}: refusing to write a "
                              "synthetic dataset over what may be real data; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"args": args, "complete": False}, sort_keys=True) + "\n")
    return True


def _finish(out: Path, args: dict) -> None:
    (out / MARKER_FILE).write_text(json.dumps({"args": args, "complete": True}, sort_keys=True) + "\n")


def _write_image(path: Path, rgb: np.ndarray, params: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"{path}: OpenCV could not write the image")


def _voc_xml(filename: str, width: int, height: int, objects: list[SceneObject]) -> str:
    """DIOR's Horizontal-Bounding-Boxes XML: VOC fields, 1-based inclusive integer pixel boxes clipped to the
    image, no <truncated>/<difficult> (the real files have neither)."""
    lines = ["<annotation>", f"\t<filename>{filename}</filename>", "\t<source>",
             "\t\t<database>DIOR</database>", "\t</source>", "\t<size>", f"\t\t<width>{width}</width>",
             f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>", "\t</size>",
             "\t<segmented>0</segmented>"]
    for obj in objects:
        (x0, y0), (x1, y1) = obj.outline.min(axis=0), obj.outline.max(axis=0)
        xmin, ymin = int(math.floor(max(x0, 0.0))) + 1, int(math.floor(max(y0, 0.0))) + 1
        xmax, ymax = int(math.ceil(min(x1, float(width)))), int(math.ceil(min(y1, float(height))))
        lines += ["\t<object>", f"\t\t<name>{obj.name}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<bndbox>", f"\t\t\t<xmin>{xmin}</xmin>", f"\t\t\t<ymin>{ymin}</ymin>",
                  f"\t\t\t<xmax>{xmax}</xmax>", f"\t\t\t<ymax>{ymax}</ymax>", "\t\t</bndbox>", "\t</object>"]
    return "\n".join(lines + ["</annotation>"]) + "\n"


def _diorr_xml(filename: str, width: int, height: int, objects: list[SceneObject]) -> str:
    """DIOR-R's Oriented-Bounding-Boxes XML: VOC fields, each object's <robndbox> with its 4 corners (pixels,
    0.1 px, not clipped to the image) from the object's rear-left corner clockwise on screen, <difficult>."""
    lines = ["<annotation>", f"\t<filename>{filename}</filename>", "\t<source>",
             "\t\t<database>DIOR</database>", "\t</source>", "\t<size>", f"\t\t<width>{width}</width>",
             f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>", "\t</size>",
             "\t<segmented>0</segmented>"]
    tags = ("left_top", "right_top", "right_bottom", "left_bottom")
    for obj in objects:
        lines += ["\t<object>", "\t\t<type>robndbox</type>", f"\t\t<name>{obj.name}</name>",
                  "\t\t<pose>Unspecified</pose>", "\t\t<truncated>0</truncated>",
                  f"\t\t<difficult>{int(obj.difficult)}</difficult>", "\t\t<robndbox>"]
        for tag, (x, y) in zip(tags, obj.corners):
            lines += [f"\t\t\t<x_{tag}>{x:.1f}</x_{tag}>", f"\t\t\t<y_{tag}>{y:.1f}</y_{tag}>"]
        lines += ["\t\t</robndbox>", "\t</object>"]
    return "\n".join(lines + ["</annotation>"]) + "\n"


def write_synthetic_dior(out: str | Path, num_images: int, seed: int, image_size: int = 128, *,
                         split: Sequence[float] = DEFAULT_SPLIT, jpeg_quality: int = 95) -> Path:
    """Write a synthetic dataset in DIOR's release layout under ``out`` and return ``out``.

    Layout: ``Annotations/Horizontal Bounding Boxes/NNNNN.xml`` (DIOR), ``Annotations/Oriented Bounding
    Boxes/NNNNN.xml`` (DIOR-R: the same objects' oriented boxes), ``JPEGImages-trainval/NNNNN.jpg`` (ids 1 to
    train+val), ``JPEGImages-test/NNNNN.jpg`` (the following ids), ``ImageSets/Main/{train,val,test}.txt``
    (5-digit ids; train and val are interleaved random subsets of the trainval ids). Images are square,
    ``image_size`` px; objects are 6-42 px at 128 px and scale with the image. Classes:
    :data:`SYNTHETIC_DIOR_CLASSES`. Nothing is written when ``out`` already holds the dataset of these
    arguments.
    """
    _check_common(num_images, seed)
    if num_images > 99999:
        raise ValueError(f"DIOR ids have 5 digits: num_images must be at most 99999, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    n_train, n_val, n_test = _split_counts(num_images, split)
    out = Path(out)
    args = {"format": "dior", "num_images": num_images, "seed": seed, "image_size": image_size,
            "split": [float(f) for f in split], "jpeg_quality": jpeg_quality, "version": _GENERATOR_VERSION}
    if not _start(out, args):
        return out
    layout = replace(_DIOR_LAYOUT, scale=image_size / _REF_SIZE)
    for folder in (_DIOR_HBB, _DIOR_OBB):
        (out / folder).mkdir(parents=True, exist_ok=True)
    n_trainval = n_train + n_val
    for index in range(num_images):
        image_id = f"{index + 1:05d}"
        rng = _rng(seed, "dior", 1, index)
        image, objects = render_scene(rng, image_size, image_size, _DIOR_STYLES, layout)
        folder = "JPEGImages-trainval" if index < n_trainval else "JPEGImages-test"
        _write_image(out / folder / f"{image_id}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        xml = _voc_xml(f"{image_id}.jpg", image_size, image_size, objects)
        (out / _DIOR_HBB / f"{image_id}.xml").write_text(xml)
        xml = _diorr_xml(f"{image_id}.jpg", image_size, image_size, objects)
        (out / _DIOR_OBB / f"{image_id}.xml").write_text(xml)
    ids = [f"{i + 1:05d}" for i in range(num_images)]
    train = set(_rng(seed, "dior", 0).permutation(n_trainval)[:n_train].tolist())
    lists = {"train": [ids[i] for i in range(n_trainval) if i in train],
             "val": [ids[i] for i in range(n_trainval) if i not in train], "test": ids[n_trainval:]}
    main = out / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for name, members in lists.items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in members))
    _finish(out, args)
    return out


def _dota_label(objects: list[SceneObject], gsd: float) -> str:
    """A DOTA v1.0 labelTxt: header lines, then ``x1 y1 ... x4 y4 category difficult`` (clockwise corners)."""
    lines = ["imagesource:GoogleEarth", f"gsd:{gsd:.12f}"]
    for obj in objects:
        coords = " ".join(f"{v:.1f}" for v in obj.corners.reshape(-1))
        lines.append(f"{coords} {obj.name} {int(obj.difficult)}")
    return "\n".join(lines) + "\n"


def write_synthetic_dota(out: str | Path, num_images: int, seed: int, image_size: int = 2000, *,
                         min_size: int | None = None, max_size: int | None = None,
                         split: Sequence[float] = DEFAULT_SPLIT, object_scale: float = 2.0) -> Path:
    """Write a synthetic dataset in DOTA v1.0's release layout under ``out`` and return ``out``.

    Layout: ``{train,val}/images/PNNNN.png`` with ``{train,val}/labelTxt/PNNNN.txt``,
    ``test/images/PNNNN.png`` (no labels); scene ids are numbered across splits and assigned to splits at
    random. Scene sides are drawn independently (non-square, odd sizes) from [min_size, max_size] (default
    0.75 and 1.25 x ``image_size``), except every fourth scene (P0001, P0005, ...), whose sides lie in
    [0.3, 0.5] x ``image_size`` (smaller than a 1024 px patch at the default size). Objects are rotated at any
    angle, lie inside [0, W-1] x [0, H-1], 8% are faded and marked difficult; their size is ``object_scale`` x
    the DIOR 128 px sizes (x0.85-1.2 per scene, reflected in the gsd header). Classes:
    :data:`SYNTHETIC_DOTA_CLASSES`. Nothing is written when ``out`` already holds the dataset of these
    arguments.
    """
    _check_common(num_images, seed)
    if num_images > 10000:
        raise ValueError(f"DOTA ids have 4 digits: num_images must be at most 10000, got {num_images}")
    min_size = round(0.75 * image_size) if min_size is None else min_size
    max_size = round(1.25 * image_size) if max_size is None else max_size
    small = (round(0.3 * image_size), round(0.5 * image_size))
    if not 32 <= min_size <= max_size or small[0] < 32:
        raise ValueError(f"scene sizes must satisfy 32 <= min_size <= max_size and 0.3 * image_size >= 32, "
                         f"got min_size={min_size}, max_size={max_size}, image_size={image_size}")
    if object_scale <= 0:
        raise ValueError(f"object_scale must be positive, got {object_scale}")
    counts = _split_counts(num_images, split)
    out = Path(out)
    args = {"format": "dota", "num_images": num_images, "seed": seed, "image_size": image_size,
            "min_size": min_size, "max_size": max_size, "split": [float(f) for f in split],
            "object_scale": float(object_scale), "version": _GENERATOR_VERSION}
    if not _start(out, args):
        return out
    order = _rng(seed, "dota", 0).permutation(num_images)
    parts = np.split(order, np.cumsum(counts)[:2])
    split_of = {int(i): name for name, part in zip(_DOTA_DIRS, parts) for i in part}
    for index in range(num_images):
        rng = _rng(seed, "dota", 1, index)
        lo, hi = small if index % 4 == 1 else (min_size, max_size)
        height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        scene_scale = object_scale * rng.uniform(0.85, 1.2)
        gsd = 0.13 * object_scale / scene_scale  # metres per pixel: objects larger in pixels, finer sampling
        layout = replace(_DOTA_LAYOUT, scale=scene_scale)
        image, objects = render_scene(rng, height, width, _DOTA_STYLES, layout)
        name, folder = f"P{index:04d}", out / split_of[index]
        _write_image(folder / "images" / f"{name}.png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if split_of[index] != "test":
            (folder / "labelTxt").mkdir(parents=True, exist_ok=True)
            (folder / "labelTxt" / f"{name}.txt").write_text(_dota_label(objects, gsd))
    for name in _DOTA_DIRS:  # every split folder exists, even one that drew no scene
        (out / name / "images").mkdir(parents=True, exist_ok=True)
        if name != "test":
            (out / name / "labelTxt").mkdir(parents=True, exist_ok=True)
    _finish(out, args)
    return out
