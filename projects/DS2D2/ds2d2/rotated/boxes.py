"""Oriented boxes: polygon <-> rotated box conversions and the angle convention, stated once.

API (torch, vectorised over N; float64 inside, results in the input's floating dtype, on its device):

- ``polygons_to_rotated_boxes(polys [N, 8]) -> [N, 5]``: the minimum-area rectangle around each polygon's 4
  points (its convex hull's), in the canonical form below.
- ``rotated_boxes_to_polygons(boxes [N, 5]) -> [N, 8]``: the 4 corners, in the order below.
- ``min_area_rotated_boxes(points [N, P, 2]) -> [N, 5]``: the same for any number of points (clipped
  polygons).
- ``canonical_rotated_boxes(boxes [N, 5]) -> [N, 5]``: the same rectangles in the canonical form.
- ``quadrilateral_problem(poly) -> Optional[str]``: why 8 numbers are not a usable labelled quadrilateral
  (non-finite, degenerate, self-intersecting), for readers to raise with the file and line.

Convention: Detectron2's ``BoxMode.XYWHA_ABS`` (``detectron2.structures.RotatedBoxes``). A box is
``(cx, cy, w, h, angle)``: centre and size in pixels, angle in degrees. Image axes: x to the right, y DOWN. At
angle 0 the box is the axis-aligned ``w x h`` rectangle, ``w`` along x. A positive angle turns it
counter-clockwise as seen on screen: the width direction is ``(cos a, -sin a)``, so at ``+90`` the width edge
points up the image (towards y = 0) and at ``-90`` down. A corner at offset ``(dx, dy)`` from the centre in
the box's own frame is at ``(cx + dx cos a + dy sin a, cy - dx sin a + dy cos a)``.

Corner order: the box's own top-left, top-right, bottom-right, bottom-left, i.e. offsets ``(-w/2, -h/2)``,
``(w/2, -h/2)``, ``(w/2, h/2)``, ``(-w/2, h/2)``: clockwise on screen, as DOTA lists an object's corners (and
as Detectron2's docstring names them A, B, C, D); at angle 0 these are the image-aligned TL, TR, BR, BL.

Canonical form ("long edge, [-90, 90)"): ``w >= h`` and ``-90 <= angle < 90``; a square (``w == h``) takes its
angle in ``[-45, 45)``. Every rectangle then has exactly one representation, the width is the object's long
axis (a ship's or bridge's heading modulo 180 degrees), and it lies inside Detectron2's recommended principal
range [-180, 180) (its rotated box regression normalises predicted angles into that range). It is MMRotate's
``le90`` (the convention of the DOTA references in issue 25) with the sign flipped: MMRotate measures angles
clockwise on screen in radians, so its ``(w, h, t)`` is our ``(w, h, -degrees(t))`` (their boundary
``-pi/2`` maps to our ``-90`` after normalising). MMRotate's ``oc`` (OpenCV's: angle in (0, 90], the edge
that makes it so is the width) swaps width and height across its boundary, and ``le135`` (long edge,
[-45, 135)) only moves the boundary; we use neither.

Polygon -> box: the minimum-area enclosing rectangle, like the DOTA devkit's and MMRotate's use of OpenCV's
``minAreaRect``, computed exactly here: such a rectangle has a side along an edge of the hull, and the hull
edges are among the points' pairwise directions (6 for 4 points), so the smallest of the rectangles aligned
with those directions is the minimum. A rectangle's polygon round-trips to the same set of corners.
"""
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "canonical_rotated_boxes",
    "min_area_rotated_boxes",
    "polygons_to_rotated_boxes",
    "quadrilateral_problem",
    "rotated_boxes_to_polygons",
]

# corner offsets in the box's own frame, in units of (w/2, h/2): TL, TR, BR, BL (clockwise on screen)
_CORNER_SIGNS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
MIN_AREA_FRACTION = 1e-6  # a quadrilateral below this fraction of its bounds' square is degenerate


def _result_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _check_shape(t: Tensor, width: int, name: str) -> None:
    if t.dim() != 2 or t.shape[1] != width:
        raise ValueError(f"{name} must have shape [N, {width}], got {tuple(t.shape)}")


def canonical_rotated_boxes(boxes: Tensor) -> Tensor:
    """The same rectangles with ``w >= h`` and angle in [-90, 90) ([-45, 45) for squares).

    boxes: [N, 5] (cx, cy, w, h, angle in degrees); sizes must be >= 0. Returns [N, 5], same dtype.
    """
    _check_shape(boxes, 5, "boxes")
    out = boxes.to(torch.float64).clone()
    swap = out[:, 2] < out[:, 3]
    out[:, 2], out[:, 3] = torch.where(swap, out[:, 3], out[:, 2]), torch.where(swap, out[:, 2], out[:, 3])
    angle = out[:, 4] + swap.to(out.dtype) * 90.0
    angle = torch.remainder(angle + 90.0, 180.0) - 90.0
    square = out[:, 2] == out[:, 3]
    angle = torch.where(square, torch.remainder(angle + 45.0, 90.0) - 45.0, angle)
    # remainder can round up to the period itself for tiny negative inputs: keep the half-open ranges
    angle = torch.where(angle >= 90.0, angle - 180.0, angle)
    angle = torch.where(square & (angle >= 45.0), angle - 90.0, angle)
    out[:, 4] = angle
    return out.to(_result_dtype(boxes))


def rotated_boxes_to_polygons(boxes: Tensor) -> Tensor:
    """Corners of rotated boxes, clockwise on screen from the box's own top-left (see the module docstring).

    boxes: [N, 5] (cx, cy, w, h, angle in degrees CCW). Returns [N, 8] (x1, y1, ..., x4, y4) in pixels.
    """
    _check_shape(boxes, 5, "boxes")
    b = boxes.to(torch.float64)
    theta = torch.deg2rad(b[:, 4])
    cos, sin = torch.cos(theta), torch.sin(theta)
    signs = torch.tensor(_CORNER_SIGNS, dtype=b.dtype, device=b.device)  # [4, 2]
    dx = signs[:, 0] * b[:, 2:3] / 2  # [N, 4]
    dy = signs[:, 1] * b[:, 3:4] / 2
    x = b[:, 0:1] + dx * cos[:, None] + dy * sin[:, None]
    y = b[:, 1:2] - dx * sin[:, None] + dy * cos[:, None]
    return torch.stack([x, y], 2).reshape(-1, 8).to(_result_dtype(boxes))


def min_area_rotated_boxes(points: Tensor) -> Tensor:
    """Minimum-area rectangles around point sets, in canonical form (w >= h, angle in [-90, 90)).

    points: [N, P, 2] (x, y) in pixels, P >= 1 (pad a shorter set by repeating one of its points). Returns
    [N, 5] (cx, cy, w, h, angle in degrees CCW). Such a rectangle has a side along an edge of the points'
    hull, and the hull's edges are among the P (P - 1) / 2 pairwise directions, so the smallest rectangle
    aligned with one of them is the minimum. Collinear or coincident points give zero height.
    """
    if points.dim() != 3 or points.shape[2] != 2 or points.shape[1] < 1:
        raise ValueError(f"points must have shape [N, P, 2] with P >= 1, got {tuple(points.shape)}")
    dtype = _result_dtype(points)
    pts = points.to(torch.float64)
    origin = pts.mean(1, keepdim=True)  # work relative to the centroid: no cancellation far from (0, 0)
    pts = pts - origin
    first, second = torch.triu_indices(pts.shape[1], pts.shape[1], offset=1, device=pts.device)
    if first.numel() == 0:  # one point per set
        first = second = torch.zeros(1, dtype=torch.long, device=pts.device)
    direction = pts[:, second] - pts[:, first]  # [N, K, 2]
    norm = direction.norm(dim=2, keepdim=True)
    fallback = torch.tensor([1.0, 0.0], dtype=pts.dtype, device=pts.device)
    u = torch.where(norm > 0, direction / norm.clamp_min(1e-300), fallback)  # [N, K, 2] unit directions
    v = torch.stack([-u[..., 1], u[..., 0]], 2)
    along_u = torch.einsum("nkc,npc->nkp", u, pts)  # [N, K, P] projections of the points
    along_v = torch.einsum("nkc,npc->nkp", v, pts)
    lo_u, hi_u = along_u.amin(2), along_u.amax(2)
    lo_v, hi_v = along_v.amin(2), along_v.amax(2)
    best = ((hi_u - lo_u) * (hi_v - lo_v)).argmin(1, keepdim=True)  # [N, 1]

    def pick(t: Tensor) -> Tensor:
        return t.gather(1, best).squeeze(1)

    u_best = u.gather(1, best[..., None].expand(-1, 1, 2)).squeeze(1)  # [N, 2]
    v_best = torch.stack([-u_best[:, 1], u_best[:, 0]], 1)
    mid_u = (pick(lo_u) + pick(hi_u)) / 2
    mid_v = (pick(lo_v) + pick(hi_v)) / 2
    center = origin[:, 0] + mid_u[:, None] * u_best + mid_v[:, None] * v_best
    width = pick(hi_u) - pick(lo_u)
    height = pick(hi_v) - pick(lo_v)
    # the width direction u is (cos a, -sin a) for a Detectron2 angle a (CCW on screen, y down)
    angle = torch.rad2deg(torch.atan2(-u_best[:, 1], u_best[:, 0]))
    boxes = torch.stack([center[:, 0], center[:, 1], width, height, angle], 1)
    return canonical_rotated_boxes(boxes).to(dtype)


def polygons_to_rotated_boxes(polys: Tensor) -> Tensor:
    """Minimum-area rectangles around 4-point polygons, in canonical form (w >= h, angle in [-90, 90)).

    polys: [N, 8] (x1, y1, ..., x4, y4) in pixels, any corner order (convex or not). Returns [N, 5]
    (cx, cy, w, h, angle in degrees CCW). Degenerate polygons (collinear or coincident points) give boxes of
    zero height; check labels with :func:`quadrilateral_problem` first.
    """
    _check_shape(polys, 8, "polys")
    return min_area_rotated_boxes(polys.reshape(-1, 4, 2))


def _cross(o: Sequence[float], a: Sequence[float], b: Sequence[float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(p: Sequence[float], q: Sequence[float], r: Sequence[float], s: Sequence[float]) -> bool:
    """Whether segments pq and rs cross at a point interior to both (touching ends do not count)."""
    d1, d2 = _cross(p, q, r), _cross(p, q, s)
    d3, d4 = _cross(r, s, p), _cross(r, s, q)
    return d1 * d2 < 0 and d3 * d4 < 0


def quadrilateral_problem(poly: Sequence[float]) -> Optional[str]:
    """Why ``(x1, y1, ..., x4, y4)`` is not a usable labelled quadrilateral, or None when it is.

    Problems: not 8 numbers, a non-finite number, a degenerate shape (area below ``MIN_AREA_FRACTION`` of its
    bounds' larger side squared: collinear or repeated points), or a self-intersecting outline (edges 1-2 and
    3-4, or 2-3 and 4-1, cross: a "bow tie", usually two corners listed in the wrong order).
    """
    if len(poly) != 8:
        return f"expected 8 numbers x1 y1 ... x4 y4, got {len(poly)}"
    if not all(math.isfinite(float(v)) for v in poly):
        return f"non-finite coordinate in {' '.join(str(v) for v in poly)}"
    pts = [(float(poly[2 * i]), float(poly[2 * i + 1])) for i in range(4)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    side = max(max(xs) - min(xs), max(ys) - min(ys))
    hull = polygons_to_rotated_boxes(torch.tensor([list(map(float, poly))], dtype=torch.float64))[0]
    if side <= 0 or float(hull[2] * hull[3]) <= MIN_AREA_FRACTION * side * side:
        return "degenerate polygon (its points are repeated or collinear: zero area)"
    if _segments_cross(pts[0], pts[1], pts[2], pts[3]) or _segments_cross(pts[1], pts[2], pts[3], pts[0]):
        return ("self-intersecting polygon (its outline crosses itself: list the 4 corners in order around "
                "the object, clockwise as DOTA does)")
    return None
