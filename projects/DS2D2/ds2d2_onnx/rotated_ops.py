"""Rotated-box IoU and greedy NMS in NumPy: the same computation as ``ds2d2.rotated.ops`` (which ds2d2's
PyTorch detectors run), so a rotated export's detections equal Detectron2's without torch.

Boxes are (cx, cy, w, h, angle): pixels and degrees, the angle counter-clockwise as seen in the image (y
pointing down), Detectron2's ``XYWHA_ABS``; a corner is ``(cx, cy) + R (+-w/2, +-h/2)`` with
``R = [[cos, sin], [-sin, cos]]``.

- ``pairwise_iou_rotated(boxes1 [N, 5], boxes2 [M, 5]) -> [N, M]``: exact. For each pair, in the frame of
  the smaller box A (relative centre and angle in float64, then float32), the other box's outline with its
  coordinates clamped onto A is a closed path around exactly their intersection: its shoelace area over 20
  points (each edge's corner and its crossings of A's side lines, in order) needs no tolerance for parallel,
  touching or contained boxes. Only pairs whose bounding rectangles meet and that no separating axis splits
  get a polygon; boxes of area ``w * h`` below 1e-14 have IoU 0 (Detectron2's rule).
- ``batched_nms_rotated(boxes, scores, classes, iou_thresh)``: greedy NMS within each class (a box goes when
  its IoU with a kept, higher-scoring box of its class is > the threshold; equal scores: the lower index
  first), kept indices by decreasing score; ``nms_rotated`` is one class.
"""
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["batched_nms_rotated", "nms_rotated", "pairwise_iou_rotated"]

MIN_AREA = 1e-14  # boxes with w * h below this have IoU 0 with everything
TOUCHING_EPS = 100  # intersections below this many machine epsilons of the smaller box are rounding: 0
SCREEN_SLACK = 1e-5  # relative growth of the bounding rectangles that screen pairs, to cover rounding
SCREEN_BUDGET = 1 << 22  # box pairs screened at once by the bounding-rectangle test
PAIR_CHUNK = 1 << 15  # exact IoUs computed at once (~1 kB of temporaries each)

# Corners 0..3 of a box as signs along its (u, v) axes, in order around it.
_SIGN_U = np.array([1.0, 1.0, -1.0, -1.0])
_SIGN_V = np.array([1.0, -1.0, -1.0, 1.0])


class _Frames(NamedTuple):
    """Per-box geometry: centres [N, 2], angles [N] (radians), their cos and sin [N] in float64; half sizes
    [N, 2] and areas [N] in the work dtype; centres and half sizes [N, 2] of the axis-aligned bounding
    rectangles in float32, inflated to cover rounding (screening; -inf for boxes below MIN_AREA)."""

    centers: np.ndarray
    theta: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    half: np.ndarray
    area: np.ndarray
    screen_centers: np.ndarray
    screen_half: np.ndarray

    def take(self, index: np.ndarray) -> "_Frames":
        return _Frames(*(field[index] for field in self))


def _work_dtype(*arrays: np.ndarray) -> type:
    return np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32


def _check_boxes(boxes: np.ndarray, name: str) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{name} must be [N, 5] rotated boxes (cx, cy, w, h, angle in degrees), got "
                         f"shape {boxes.shape}")


def _frames(boxes: np.ndarray, dtype: type) -> _Frames:
    boxes = boxes.astype(np.float64)
    theta = np.deg2rad(boxes[:, 4])
    centers, size = boxes[:, :2], boxes[:, 2:4]
    cos, sin = np.cos(theta), np.sin(theta)
    extent = np.stack([np.abs(cos) * size[:, 0] + np.abs(sin) * size[:, 1],
                       np.abs(sin) * size[:, 0] + np.abs(cos) * size[:, 1]], 1) / 2
    extent = extent * (1 + SCREEN_SLACK) + np.abs(centers).max(1, keepdims=True) * 1e-6
    area = size[:, 0] * size[:, 1]
    extent[area < MIN_AREA] = -np.inf
    return _Frames(centers, theta, cos, sin, (size / 2).astype(dtype), area.astype(dtype),
                   centers.astype(np.float32), extent.astype(np.float32))


def _intersection(half_a: np.ndarray, center_b: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                  half_b: np.ndarray) -> np.ndarray:
    """[P] intersection area of box A (centred at the origin, axis-aligned, half sizes [P, 2]) and box B
    (centre [P, 2] in A's frame, turned relative to A by an angle of the given [P] cos and sin, half sizes
    [P, 2]): the shoelace area of B's outline projected onto A (both coordinates clamped), whose edges bend
    only where they cross the lines x = +-a, y = +-b."""
    dtype = half_a.dtype.type
    a, b = half_a[:, :1], half_a[:, 1:]  # [P, 1]
    along_u = half_b[:, :1] * _SIGN_U.astype(dtype)
    along_v = half_b[:, 1:] * _SIGN_V.astype(dtype)
    cos, sin = cos[:, None], sin[:, None]
    px = center_b[:, :1] + along_u * cos + along_v * sin  # B's corners [P, 4] in A's frame, in order
    py = center_b[:, 1:] - along_u * sin + along_v * cos
    dx, dy = np.roll(px, -1, 1) - px, np.roll(py, -1, 1) - py  # edge k runs from corner k to corner k + 1

    def crossings(start: np.ndarray, step: np.ndarray, bound: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Edge parameters in [0, 1] where start + t * step crosses -bound and +bound, smaller first."""
        flat = step == 0
        step = np.where(flat, dtype(1), step)
        first = np.clip(np.where(flat, dtype(0), (-bound - start) / step), dtype(0), dtype(1))
        second = np.clip(np.where(flat, dtype(0), (bound - start) / step), dtype(0), dtype(1))
        return np.minimum(first, second), np.maximum(first, second)

    x_low, x_high = crossings(px, dx, a)
    y_low, y_high = crossings(py, dy, b)
    middle = np.maximum(x_low, y_low), np.minimum(x_high, y_high)
    t = np.stack([np.zeros_like(px), np.minimum(x_low, y_low), np.minimum(*middle), np.maximum(*middle),
                  np.maximum(x_high, y_high)], 2)  # [P, 4, 5], in order along each edge
    xs = (px[..., None] + t * dx[..., None]).reshape(len(px), 20)  # [P, 20]: the path, edge by edge
    ys = (py[..., None] + t * dy[..., None]).reshape(len(py), 20)
    xs, ys = np.minimum(np.maximum(xs, -a), a), np.minimum(np.maximum(ys, -b), b)
    return np.abs((xs * np.roll(ys, -1, 1) - ys * np.roll(xs, -1, 1)).sum(1)) / dtype(2)


def _separated(half_a: np.ndarray, center_b: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               half_b: np.ndarray) -> np.ndarray:
    """[P] whether boxes A and B (as in ``_intersection``) are apart along one of their axes (the separating
    axis test, exact for rectangles) by more than SCREEN_SLACK of their sizes."""
    a, b, hu, hv = half_a[:, 0], half_a[:, 1], half_b[:, 0], half_b[:, 1]
    qx, qy = center_b[:, 0], center_b[:, 1]
    qu, qv = qx * cos - qy * sin, qx * sin + qy * cos  # A's centre from B's, along B's axes (sign aside)
    cos, sin = np.abs(cos), np.abs(sin)
    slack = 1 + SCREEN_SLACK
    return ((np.abs(qx) > (a + hu * cos + hv * sin) * slack)
            | (np.abs(qy) > (b + hu * sin + hv * cos) * slack)
            | (np.abs(qu) > (hu + a * cos + b * sin) * slack)
            | (np.abs(qv) > (hv + a * sin + b * cos) * slack))


def _pair_iou(frames1: _Frames, i: np.ndarray, frames2: _Frames, j: np.ndarray) -> np.ndarray:
    """[P] IoU of boxes1[i] and boxes2[j], computed in the frame of the smaller box of each pair."""
    dtype = frames1.half.dtype.type
    area1, area2 = frames1.area[i], frames2.area[j]
    swap = area1 > area2  # A: the smaller box, B: the other

    def pick(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.where(swap if first.ndim == 1 else swap[:, None], second, first)

    delta = frames2.centers[j] - frames1.centers[i]
    delta = np.where(swap[:, None], -delta, delta)  # B's centre - A's centre
    cos_a, sin_a = pick(frames1.cos[i], frames2.cos[j]), pick(frames1.sin[i], frames2.sin[j])
    turn = frames2.theta[j] - frames1.theta[i]
    turn = np.where(swap, -turn, turn)  # B's angle - A's angle
    center_b = np.stack([delta[:, 0] * cos_a - delta[:, 1] * sin_a,
                         delta[:, 0] * sin_a + delta[:, 1] * cos_a], 1)  # along A's (u, v) axes
    half_a, half_b = pick(frames1.half[i], frames2.half[j]), pick(frames2.half[j], frames1.half[i])
    center_b, cos, sin = center_b.astype(dtype), np.cos(turn).astype(dtype), np.sin(turn).astype(dtype)
    inter = np.zeros_like(area1)
    meet = np.flatnonzero(~_separated(half_a, center_b, cos, sin, half_b))
    inter[meet] = _intersection(half_a[meet], center_b[meet], cos[meet], sin[meet], half_b[meet])
    smaller = np.minimum(area1, area2)
    noise = smaller * dtype(TOUCHING_EPS * np.finfo(dtype).eps)  # what touching boxes leave
    inter = np.where(inter > noise, np.minimum(inter, smaller), dtype(0))
    return inter / (area1 + area2 - inter)


def _near_pairs(frames1: _Frames, frames2: _Frames, upper: bool = False
                ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Chunks of index pairs (i into boxes1, j into boxes2) whose bounding rectangles meet (only i < j with
    ``upper``), screening blocks of rows at once."""
    (x1, y1), (x2, y2) = frames1.screen_centers.T, frames2.screen_centers.T
    (ex1, ey1), (ex2, ey2) = frames1.screen_half.T, frames2.screen_half.T
    rows = max(1, SCREEN_BUDGET // max(1, len(x2)))
    for start in range(0, len(x1), rows):
        stop = min(start + rows, len(x1))
        first = start + 1 if upper else 0  # columns before it cannot pair with these rows
        near = np.abs(x1[start:stop, None] - x2[None, first:]) <= ex1[start:stop, None] + ex2[None, first:]
        near &= np.abs(y1[start:stop, None] - y2[None, first:]) <= ey1[start:stop, None] + ey2[None, first:]
        i, j = np.nonzero(near)
        i, j = i + start, j + first
        if upper:
            i, j = i[i < j], j[i < j]
        for begin in range(0, len(i), PAIR_CHUNK):
            yield i[begin:begin + PAIR_CHUNK], j[begin:begin + PAIR_CHUNK]


def pairwise_iou_rotated(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of every pair of rotated boxes: boxes1 [N, 5], boxes2 [M, 5] -> [N, M], float32 (float64 if an
    input is)."""
    boxes1, boxes2 = np.asarray(boxes1), np.asarray(boxes2)
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    dtype = _work_dtype(boxes1, boxes2)
    iou = np.zeros((len(boxes1), len(boxes2)), dtype=dtype)
    if iou.size == 0:
        return iou
    frames1, frames2 = _frames(boxes1, dtype), _frames(boxes2, dtype)
    for i, j in _near_pairs(frames1, frames2):
        iou[i, j] = _pair_iou(frames1, i, frames2, j)
    return iou


def _iou_upper_bound(frames: _Frames, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """[P] an upper bound of the IoU of boxes i and j: the intersection of their bounding rectangles (at
    most the smaller area) over the union it would leave."""
    gap = np.abs(frames.screen_centers[i] - frames.screen_centers[j])
    half_i, half_j = frames.screen_half[i], frames.screen_half[j]
    overlap = np.maximum(np.minimum(half_i + half_j - gap, 2 * np.minimum(half_i, half_j)), 0).prod(1)
    area_i, area_j = frames.area[i].astype(np.float32), frames.area[j].astype(np.float32)
    overlap = np.minimum(overlap, np.minimum(area_i, area_j))
    return overlap / (area_i + area_j - overlap)


def _greedy_keep(frames: _Frames, source: np.ndarray, target: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS over boxes already in decreasing score order, given the pairs that may suppress (source <
    target, IoU not yet known): the [N] mask of kept boxes. Solved as a fixed point, a pair's IoU computed
    only once its source is kept (as the greedy loop does): a box is suppressed when one of those IoUs is
    above the threshold, kept once none of its possible suppressors is undecided."""
    threshold = frames.half.dtype.type(iou_thresh)  # as torch compares a float32 tensor with a Python float
    kept = np.zeros(len(frames.area), dtype=bool)
    suppressed = np.zeros_like(kept)
    while len(source):
        live = ~suppressed[source] & ~(kept | suppressed)[target]
        source, target = source[live], target[live]
        due = kept[source]  # pairs of a kept box and an undecided one: their IoU decides
        i, j = source[due], target[due]
        for start in range(0, len(i), PAIR_CHUNK):
            chunk = slice(start, start + PAIR_CHUNK)
            suppressed[j[chunk][_pair_iou(frames, i[chunk], frames, j[chunk]) > threshold]] = True
        source, target = source[~due], target[~due]
        waiting = np.zeros_like(kept)
        waiting[target[~suppressed[source]]] = True
        kept |= ~(kept | suppressed | waiting)
    return ~suppressed


def batched_nms_rotated(boxes: np.ndarray, scores: np.ndarray, classes: Optional[np.ndarray],
                        iou_thresh: float) -> np.ndarray:
    """Greedy NMS of rotated boxes [N, 5] with scores [N], independently per class ``classes`` [N] (None: one
    class). Returns the int64 indices of the kept boxes, by decreasing score. Only pairs of one class whose
    bounding rectangles bound their IoU above the threshold are candidates, and a candidate's exact IoU is
    computed only once its higher-scoring box is kept."""
    boxes = np.asarray(boxes)
    _check_boxes(boxes, "boxes")
    order = np.argsort(-np.asarray(scores), kind="stable")
    frames = _frames(boxes[order], _work_dtype(boxes))
    groups = [np.arange(len(order))] if classes is None else [
        np.flatnonzero(np.asarray(classes)[order] == c) for c in np.unique(classes)]
    sources, targets = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for members in groups:
        group = frames.take(members)
        for i, j in _near_pairs(group, group, upper=True):
            likely = _iou_upper_bound(group, i, j) > iou_thresh - 1e-5  # skips most pairs
            sources.append(members[i[likely]])
            targets.append(members[j[likely]])
    return order[_greedy_keep(frames, np.concatenate(sources), np.concatenate(targets), iou_thresh)]


def nms_rotated(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS of rotated boxes [N, 5] with scores [N] as one class (see ``batched_nms_rotated``)."""
    return batched_nms_rotated(boxes, scores, None, iou_thresh)
