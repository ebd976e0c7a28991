"""Rotated Faster R-CNN's RoI pooling in NumPy: Detectron2's ``ROIPooler`` with ``ROIAlignRotated`` (as
``ds2d2.rotated.ops.roi_align_rotated`` computes it), for one image.

- ``assign_levels``: each box to the FPN level of its size (Detectron2's ``assign_boxes_to_levels``:
  ``floor(canonical_level + log2(sqrt(w h) / canonical_box_size + 1e-8))``, clamped to the pooler's levels).
- ``roi_align_rotated``: each of the ``ph x pw`` bins of a box averages ``sampling_ratio`` x
  ``sampling_ratio`` bilinear samples (``ceil(h / ph)`` x ``ceil(w / pw)`` in feature pixels when 0) on a
  grid turned by the box's angle about its centre; half-pixel offset (pixel k covers [k, k + 1)); a sample
  more than one pixel outside the map is 0, one within a pixel of it takes the edge value.
- ``pool_rotated``: the two together over the pooler's levels: ``[R, C, ph, pw]``.
"""
from typing import Sequence, Tuple

import numpy as np

__all__ = ["assign_levels", "pool_rotated", "roi_align_rotated"]

SAMPLE_BUDGET = 1 << 22  # corner samples x channels gathered at once (float32: 16 MB)


def assign_levels(boxes: np.ndarray, min_level: int, max_level: int, canonical_box_size: float,
                  canonical_level: int) -> np.ndarray:
    """[R] level index (0 for ``min_level``) of rotated boxes [R, 5] by their area, float32 as Detectron2."""
    sizes = np.sqrt(boxes[:, 2] * boxes[:, 3]).astype(np.float32)
    levels = np.floor(canonical_level + np.log2(sizes / np.float32(canonical_box_size) + np.float32(1e-8)))
    return (np.clip(levels, min_level, max_level) - min_level).astype(np.int64)


def _sample_grid(rois: np.ndarray, pooled: Tuple[int, int], grid: Tuple[int, int], spatial_scale: float
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Sampling points of rois [R, 5]: y, x [R, ph * gh, pw * gw] in the feature map's pixel-index
    coordinates (pixel k's centre at k), gh x gw points per bin, turned about the box centre."""
    (ph, pw), (gh, gw) = pooled, grid
    scale, half = np.float32(spatial_scale), np.float32(0.5)
    cx, cy = rois[:, 0] * scale - half, rois[:, 1] * scale - half
    w, h = np.maximum(rois[:, 2] * scale, 0), np.maximum(rois[:, 3] * scale, 0)
    theta = np.deg2rad(rois[:, 4])
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    steps_h = (np.arange(ph * gh, dtype=np.float32) + half) / np.float32(ph * gh)
    steps_w = (np.arange(pw * gw, dtype=np.float32) + half) / np.float32(pw * gw)
    yy = (h[:, None] * (steps_h - half))[:, :, None]  # [R, ph * gh, 1], about the centre
    xx = (w[:, None] * (steps_w - half))[:, None, :]  # [R, 1, pw * gw]
    return yy * cos - xx * sin + cy[:, None, None], yy * sin + xx * cos + cx[:, None, None]


def _corners(y: np.ndarray, x: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation at y, x [...] (pixel-index coordinates) on an H x W map as its 4 corners: flat
    pixel indices [..., 4] and weights [..., 4], all 0 beyond one pixel outside the map (the edge value
    within it)."""
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    y, x = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    index = np.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], -1)
    weight = np.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], -1) * inside[..., None]
    return index, weight


def roi_align_rotated(features: np.ndarray, rois: np.ndarray, output_size: Sequence[int],
                      spatial_scale: float, sampling_ratio: int) -> np.ndarray:
    """Detectron2's ROIAlignRotated (aligned) of one image's features [C, H, W] float32 and rotated boxes
    [R, 5] (cx, cy, w, h, angle in degrees, input pixels) -> [R, C, ph, pw] float32. Each bin is one
    weighted sum of the feature vectors at its samples' corners (a gather and a batched matrix product)."""
    ph, pw = output_size
    rois = rois.astype(np.float32)
    channels, height, width = features.shape
    flat = np.ascontiguousarray(features.reshape(channels, -1).T)  # [H * W, C]: a pixel's channels together
    out = np.zeros((len(rois), ph, pw, channels), np.float32)
    if sampling_ratio > 0:
        grids = np.full((len(rois), 2), sampling_ratio, np.int64)
    else:
        sizes = np.maximum(rois[:, [3, 2]] * np.float32(spatial_scale), 0)
        grids = np.ceil(sizes / np.array([ph, pw], np.float32)).astype(np.int64)
    for gh, gw in np.unique(grids, axis=0):
        if gh == 0 or gw == 0:  # an empty box sampled adaptively: no samples, zeros as in Detectron2
            continue
        index = np.flatnonzero((grids[:, 0] == gh) & (grids[:, 1] == gw))
        step = max(1, SAMPLE_BUDGET // (ph * gh * pw * gw * 4 * channels))
        for start in range(0, len(index), step):
            chunk = index[start:start + step]
            corners, weights = _corners(*_sample_grid(rois[chunk], (ph, pw), (gh, gw), spatial_scale),
                                        height, width)  # [n, ph * gh, pw * gw, 4]

            def by_bin(a: np.ndarray) -> np.ndarray:  # -> [n * ph * pw, gh * gw * 4]
                a = a.reshape(len(chunk), ph, gh, pw, gw, 4).transpose(0, 1, 3, 2, 4, 5)
                return a.reshape(len(chunk) * ph * pw, gh * gw * 4)

            weights = by_bin(weights) / np.float32(gh * gw)
            pooled = np.matmul(weights[:, None, :], flat[by_bin(corners)])[:, 0]  # [n * ph * pw, C]
            out[chunk] = pooled.reshape(len(chunk), ph, pw, channels)
    return out.transpose(0, 3, 1, 2)


def pool_rotated(features: Sequence[np.ndarray], boxes: np.ndarray, output_size: Sequence[int],
                 scales: Sequence[float], sampling_ratio: int, canonical_box_size: float,
                 canonical_level: int) -> np.ndarray:
    """``ROIPooler(ROIAlignRotated)`` of one image: features of the pooler's levels (each [1, C, Hi, Wi],
    finest first, ``scales`` 1 / stride) and boxes [R, 5] -> [R, C, ph, pw]."""
    ph, pw = output_size
    out = np.zeros((len(boxes), features[0].shape[1], ph, pw), np.float32)
    if len(features) == 1:
        levels = np.zeros(len(boxes), np.int64)
    else:
        min_level, max_level = (int(round(-np.log2(s))) for s in (scales[0], scales[-1]))
        levels = assign_levels(boxes, min_level, max_level, canonical_box_size, canonical_level)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = np.flatnonzero(levels == level)
        if len(index):
            out[index] = roi_align_rotated(feature[0], boxes[index], output_size, scale, sampling_ratio)
    return out
