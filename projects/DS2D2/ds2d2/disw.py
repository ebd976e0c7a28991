"""Density-Independent Scale Weight (DISW): per-cell weights for the explicit (wavelet-band) loss.

Background weighs 1 and every ground-truth box adds 1/A to each of the A cells it covers, so each object adds
1 in total whatever its size and overlapping objects add up. Which cells a box covers depends on its kind
(all images of a batch hold the same kind):

- horizontal boxes [N_i, 4] (x0, y0, x1, y1): the columns floor(x0*w/W_in) .. ceil(x1*w/W_in) and the rows
  likewise, inclusive, clamped to the grid. The maps of all requested grids are built together: a 2-D
  difference array per grid and image, laid end to end in one buffer, gets four signed corner updates per box
  and grid in one scatter, then two cumulative sums per grid give the maps. O(boxes x grids + cells), no
  Python loop over boxes or images, and no host/device synchronisation.
- rotated boxes [N_i, 5] (cx, cy, w, h, angle in degrees CCW, Detectron2's XYWHA): the cells the box overlaps
  with positive area (a zero-area box meeting no open cell: the cell of its centre), see
  ``ds2d2.rotated.cells.oriented_box_cells``; A is the number of those cells inside the grid, so every object
  reaching the grid adds exactly 1 whatever its size, crowding or angle. One scatter per grid over the
  (box, cell) pairs, whose number depends on the data: this path synchronises the host with the device.
"""
import itertools
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ds2d2.rotated.cells import oriented_box_cells

__all__ = ["disw_map", "disw_maps"]


def _pair(value: Sequence[int], name: str) -> Tuple[int, int]:
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"disw_map: {name} must be two positive sizes (H, W), got {tuple(value)}")
    return int(value[0]), int(value[1])


def _check_boxes(boxes: Sequence[Tensor]) -> int:
    """The boxes' width (4: xyxy, 5: XYWHA), the same for every image."""
    if len(boxes) == 0:
        raise ValueError(
            "disw_map: boxes is empty; pass one [N_i, 4] tensor per image (xyxy; or one [N_i, 5] XYWHA "
            "tensor per image for rotated boxes; N_i may be 0)"
        )
    for i, image_boxes in enumerate(boxes):
        is_matrix = isinstance(image_boxes, Tensor) and image_boxes.dim() == 2
        if not is_matrix or image_boxes.shape[1] not in (4, 5):
            got = tuple(image_boxes.shape) if isinstance(image_boxes, Tensor) else type(image_boxes).__name__
            raise ValueError(
                f"disw_map: boxes[{i}] must be an [N, 4] xyxy or [N, 5] XYWHA tensor (use Boxes.tensor or"
                f" RotatedBoxes.tensor), got {got}"
            )
        if image_boxes.shape[1] != boxes[0].shape[1]:
            raise ValueError(
                f"disw_map: boxes[{i}] has shape {tuple(image_boxes.shape)} but boxes[0] "
                f"{tuple(boxes[0].shape)}; pass one kind of box (xyxy or XYWHA) for the whole batch"
            )
        if image_boxes.device != boxes[0].device:
            raise ValueError(
                f"disw_map: boxes[{i}] is on {image_boxes.device}, boxes[0] on {boxes[0].device}"
            )
    return int(boxes[0].shape[1])


def _oriented_disw_maps(
    boxes: Sequence[Tensor], image_size: Tuple[int, int], sizes: Sequence[Tuple[int, int]]
) -> List[Tensor]:
    """The maps of [N_i, 5] XYWHA boxes: per grid, each box's covered cells get 1 / (their number)."""
    device = boxes[0].device
    all_boxes = torch.cat(list(boxes))
    image_index = torch.cat(
        [torch.full((b.shape[0],), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)]
    )
    maps = []
    for h, w in sizes:
        box, cell = oriented_box_cells(all_boxes, image_size, (h, w))
        count = torch.bincount(box, minlength=all_boxes.shape[0]).to(torch.float64)
        density = torch.zeros(len(boxes) * h * w, dtype=torch.float64, device=device)
        density.index_add_(0, image_index[box] * (h * w) + cell, 1.0 / count[box])
        maps.append((1.0 + density).to(torch.float32).view(len(boxes), 1, h, w))
    return maps


def disw_maps(
    boxes: Sequence[Tensor], image_size: Sequence[int], map_sizes: Sequence[Sequence[int]]
) -> List[Tensor]:
    """DISW maps of one batch for several grids (e.g. the band grids of every FPN level) at once.

    Args:
        boxes: one tensor per image (N_i may be 0), all on one device and of one kind: [N_i, 4] xyxy or
            [N_i, 5] XYWHA (angle in degrees CCW), in input pixels.
        image_size: (H_in, W_in) of the padded batch fed to the backbone, in pixels.
        map_sizes: the (h, w) of each grid.

    Returns:
        per grid, [B, 1, h, w] float32 on the boxes' device: ``1 + sum over boxes covering a cell of 1 / A``,
        A being the box's cell area. A box covers the columns max(0, floor(x0*w/W_in)) ..
        min(w-1, ceil(x1*w/W_in)) and the rows likewise (inclusive); boxes left with no covered cell after
        clamping add nothing. A rotated box covers the cells it overlaps with positive area and A is their
        number (module docstring). Cell indices and sums are computed in float64 so that thresholds are exact
        and weights do not drift.
    """
    box_width = _check_boxes(boxes)
    in_h, in_w = _pair(image_size, "image_size")
    sizes = [_pair(size, f"map_sizes[{level}]") for level, size in enumerate(map_sizes)]
    if not sizes:
        raise ValueError("disw_maps: map_sizes is empty; pass at least one (h, w)")
    if box_width == 5:
        return _oriented_disw_maps(boxes, (in_h, in_w), sizes)
    device = boxes[0].device
    num_images = len(boxes)

    # Per grid ([L, 1] columns): h, w and where its [B, h+1, w+1] difference array starts in the buffer.
    lengths = [num_images * (h + 1) * (w + 1) for h, w in sizes]
    starts = [0, *itertools.accumulate(lengths[:-1])]
    # A tiny host tensor; non_blocking keeps its copy to a GPU from synchronising the step.
    grid = torch.tensor([[h, w, start] for (h, w), start in zip(sizes, starts)], dtype=torch.float64)
    grid_h, grid_w, start = grid.to(device, non_blocking=True)[:, :, None].unbind(dim=1)  # each [L, 1]

    all_boxes = torch.cat(list(boxes)).to(torch.float64)
    # Built on the device from Python ints: a tensor of counts copied from the host would synchronise.
    image_index = torch.cat(
        [torch.full((b.shape[0],), i, dtype=torch.float64, device=device) for i, b in enumerate(boxes)]
    )
    x0, y0, x1, y1 = all_boxes[None].unbind(dim=2)  # each [1, N]
    c0 = torch.floor(x0 * grid_w / in_w).clamp(min=0)  # [L, N]
    r0 = torch.floor(y0 * grid_h / in_h).clamp(min=0)
    c1 = torch.minimum(torch.ceil(x1 * grid_w / in_w), grid_w - 1)
    r1 = torch.minimum(torch.ceil(y1 * grid_h / in_h), grid_h - 1)
    covers = (c0 <= c1) & (r0 <= r1)
    area = ((c1 - c0 + 1) * (r1 - r0 + 1)).clamp(min=1)
    value = torch.where(covers, 1.0 / area, torch.zeros_like(area))

    # Corners in the difference arrays. Boxes covering nothing carry 0: just keep them in range.
    c0, r0 = torch.minimum(c0, grid_w), torch.minimum(r0, grid_h)
    c_end, r_end = (c1 + 1).clamp(min=0), (r1 + 1).clamp(min=0)
    row = grid_w + 1
    base = start + image_index * (grid_h + 1) * row
    index = torch.cat(
        [base + r0 * row + c0, base + r0 * row + c_end, base + r_end * row + c0, base + r_end * row + c_end]
    ).flatten().long()
    signed = torch.cat([value, -value, -value, value]).flatten()
    diff = torch.zeros(sum(lengths), dtype=torch.float64, device=device)
    diff.index_add_(0, index, signed)

    maps = []
    for (h, w), level_diff in zip(sizes, diff.split(lengths)):
        density = level_diff.view(num_images, h + 1, w + 1).cumsum(dim=1).cumsum(dim=2)[:, :h, :w]
        maps.append((1.0 + density).to(torch.float32).unsqueeze(1))
    return maps


def disw_map(boxes: Sequence[Tensor], image_size: Sequence[int], map_size: Sequence[int]) -> Tensor:
    """DISW map of one grid: [B, 1, h, w] float32; see :func:`disw_maps` for the arguments and the rule."""
    return disw_maps(boxes, image_size, [map_size])[0]
