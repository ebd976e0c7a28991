"""Density-Independent Scale Weight (DISW): per-cell weights for the explicit (wavelet-band) loss.

Background weighs 1 and every ground-truth box adds 1/A to each of the A cells it covers, so each object adds
1 in total whatever its size and overlapping objects add up. The maps of all requested grids (one per FPN
level) are built together: a 2-D difference array per grid and image, laid end to end in one buffer, gets
four signed corner updates per box and grid in one scatter, then two cumulative sums per grid give the maps.
O(boxes x grids + cells), no Python loop over boxes or images, and no host/device synchronisation.
"""
import itertools
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["disw_map", "disw_maps"]


def _pair(value: Sequence[int], name: str) -> Tuple[int, int]:
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"disw_map: {name} must be two positive sizes (H, W), got {tuple(value)}")
    return int(value[0]), int(value[1])


def _check_boxes(boxes: Sequence[Tensor]) -> None:
    if len(boxes) == 0:
        raise ValueError("disw_map: boxes is empty; pass one [N_i, 4] tensor per image (N_i may be 0)")
    for i, image_boxes in enumerate(boxes):
        if not isinstance(image_boxes, Tensor) or image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            got = tuple(image_boxes.shape) if isinstance(image_boxes, Tensor) else type(image_boxes).__name__
            raise ValueError(
                f"disw_map: boxes[{i}] must be an [N, 4] xyxy tensor (use Boxes.tensor), got {got}"
            )
        if image_boxes.device != boxes[0].device:
            raise ValueError(
                f"disw_map: boxes[{i}] is on {image_boxes.device}, boxes[0] on {boxes[0].device}"
            )


def disw_maps(
    boxes: Sequence[Tensor], image_size: Sequence[int], map_sizes: Sequence[Sequence[int]]
) -> List[Tensor]:
    """DISW maps of one batch for several grids (e.g. the band grids of every FPN level) at once.

    Args:
        boxes: one [N_i, 4] tensor per image, xyxy in input pixels (N_i may be 0), all on one device.
        image_size: (H_in, W_in) of the padded batch fed to the backbone, in pixels.
        map_sizes: the (h, w) of each grid.

    Returns:
        per grid, [B, 1, h, w] float32 on the boxes' device: ``1 + sum over boxes covering a cell of 1 / A``,
        A being the box's cell area. A box covers the columns max(0, floor(x0*w/W_in)) ..
        min(w-1, ceil(x1*w/W_in)) and the rows likewise (inclusive); boxes left with no covered cell after
        clamping add nothing. Cell indices and sums are computed in float64 so that thresholds are exact and
        weights do not drift.
    """
    _check_boxes(boxes)
    in_h, in_w = _pair(image_size, "image_size")
    sizes = [_pair(size, f"map_sizes[{level}]") for level, size in enumerate(map_sizes)]
    if not sizes:
        raise ValueError("disw_maps: map_sizes is empty; pass at least one (h, w)")
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
