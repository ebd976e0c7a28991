"""Detectron2's rotated-box ops in pure PyTorch (CPU and CUDA): exact IoU, greedy NMS, ROIAlignRotated.

Boxes follow Detectron2: (cx, cy, w, h, angle) in pixels and degrees, the angle counter-clockwise as seen in
the image (y pointing down), so a box's corners are ``(cx, cy) + R (+-w/2, +-h/2)`` with
``R = [[cos, sin], [-sin, cos]]``.

- IoU: in the frame of the smaller box A of a pair (float64 relative centre and angle, then the work dtype,
  so tiny boxes far from the origin keep their precision), the other box's boundary projected onto A (its
  coordinates clamped) is a closed path around exactly A's part inside it: its shoelace area is the
  intersection, from 20 points (each edge's corner and its 4 crossings of A's side lines, in order), with no
  tolerances and no special case for parallel or touching edges; batched over pairs. Only pairs whose
  axis-aligned bounding rectangles meet and that no separating axis splits get a polygon; pairs are screened
  and computed in bounded chunks, so N x M of several thousand (or a hundred x a million anchors) stays in
  memory.
- NMS: greedy NMS (a box goes when its IoU with a kept, higher-scoring box is > the threshold), resolved as a
  fixed point over the pairs that may suppress instead of box by box, a pair's IoU computed only once its
  higher-scoring box is kept (as the greedy loop does); pairs whose bounding rectangles bound their IoU
  below the threshold are never evaluated. The class-aware variant only pairs boxes of the same class (no
  coordinate offsets, which would cost float32 precision).
- ROIAlignRotated: Detectron2's sampling grid (``sampling_ratio`` points per bin side, or
  ``ceil(size / bins)`` when 0), rotated about the box centre, bilinear samples (zero beyond one pixel
  outside the map, edge values within it) averaged per bin, through ``grid_sample`` so both devices and
  autograd come for free.
"""
import math
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batched_nms_rotated", "nms_rotated", "pairwise_iou_rotated", "roi_align_rotated"]

MIN_AREA = 1e-14  # boxes with w * h below this have IoU 0 with everything (Detectron2's rule)
TOUCHING_EPS = 100  # intersections below this many machine epsilons of the smaller box are rounding: 0
SCREEN_SLACK = 1e-5  # relative growth of the bounding rectangles that screen pairs, to cover rounding
SCREEN_BUDGET = 1 << 22  # box pairs screened at once by the bounding-rectangle test
PAIR_CHUNK = {"cpu": 1 << 15, "cuda": 1 << 19}  # exact IoUs computed at once (~1 kB each)
SAMPLE_BUDGET = 1 << 24  # ROIAlignRotated samples x channels gathered at once


class _Frames(NamedTuple):
    """Per-box geometry: centres [N, 2], angles [N] (radians) and their cos, sin [N] in float64 (for the
    pair-relative quantities); half sizes [N, 2] and areas [N] in the work dtype; centres [N, 2] and half
    sizes [N, 2] of the axis-aligned bounding rectangles in float32, inflated to cover rounding (screening).
    Boxes of area below MIN_AREA get empty (-inf) bounding rectangles: they pair with nothing."""

    centers: Tensor
    theta: Tensor
    cos: Tensor
    sin: Tensor
    half: Tensor
    area: Tensor
    screen_centers: Tensor
    screen_half: Tensor


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{name} must be [N, 5] rotated boxes (cx, cy, w, h, angle in degrees), got "
                         f"shape {tuple(boxes.shape)}")


def _frames(boxes: Tensor, dtype: torch.dtype) -> _Frames:
    boxes = boxes.detach().double()
    theta = torch.deg2rad(boxes[:, 4])
    centers, size = boxes[:, :2], boxes[:, 2:4]
    cos, sin = torch.cos(theta), torch.sin(theta)
    extent = torch.stack([cos.abs() * size[:, 0] + sin.abs() * size[:, 1],
                          sin.abs() * size[:, 0] + cos.abs() * size[:, 1]], 1) / 2
    extent = extent * (1 + SCREEN_SLACK) + centers.abs().amax(1, keepdim=True) * 1e-6
    area = size[:, 0] * size[:, 1]
    return _Frames(
        centers=centers,
        theta=theta,
        cos=cos,
        sin=sin,
        half=(size / 2).to(dtype),
        area=area.to(dtype),
        screen_centers=centers.float(),
        screen_half=extent.masked_fill((area < MIN_AREA)[:, None], -math.inf).float(),
    )


# Corners 0..3 of a box as signs along its (u, v) axes, in order around it.
_SIGN_U, _SIGN_V = (1.0, 1.0, -1.0, -1.0), (1.0, -1.0, -1.0, 1.0)


def _intersection(half_a: Tensor, center_b: Tensor, cos: Tensor, sin: Tensor, half_b: Tensor) -> Tensor:
    """[P] intersection area of box A (centred at the origin, axis-aligned, half sizes [P, 2]) and box B
    (centre [P, 2] in A's frame, turned relative to A by an angle of the given [P] cos and sin, half sizes
    [P, 2]).

    Projecting B's boundary onto A (clamping both coordinates) gives a closed path that winds once around
    exactly the points of A inside B (a point of A's interior is never crossed on the way from a boundary
    point to its projection), so its shoelace area is the intersection's. The projection of each edge is a
    polyline that bends only where the edge crosses the lines x = +-a, y = +-b: 1 + 4 points per edge, no
    tolerances, parallel edges included."""
    a, b = half_a[:, :1], half_a[:, 1:]  # [P, 1]
    along_u = half_b[:, :1] * torch.tensor(_SIGN_U, dtype=half_b.dtype, device=half_b.device)
    along_v = half_b[:, 1:] * torch.tensor(_SIGN_V, dtype=half_b.dtype, device=half_b.device)
    cos, sin = cos[:, None], sin[:, None]
    px = center_b[:, :1] + along_u * cos + along_v * sin  # B's corners [P, 4] in A's frame, in order
    py = center_b[:, 1:] - along_u * sin + along_v * cos
    dx, dy = px.roll(-1, 1) - px, py.roll(-1, 1) - py  # edge k runs from corner k to corner k + 1

    def crossings(start: Tensor, step: Tensor, bound: Tensor) -> Tuple[Tensor, Tensor]:
        """Edge parameters in [0, 1] where start + t * step crosses -bound and +bound, smaller first."""
        flat = step == 0
        step = torch.where(flat, torch.ones_like(step), step)
        first = torch.where(flat, torch.zeros_like(step), (-bound - start) / step).clamp(0, 1)
        second = torch.where(flat, torch.zeros_like(step), (bound - start) / step).clamp(0, 1)
        return torch.minimum(first, second), torch.maximum(first, second)

    x_low, x_high = crossings(px, dx, a)
    y_low, y_high = crossings(py, dy, b)
    middle = torch.maximum(x_low, y_low), torch.minimum(x_high, y_high)
    t = torch.stack([torch.zeros_like(px), torch.minimum(x_low, y_low), torch.minimum(*middle),
                     torch.maximum(*middle), torch.maximum(x_high, y_high)], 2)  # [P, 4, 5], in order
    xs = (px[..., None] + t * dx[..., None]).flatten(1)  # [P, 20]: the path, edge by edge
    ys = (py[..., None] + t * dy[..., None]).flatten(1)
    xs, ys = torch.minimum(torch.maximum(xs, -a), a), torch.minimum(torch.maximum(ys, -b), b)
    return (xs * ys.roll(-1, 1) - ys * xs.roll(-1, 1)).sum(1).abs() / 2


def _separated(half_a: Tensor, center_b: Tensor, cos: Tensor, sin: Tensor, half_b: Tensor) -> Tensor:
    """[P] whether boxes A and B (as in ``_intersection``) are apart along one of their axes (the separating
    axis test, exact for rectangles) by more than SCREEN_SLACK of their sizes: those pairs need no polygon."""
    a, b, hu, hv = half_a[:, 0], half_a[:, 1], half_b[:, 0], half_b[:, 1]
    qx, qy = center_b[:, 0], center_b[:, 1]
    qu, qv = qx * cos - qy * sin, qx * sin + qy * cos  # A's centre from B's, along B's axes (sign aside)
    cos, sin = cos.abs(), sin.abs()
    slack = 1 + SCREEN_SLACK
    return ((qx.abs() > (a + hu * cos + hv * sin) * slack) | (qy.abs() > (b + hu * sin + hv * cos) * slack)
            | (qu.abs() > (hu + a * cos + b * sin) * slack) | (qv.abs() > (hv + a * sin + b * cos) * slack))


def _pair_iou(frames1: _Frames, i: Tensor, frames2: _Frames, j: Tensor) -> Tensor:
    """[P] IoU of boxes1[i] and boxes2[j], computed in the frame of the smaller box of each pair (every
    vertex of the intersection lies within it, so coordinates stay at its scale)."""
    dtype = frames1.half.dtype
    area1, area2 = frames1.area[i], frames2.area[j]
    swap = area1 > area2  # A: the smaller box, B: the other

    def pick(first: Tensor, second: Tensor) -> Tensor:
        return torch.where(swap if first.dim() == 1 else swap[:, None], second, first)

    delta = frames2.centers[j] - frames1.centers[i]
    delta = torch.where(swap[:, None], -delta, delta)  # B's centre - A's centre
    cos_a, sin_a = pick(frames1.cos[i], frames2.cos[j]), pick(frames1.sin[i], frames2.sin[j])
    turn = frames2.theta[j] - frames1.theta[i]
    turn = torch.where(swap, -turn, turn)  # B's angle - A's angle
    center_b = torch.stack([delta[:, 0] * cos_a - delta[:, 1] * sin_a,
                            delta[:, 0] * sin_a + delta[:, 1] * cos_a], 1)  # along A's (u, v) axes
    half_a, half_b = pick(frames1.half[i], frames2.half[j]), pick(frames2.half[j], frames1.half[i])
    center_b, cos, sin = center_b.to(dtype), torch.cos(turn).to(dtype), torch.sin(turn).to(dtype)
    inter = torch.zeros_like(area1)
    meet = torch.nonzero(~_separated(half_a, center_b, cos, sin, half_b)).flatten()
    inter[meet] = _intersection(half_a[meet], center_b[meet], cos[meet], sin[meet], half_b[meet])
    smaller = torch.minimum(area1, area2)
    noise = smaller * TOUCHING_EPS * torch.finfo(dtype).eps  # what touching boxes leave (float32: 1.2e-5)
    inter = torch.where(inter > noise, torch.minimum(inter, smaller), torch.zeros_like(inter))
    return inter / (area1 + area2 - inter)


def _near_pairs(frames1: _Frames, frames2: _Frames, upper: bool = False) -> Iterator[Tuple[Tensor, Tensor]]:
    """Chunks of index pairs (i into boxes1, j into boxes2) of every pair whose bounding rectangles meet (only
    i < j with ``upper``), screening blocks of rows at once."""
    x1, y1 = frames1.screen_centers.unbind(1)
    x2, y2 = frames2.screen_centers.unbind(1)
    ex1, ey1 = frames1.screen_half.unbind(1)
    ex2, ey2 = frames2.screen_half.unbind(1)
    rows = max(1, SCREEN_BUDGET // max(1, len(x2)))
    for start in range(0, len(x1), rows):
        stop = min(start + rows, len(x1))
        first = start + 1 if upper else 0  # columns before it cannot pair with these rows
        near = (x1[start:stop, None] - x2[None, first:]).abs_() <= ex1[start:stop, None] + ex2[None, first:]
        near &= (y1[start:stop, None] - y2[None, first:]).abs_() <= ey1[start:stop, None] + ey2[None, first:]
        i, j = torch.nonzero(near, as_tuple=True)
        i, j = i + start, j + first
        if upper:
            i, j = i[i < j], j[i < j]
        yield i, j


def _iou_upper_bound(frames1: _Frames, i: Tensor, frames2: _Frames, j: Tensor) -> Tensor:
    """[P] an upper bound of the IoU of boxes1[i] and boxes2[j]: the intersection of their bounding
    rectangles (at most the smaller area) over the union it would leave."""
    gap = (frames1.screen_centers[i] - frames2.screen_centers[j]).abs()
    half1, half2 = frames1.screen_half[i], frames2.screen_half[j]
    overlap = torch.minimum(half1 + half2 - gap, 2 * torch.minimum(half1, half2)).clamp(min=0).prod(1)
    area1, area2 = frames1.area[i].float(), frames2.area[j].float()
    overlap = torch.minimum(overlap, torch.minimum(area1, area2))
    return overlap / (area1 + area2 - overlap)


def _chunks(i: Tensor, j: Tensor, device: torch.device) -> Iterator[Tuple[Tensor, Tensor]]:
    """The index pairs (i, j) in chunks of at most PAIR_CHUNK[device type]."""
    size = PAIR_CHUNK["cuda" if device.type == "cuda" else "cpu"]
    return zip(i.split(size), j.split(size))


def pairwise_iou_rotated(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of rotated boxes: boxes1 [N, 5], boxes2 [M, 5] (cx, cy, w, h, angle in degrees) ->
    [N, M], float32 (float64 if an input is). Boxes of area (w * h) below 1e-14 have IoU 0, as in Detectron2.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    dtype = _work_dtype(boxes1, boxes2)
    iou = torch.zeros(len(boxes1), len(boxes2), dtype=dtype, device=boxes1.device)
    if iou.numel() == 0:
        return iou
    frames1, frames2 = _frames(boxes1, dtype), _frames(boxes2, dtype)
    for near_i, near_j in _near_pairs(frames1, frames2):
        for i, j in _chunks(near_i, near_j, iou.device):
            iou[i, j] = _pair_iou(frames1, i, frames2, j)
    return iou


def _greedy_keep(frames: _Frames, source: Tensor, target: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over boxes ``frames`` already in decreasing score order, given the pairs that may suppress
    (source < target, IoU not yet known). Returns the [N] bool mask of kept boxes.

    Solved as a fixed point: once a box is kept, its IoU with each undecided box it may suppress is computed
    (only those, as the greedy loop does); a box is suppressed when one of them is above the threshold, kept
    once none of its possible suppressors is left undecided. Every round decides at least the first undecided
    box, most rounds decide many."""
    kept = torch.zeros(len(frames.area), dtype=torch.bool, device=source.device)
    suppressed = torch.zeros_like(kept)
    while source.numel():
        decided = kept | suppressed
        live = ~suppressed[source] & ~decided[target]
        source, target = source[live], target[live]
        due = kept[source]  # pairs of a kept box and an undecided one: their IoU decides
        for i, j in _chunks(source[due], target[due], source.device):
            suppressed[j[_pair_iou(frames, i, frames, j) > iou_threshold]] = True
        source, target = source[~due], target[~due]
        waiting = torch.zeros_like(kept)
        waiting[target[~suppressed[source]]] = True
        kept |= ~(kept | suppressed | waiting)
    return ~suppressed


def _class_members(classes: Optional[Tensor], num: int, device: torch.device) -> List[Tensor]:
    """Positions [n_c] of each class's members among ``classes`` [num], ascending (all of them when None)."""
    if classes is None:
        return [torch.arange(num, device=device)]
    grouped = torch.sort(classes, stable=True)
    counts = torch.unique_consecutive(grouped.values, return_counts=True)[1]
    return list(grouped.indices.split(counts.tolist()))


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float
                        ) -> Tensor:
    """Greedy NMS of rotated boxes [N, 5] with scores [N], independently per category ``idxs`` [N] (None: one
    category): a box is removed when its IoU with a kept box of higher score (ties: the lower index first) is
    > ``iou_threshold``. Returns the int64 indices of the kept boxes, by decreasing score."""
    _check_boxes(boxes, "boxes")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    frames = _frames(boxes[order], _work_dtype(boxes))
    sources, targets = [], []
    for members in _class_members(None if idxs is None else idxs[order], len(order), boxes.device):
        group = _Frames(*(field[members] for field in frames))
        for i, j in _near_pairs(group, group, upper=True):
            likely = _iou_upper_bound(group, i, group, j) > iou_threshold - 1e-5  # skips most pairs
            sources.append(members[i[likely]])
            targets.append(members[j[likely]])
    empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = _greedy_keep(frames, torch.cat(sources + [empty]), torch.cat(targets + [empty]), iou_threshold)
    return order[kept]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of rotated boxes [N, 5] with scores [N] (see ``batched_nms_rotated``): int64 indices of the
    kept boxes, by decreasing score."""
    return batched_nms_rotated(boxes, scores, None, iou_threshold)


def _sample_grid(rois: Tensor, pooled: Tuple[int, int], grid: Tuple[int, int], spatial_scale: float,
                 offset: float, min_size: float) -> Tuple[Tensor, Tensor]:
    """Sampling points of rois [R, 6]: y, x [R, ph * gh, pw * gw] in the feature map's pixel-index
    coordinates (pixel k's centre at k), gh x gw points per bin, rotated about the box centre."""
    (ph, pw), (gh, gw) = pooled, grid
    cx, cy = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    w = (rois[:, 3] * spatial_scale).clamp(min=min_size)
    h = (rois[:, 4] * spatial_scale).clamp(min=min_size)
    theta = torch.deg2rad(rois[:, 5])
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    steps_h = (torch.arange(ph * gh, device=rois.device, dtype=rois.dtype) + 0.5) / (ph * gh)
    steps_w = (torch.arange(pw * gw, device=rois.device, dtype=rois.dtype) + 0.5) / (pw * gw)
    yy = (h[:, None] * (steps_h - 0.5))[:, :, None]  # [R, ph * gh, 1], about the centre
    xx = (w[:, None] * (steps_w - 0.5))[:, None, :]  # [R, 1, pw * gw]
    y = yy * cos - xx * sin + cy[:, None, None]
    x = yy * sin + xx * cos + cx[:, None, None]
    return y, x


def _bilinear(image: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """ROIAlign's bilinear samples of image [C, H, W] at y, x [R, A, B] (pixel-index coordinates): 0 beyond
    one pixel outside the map, the edge value within it. Returns [R, C, A, B]."""
    _, height, width = image.shape
    scale_x = 2.0 / (width - 1) if width > 1 else 0.0
    scale_y = 2.0 / (height - 1) if height > 1 else 0.0
    grid = torch.stack([x * scale_x - 1, y * scale_y - 1], -1).flatten(0, 1)[None]  # [1, R * A, B, 2]
    values = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    values = values[0].unflatten(1, y.shape[:2]).transpose(0, 1)  # [R, C, A, B]
    return values * inside[:, None].to(values.dtype)


def roi_align_rotated(input: Tensor, rois: Tensor, output_size: Union[int, Sequence[int]],
                      spatial_scale: float, sampling_ratio: int, aligned: bool = True) -> Tensor:
    """Detectron2's ROIAlignRotated: features [N, C, H, W], rois [R, 6] (batch index, cx, cy, w, h, angle in
    degrees, in input pixels) -> [R, C, ph, pw]. Each bin averages ``sampling_ratio`` x ``sampling_ratio``
    bilinear samples (``ceil(h / ph)`` x ``ceil(w / pw)`` when 0). ``aligned=True`` is Detectron2's (pixel k
    covers [k, k + 1), no minimum size); ``aligned=False`` is the legacy convention (pixel k centred on k,
    sides at least 1). Differentiable with respect to ``input`` (not ``rois``, as in Detectron2)."""
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must be [R, 6] (batch index, cx, cy, w, h, angle), got {tuple(rois.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    dtype = input.dtype if input.dtype == torch.float64 else torch.float32
    features, rois = input.to(dtype), rois.detach().to(dtype)
    offset, min_size = (0.5, 0.0) if aligned else (0.0, 1.0)
    if sampling_ratio > 0:
        grids = torch.full((len(rois), 2), sampling_ratio, dtype=torch.int64, device=rois.device)
    else:
        sizes = (rois[:, [4, 3]] * spatial_scale).clamp(min=min_size)
        grids = torch.ceil(sizes / torch.tensor([ph, pw], dtype=dtype, device=rois.device)).long()
    channels = features.shape[1]
    parts, indices = [], []
    keys = torch.stack([rois[:, 0].long(), grids[:, 0], grids[:, 1]], 1)
    for image, gh, gw in torch.unique(keys, dim=0).tolist():
        index = torch.nonzero((keys == keys.new_tensor([image, gh, gw])).all(1)).flatten()
        if gh == 0 or gw == 0:  # an empty box sampled adaptively: no samples, zeros as in Detectron2
            parts.append(features.new_zeros(len(index), channels, ph, pw))
            indices.append(index)
            continue
        step = max(1, SAMPLE_BUDGET // (ph * gh * pw * gw * channels))
        for chunk in index.split(step):
            y, x = _sample_grid(rois[chunk], (ph, pw), (gh, gw), spatial_scale, offset, min_size)
            samples = _bilinear(features[image], y, x).unflatten(2, (ph, gh)).unflatten(4, (pw, gw))
            parts.append(samples.mean((3, 5)))
            indices.append(chunk)
    if not parts:
        return features.new_zeros(0, channels, ph, pw).to(input.dtype)
    pooled = torch.cat(parts).index_select(0, torch.cat(indices).argsort())
    return pooled.to(input.dtype)
