"""Which cells of a feature grid a rotated box covers: the cell rule of DISW and FGD masks on oriented boxes.

An h x w grid laid over an (H_in, W_in) input splits it into cells of W_in / w by H_in / h pixels; cell
(row, col) is ``[col W_in / w, (col + 1) W_in / w] x [row H_in / h, (row + 1) H_in / h]``. A box
``(cx, cy, w, h, angle)`` (Detectron2's XYWHA, angle in degrees CCW, see ``ds2d2.rotated.boxes``) covers a
cell when the closed box meets the open cell, i.e. for a box of positive area when the two overlap with
positive area: boxes that only touch a cell do not cover it. The test is the separating-axis theorem on the
cell's two axes (x, y) and the box's two (its width and height directions) with strict inequalities, in
float64 (the cell's axes as the range of columns and rows a box's extent spans, the box's axes cell by
cell), with cos and sin of the multiples of 90 degrees taken exactly (so axis-aligned boxes on cell borders
are decided exactly). A box that meets no open cell (a zero-size point or segment on cell borders) but whose
centre lies in the grid covers the cell of its centre. So every box whose centre is inside the input covers at
least one cell, and so does every box of positive area that reaches inside it.

At angle 0 a box ``[x0, x1] x [y0, y1]`` with x1 > x0 and y1 > y0 covers the columns floor(x0 w / W_in) ..
ceil(x1 w / W_in) - 1 and the rows likewise, clamped to the grid: the horizontal rule of ``ds2d2.disw``
(columns up to ceil(x1 w / W_in) inclusive) less its last column and last row where the grid does not
clip them.

Cost: the candidate cells of each box are its axis-aligned bounding window on the grid, tested in chunks of
about ``CANDIDATE_CHUNK`` (box, cell) pairs (at most that plus one box's window), with no Python loop over
boxes. The number of pairs depends on the data, so a call synchronises the host with the device (a few times
plus once per chunk).
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["oriented_box_cells"]

CANDIDATE_CHUNK = 1 << 20  # (box, cell) candidate pairs tested at once (~100 bytes each)


def _exact_cos_sin(degrees: Tensor) -> Tuple[Tensor, Tensor]:
    """cos and sin of angles in degrees (float64), exactly 0 at the multiples of 90 where they vanish."""
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cos = torch.where(torch.remainder(degrees, 180.0) == 90.0, torch.zeros_like(cos), cos)
    sin = torch.where(torch.remainder(degrees, 180.0) == 0.0, torch.zeros_like(sin), sin)
    return cos, sin


def _chunks(counts: Tensor) -> List[Tuple[int, int]]:
    """Consecutive box ranges [start, stop): the boxes whose running candidate total ends in the same block of
    CANDIDATE_CHUNK, so a range holds at most CANDIDATE_CHUNK + one box's window of candidates."""
    block = torch.div(counts.cumsum(0) - 1, CANDIDATE_CHUNK, rounding_mode="floor")
    stops = torch.unique_consecutive(block, return_counts=True)[1].cumsum(0).tolist()
    return list(zip([0, *stops[:-1]], stops))


def oriented_box_cells(
    boxes: Tensor, image_size: Sequence[int], map_size: Sequence[int]
) -> Tuple[Tensor, Tensor]:
    """Every (box, cell) pair where a rotated box covers a cell of an h x w grid (rule: module docstring).

    Args:
        boxes: [N, 5] (cx, cy, w, h, angle in degrees CCW) in input pixels; a negative size counts as its
            absolute value (the same corners), non-finite boxes cover nothing.
        image_size: (H_in, W_in) of the input the grid is laid over, in pixels.
        map_size: (h, w) of the grid.

    Returns:
        (box_index [P] int64, cell_index [P] int64 = row * w + col), on the boxes' device, sorted by box then
        cell, each pair once.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"oriented_box_cells: boxes must be [N, 5] XYWHA, got {tuple(boxes.shape)}")
    in_h, in_w = float(image_size[0]), float(image_size[1])
    h, w = int(map_size[0]), int(map_size[1])
    if min(in_h, in_w) <= 0 or min(h, w) <= 0:
        raise ValueError(f"oriented_box_cells: image_size {tuple(image_size)} and map_size "
                         f"{tuple(map_size)} must be positive (H, W) pairs")
    device = boxes.device
    b = boxes.to(torch.float64)
    finite = torch.isfinite(b).all(dim=1)
    b = torch.where(finite[:, None], b, torch.zeros_like(b))
    cx, cy = b[:, 0], b[:, 1]
    half_w, half_h = b[:, 2].abs() / 2, b[:, 3].abs() / 2
    cos, sin = _exact_cos_sin(b[:, 4])
    # width direction (cos, -sin), height direction (sin, cos); half extents of the box along x and y
    extent_x = half_w * cos.abs() + half_h * sin.abs()
    extent_y = half_w * sin.abs() + half_h * cos.abs()
    cell_w, cell_h = in_w / w, in_h / h

    # The separating-axis tests on x and y: the cells whose open span meets the box's closed extent, i.e.
    # columns floor(x_lo w / W_in) .. ceil(x_hi w / W_in) - 1 (clamped), likewise rows; only the box's own
    # two axes are tested cell by cell below.
    c_lo = torch.floor((cx - extent_x) * w / in_w).clamp(min=0)
    c_hi = (torch.ceil((cx + extent_x) * w / in_w) - 1).clamp(max=w - 1)
    r_lo = torch.floor((cy - extent_y) * h / in_h).clamp(min=0)
    r_hi = (torch.ceil((cy + extent_y) * h / in_h) - 1).clamp(max=h - 1)
    n_cols = (c_hi - c_lo + 1).clamp(min=0)
    counts = (n_cols * (r_hi - r_lo + 1).clamp(min=0)).long()  # 0 for non-finite boxes (zeroed above)
    n_cols = n_cols.long()

    box_parts, cell_parts = [], []
    for start, stop in _chunks(counts):
        part_counts = counts[start:stop]
        box = torch.repeat_interleave(torch.arange(start, stop, device=device), part_counts)
        first = torch.cumsum(part_counts, 0) - part_counts  # each box's first candidate
        offset = torch.arange(box.shape[0], device=device) - first[box - start]
        col = c_lo[box] + (offset % n_cols[box]).to(torch.float64)
        row = r_lo[box] + torch.div(offset, n_cols[box], rounding_mode="floor").to(torch.float64)
        # cell centre relative to the box centre; the cell's half sizes are cell_w / 2, cell_h / 2
        dx = (col + 0.5) * cell_w - cx[box]
        dy = (row + 0.5) * cell_h - cy[box]
        c, s = cos[box], sin[box]
        covers = (dx * c - dy * s).abs() < half_w[box] + (cell_w * c.abs() + cell_h * s.abs()) / 2
        covers &= (dx * s + dy * c).abs() < half_h[box] + (cell_w * s.abs() + cell_h * c.abs()) / 2
        box_parts.append(box[covers])
        cell_parts.append((row * w + col)[covers].long())

    # Boxes meeting no open cell take the cell of their centre when it lies in the grid.
    hits = torch.bincount(torch.cat(box_parts), minlength=boxes.shape[0]) if box_parts else counts * 0
    centred = finite & (hits == 0) & (cx >= 0) & (cx <= in_w) & (cy >= 0) & (cy <= in_h)
    lonely = centred.nonzero().squeeze(1)
    centre_col = torch.floor(cx[lonely] * w / in_w).clamp(max=w - 1).long()
    centre_row = torch.floor(cy[lonely] * h / in_h).clamp(max=h - 1).long()
    box_parts.append(lonely)
    cell_parts.append(centre_row * w + centre_col)

    box_index, cell_index = torch.cat(box_parts), torch.cat(cell_parts)
    order = torch.argsort(box_index * (h * w) + cell_index)
    return box_index[order], cell_index[order]
