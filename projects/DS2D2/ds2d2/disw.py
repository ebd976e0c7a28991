"""Density-Independent Scale Weight (DISW): per-cell weights for the explicit (wavelet-band) loss.

Background weighs 1 and every ground-truth box adds 1/A to each of the A cells it covers, so each object adds
1 in total whatever its size and overlapping objects add up. The map is built with a 2-D difference array
(four signed corner updates per box, one scatter for the whole batch) and two cumulative sums:
O(boxes + cells), no Python loop over boxes or images, and no host/device synchronisation.
"""
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["disw_map"]


def _pair(value: Sequence[int], name: str) -> tuple:
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"disw_map: {name} must be two positive sizes (H, W), got {tuple(value)}")
    return int(value[0]), int(value[1])


def disw_map(boxes: Sequence[Tensor], image_size: Sequence[int], map_size: Sequence[int]) -> Tensor:
    """DISW map for a batch.

    Args:
        boxes: one [N_i, 4] tensor per image, xyxy in input pixels (N_i may be 0), all on one device.
        image_size: (H_in, W_in) of the padded batch fed to the backbone, in pixels.
        map_size: (h, w) of the band grid the weights are for.

    Returns:
        [B, 1, h, w] float32 on the boxes' device: ``1 + sum over boxes covering a cell of 1 / A``, A being
        the box's cell area. A box covers the columns max(0, floor(x0*w/W_in)) .. min(w-1, ceil(x1*w/W_in))
        and the rows likewise (inclusive); boxes left with no covered cell after clamping add nothing.
        Cell indices and sums are computed in float64 so that thresholds are exact and weights do not drift.
    """
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
    in_h, in_w = _pair(image_size, "image_size")
    h, w = _pair(map_size, "map_size")
    device = boxes[0].device
    num_images = len(boxes)

    all_boxes = torch.cat(list(boxes)).to(torch.float64)
    # Built on the device from Python ints: a tensor of counts copied from the host would synchronise.
    image_index = torch.cat(
        [torch.full((b.shape[0],), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)]
    )

    x0, y0, x1, y1 = all_boxes.unbind(dim=1)
    c0 = torch.floor(x0 * w / in_w).clamp(min=0)
    r0 = torch.floor(y0 * h / in_h).clamp(min=0)
    c1 = torch.ceil(x1 * w / in_w).clamp(max=w - 1)
    r1 = torch.ceil(y1 * h / in_h).clamp(max=h - 1)
    covers = (c0 <= c1) & (r0 <= r1)
    area = ((c1 - c0 + 1) * (r1 - r0 + 1)).clamp(min=1)
    value = torch.where(covers, 1.0 / area, torch.zeros_like(area))

    # Corners in the difference array [B, h+1, w+1]. Boxes covering nothing carry 0: just keep them in range.
    c0, r0 = c0.clamp(max=w).long(), r0.clamp(max=h).long()
    c_end, r_end = (c1 + 1).clamp(min=0).long(), (r1 + 1).clamp(min=0).long()
    stride_img, stride_row = (h + 1) * (w + 1), w + 1
    base = image_index * stride_img
    index = torch.cat(
        [base + r0 * stride_row + c0, base + r0 * stride_row + c_end,
         base + r_end * stride_row + c0, base + r_end * stride_row + c_end]
    )
    signed = torch.cat([value, -value, -value, value])
    diff = torch.zeros(num_images * stride_img, dtype=torch.float64, device=device)
    diff.index_put_((index,), signed, accumulate=True)
    density = diff.view(num_images, h + 1, w + 1).cumsum(dim=1).cumsum(dim=2)[:, :h, :w]
    return (1.0 + density).to(torch.float32).unsqueeze(1)
