"""Exact IoU of quadrilaterals (DOTA's oriented labels and detections), vectorised in float64 NumPy.

A quadrilateral is its 4 corners (4, 2) in pixels, in either winding order; it must be simple (not
self-intersecting), convex or not. The intersection of P and Q is computed exactly: Q is cut along an inner
diagonal into two triangles (the diagonal from its reflex corner when it has one), P is clipped by each
triangle (Sutherland-Hodgman: a convex clipper and a simple subject of any shape give the exact area), and
the two areas add up. Each pair is computed about Q's centroid, so large image coordinates keep their
precision. Pairs whose bounding rectangles do not overlap have IoU 0 unevaluated (the DOTA devkit's
horizontal pre-filter). Zero-area polygons have IoU 0 with everything.
"""

from typing import Tuple

import numpy as np

__all__ = ["polygon_area", "paired_polygon_iou", "pairwise_polygon_iou"]

PAIR_CHUNK = 1 << 16  # pairs clipped at once (a few kB each)


def polygon_area(polygons: np.ndarray) -> np.ndarray:
    """Unsigned areas (N,) of polygons (N, V, 2)."""
    x, y = polygons[..., 0], polygons[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1))


def _signed_area(points: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Signed (shoelace) areas (K,) of the first ``count[k]`` vertices of points (K, V, 2)."""
    v = points.shape[1]
    if v == 0:
        return np.zeros(len(points))
    index = np.arange(v)[None, :]
    following = (index + 1) % np.maximum(count, 1)[:, None]
    nxt = np.take_along_axis(points, following[..., None], axis=1)
    cross = points[..., 0] * nxt[..., 1] - points[..., 1] * nxt[..., 0]
    return 0.5 * np.sum(np.where(index < count[:, None], cross, 0.0), axis=1)


def _positive(polygons: np.ndarray) -> np.ndarray:
    """Polygons (K, V, 2) with their corners reordered where needed so that their signed area is >= 0 (the
    interior lies left of every edge in the shoelace sense)."""
    count = np.full(len(polygons), polygons.shape[1])
    flip = _signed_area(polygons, count) < 0
    out = polygons.copy()
    out[flip] = polygons[flip, ::-1]
    return out


def _clip_half_plane(points: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Clip polygons (points (K, V, 2), first ``count`` valid) to the left of the lines a -> b (K, 2).

    Returns (points (K, V', 2), count (K,)). Every edge emits its start when inside, and its crossing with
    the line when its ends are on different sides."""
    v = points.shape[1]
    index = np.arange(v)[None, :]
    valid = index < count[:, None]
    nxt = np.take_along_axis(points, ((index + 1) % np.maximum(count, 1)[:, None])[..., None], axis=1)
    edge = (b - a)[:, None, :]

    def side(p: np.ndarray) -> np.ndarray:
        rel = p - a[:, None, :]
        return edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]

    s_cur, s_nxt = side(points), side(nxt)
    inside_cur, inside_nxt = s_cur >= 0, s_nxt >= 0
    crosses = valid & (inside_cur != inside_nxt)
    t = np.where(crosses, s_cur / np.where(crosses, s_cur - s_nxt, 1.0), 0.0)
    crossing = points + t[..., None] * (nxt - points)
    emitted = np.stack([valid & inside_cur, crosses], axis=2).reshape(len(points), 2 * v)
    candidates = np.stack([points, crossing], axis=2).reshape(len(points), 2 * v, 2)
    new_count = emitted.sum(axis=1)
    order = np.argsort(~emitted, axis=1, kind="stable")[:, : max(int(new_count.max(initial=0)), 1)]
    return np.take_along_axis(candidates, order[..., None], axis=1), new_count


def _clipped_area(subject: np.ndarray, triangle: np.ndarray) -> np.ndarray:
    """Areas (K,) of subjects (K, 4, 2) (positive orientation) inside triangles (K, 3, 2)."""
    triangle = _positive(triangle)
    points, count = subject, np.full(len(subject), subject.shape[1])
    for i in range(3):
        points, count = _clip_half_plane(points, count, triangle[:, i], triangle[:, (i + 1) % 3])
    return np.abs(_signed_area(points, count))


def _triangles(quads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two triangles (K, 3, 2) each that tile simple quadrilaterals (K, 4, 2) of positive orientation: cut
    along q1-q3 when q1 or q3 is reflex, else along q0-q2."""
    prev, nxt = np.roll(quads, 1, axis=1), np.roll(quads, -1, axis=1)
    turn = (quads - prev)[..., 0] * (nxt - quads)[..., 1] - (quads - prev)[..., 1] * (nxt - quads)[..., 0]
    odd_reflex = (turn[:, 1] < 0) | (turn[:, 3] < 0)
    q = np.where(odd_reflex[:, None, None], np.roll(quads, -1, axis=1), quads)
    return q[:, [0, 1, 2]], q[:, [2, 3, 0]]


def paired_polygon_iou(polygons1: np.ndarray, polygons2: np.ndarray) -> np.ndarray:
    """IoU (K,) of polygons1[k] and polygons2[k], both (K, 4, 2) float pixels."""
    p = np.asarray(polygons1, dtype=np.float64).reshape(-1, 4, 2)
    q = np.asarray(polygons2, dtype=np.float64).reshape(-1, 4, 2)
    if p.shape != q.shape:
        raise ValueError(f"paired_polygon_iou: {p.shape} and {q.shape} polygons do not pair up")
    centre = q.mean(axis=1, keepdims=True)
    p, q = _positive(p - centre), _positive(q - centre)
    first, second = _triangles(q)
    inter = _clipped_area(p, first) + _clipped_area(p, second)
    area_p, area_q = polygon_area(p), polygon_area(q)
    union = area_p + area_q - inter
    ok = (area_p > 0) & (area_q > 0) & (union > 0)
    return np.where(ok, np.clip(inter, 0.0, None) / np.where(ok, union, 1.0), 0.0)


def pairwise_polygon_iou(polygons1: np.ndarray, polygons2: np.ndarray) -> np.ndarray:
    """IoU (N, M) of every pair of polygons1 (N, 4, 2) and polygons2 (M, 4, 2), float pixels."""
    p = np.asarray(polygons1, dtype=np.float64).reshape(-1, 4, 2)
    q = np.asarray(polygons2, dtype=np.float64).reshape(-1, 4, 2)
    iou = np.zeros((len(p), len(q)))
    lo_p, hi_p, lo_q, hi_q = p.min(1), p.max(1), q.min(1), q.max(1)
    overlap = np.all(
        (np.minimum(hi_p[:, None], hi_q[None]) - np.maximum(lo_p[:, None], lo_q[None])) > 0, axis=2
    )
    i, j = np.nonzero(overlap)
    for start in range(0, len(i), PAIR_CHUNK):
        ci, cj = i[start : start + PAIR_CHUNK], j[start : start + PAIR_CHUNK]
        iou[ci, cj] = paired_polygon_iou(p[ci], q[cj])
    return iou
