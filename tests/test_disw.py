"""ds2d2.disw.disw_map / disw_maps against an independent per-image, per-box Python loop in float64."""
import math

import numpy as np
import pytest
import torch

from ds2d2.disw import disw_map, disw_maps

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_disw(boxes, image_size, map_size):
    """The DISW rule of docs/method.md, written as plainly as possible."""
    in_h, in_w = image_size
    h, w = map_size
    out = np.ones((len(boxes), 1, h, w), dtype=np.float64)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes.double().cpu().tolist():
            c0 = max(0, math.floor(x0 * w / in_w))
            r0 = max(0, math.floor(y0 * h / in_h))
            c1 = min(w - 1, math.ceil(x1 * w / in_w))
            r1 = min(h - 1, math.ceil(y1 * h / in_h))
            if c0 > c1 or r0 > r1:
                continue
            area = (c1 - c0 + 1) * (r1 - r0 + 1)
            for r in range(r0, r1 + 1):
                for c in range(c0, c1 + 1):
                    out[i, 0, r, c] += 1.0 / area
    return torch.from_numpy(out)


def random_boxes(n, image_size, generator, stride=8):
    """Ordinary, border-touching, partly/fully outside, degenerate, grid-aligned and inverted boxes."""
    in_h, in_w = image_size
    scale = torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=generator) * scale[:2]
    wh = torch.rand(n, 2, generator=generator) ** 3 * scale[:2] * 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    kind = torch.randint(0, 7, (n,), generator=generator)
    boxes[kind == 1, 0] = 0.0  # touches the left border
    boxes[kind == 1, 3] = float(in_h)  # and the bottom one
    boxes[kind == 2] = boxes[kind == 2] - 0.4 * scale  # partly or fully outside (top-left)
    boxes[kind == 3] = boxes[kind == 3] + 0.6 * scale  # partly or fully outside (bottom-right)
    boxes[kind == 4, 2] = boxes[kind == 4, 0]  # degenerate (zero width)
    boxes[kind == 5] = torch.round(boxes[kind == 5] / stride) * stride  # exactly on cell borders
    boxes[kind == 6] = boxes[kind == 6][:, [2, 3, 0, 1]]  # inverted (x1 < x0, y1 < y0)
    return boxes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "image_size,map_size",
    [
        ((64, 64), (8, 8)),
        ((64, 96), (8, 12)),
        ((100, 75), (13, 10)),
        ((1024, 1024), (64, 64)),
        ((33, 17), (1, 1)),
    ],
)
def test_matches_per_box_loop(image_size, map_size, device):
    generator = torch.Generator().manual_seed(sum(image_size) + sum(map_size))
    boxes = [random_boxes(n, image_size, generator).to(device) for n in (40, 0, 7)]
    result = disw_map(boxes, image_size, map_size)
    assert result.shape == (3, 1, *map_size)
    assert result.dtype == torch.float32 and result.device.type == device
    torch.testing.assert_close(result.double().cpu(), reference_disw(boxes, image_size, map_size),
                               rtol=0, atol=1e-6)
    assert (result[1] == 1).all()


def test_many_boxes_match_per_box_loop():
    generator = torch.Generator().manual_seed(0)
    image_size, map_size = (1024, 1024), (32, 32)
    boxes = [random_boxes(800, image_size, generator, stride=32) for _ in range(2)]
    torch.testing.assert_close(disw_map(boxes, image_size, map_size).double(),
                               reference_disw(boxes, image_size, map_size), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_several_grids_at_once_match_per_box_loop(device):
    # The band grids of a P3-P7 pyramid of a non-square padded batch, plus an odd one-cell grid.
    generator = torch.Generator().manual_seed(3)
    image_size = (320, 480)
    grids = [(20, 30), (10, 15), (5, 8), (3, 4), (2, 2), (1, 1)]
    boxes = [random_boxes(n, image_size, generator, stride=16).to(device) for n in (0, 60, 9)]
    maps = disw_maps(boxes, image_size, grids)
    assert len(maps) == len(grids)
    for grid, result in zip(grids, maps):
        assert result.shape == (3, 1, *grid) and result.dtype == torch.float32
        torch.testing.assert_close(result.double().cpu(), reference_disw(boxes, image_size, grid),
                                   rtol=0, atol=1e-6)
        assert torch.equal(result, disw_map(boxes, image_size, grid))


def test_hand_computed_values():
    # 64 x 64 input, 8 x 8 map (8 px per cell). Box A covers cols 1..2 (floor(8/8), ceil(15/8)), rows 0..1:
    # 4 cells of 1/4. Box B is degenerate at x = y = 36: cells 4..5 x 4..5 by the floor/ceil rule (4 cells).
    # Box C lies left of the image beyond one cell (ceil(-9/8) = -1): nothing. Box D ends at x = -1, and
    # ceil(-1/8) = 0 so by the rule it still covers column 0, rows 5..6: 2 cells of 1/2.
    boxes = [torch.tensor([[8.0, 0.0, 15.0, 8.0], [36.0, 36.0, 36.0, 36.0], [-20.0, 5.0, -9.0, 30.0],
                           [-20.0, 40.0, -1.0, 47.0]])]
    result = disw_map(boxes, (64, 64), (8, 8))[0, 0]
    expected = torch.ones(8, 8)
    expected[0:2, 1:3] += 0.25
    expected[4:6, 4:6] += 0.25
    expected[5:7, 0] += 0.5
    assert torch.equal(result, expected)


def test_box_whose_far_edge_is_on_a_cell_border_covers_the_next_cell():
    # ceil(16 * 8 / 64) = 2: the inclusive rule takes columns and rows 0..2.
    result = disw_map([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], (64, 64), (8, 8))[0, 0]
    assert torch.allclose(result[:3, :3], torch.full((3, 3), 1 + 1 / 9))
    assert (result[3:] == 1).all() and (result[:, 3:] == 1).all()


def test_each_object_in_the_image_adds_exactly_one():
    generator = torch.Generator().manual_seed(1)
    image_size = (512, 384)
    xy = torch.rand(300, 2, generator=generator) * torch.tensor([384.0, 512.0])
    wh = torch.rand(300, 2, generator=generator) * 100
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([384.0, 512.0]))], dim=1)
    for map_size in [(64, 48), (16, 12), (7, 5)]:
        result = disw_map([boxes, boxes[:10]], image_size, map_size).double()
        extra = (result - 1).sum(dim=(1, 2, 3))
        float32_rounding = result[0].numel() * float(result.max()) * torch.finfo(torch.float32).eps
        torch.testing.assert_close(extra, torch.tensor([300.0, 10.0], dtype=torch.float64), rtol=0,
                                   atol=float32_rounding)


def test_no_boxes_at_all_gives_ones():
    result = disw_map([torch.zeros(0, 4), torch.zeros(0, 4)], (32, 32), (4, 5))
    assert result.shape == (2, 1, 4, 5) and (result == 1).all()


def test_half_boxes_give_float32():
    boxes = [torch.tensor([[0.0, 0.0, 31.0, 31.0]], dtype=torch.float16)]
    result = disw_map(boxes, (64, 64), (8, 8))
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), reference_disw(boxes, (64, 64), (8, 8)), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_synchronisation_on_cuda():
    boxes = [torch.rand(50, 4, device="cuda").sort(dim=1).values * 256, torch.zeros(0, 4, device="cuda")]
    grids = [(32, 32), (16, 16), (8, 8)]
    disw_maps(boxes, (256, 256), grids)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        disw_maps(boxes, (256, 256), grids)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="one \\[N_i, 4\\] tensor per image"):
        disw_map([], (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"boxes\[1\].*\(3, 5\)"):
        disw_map([torch.zeros(0, 4), torch.zeros(3, 5)], (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"boxes\[0\].*list"):
        disw_map([[0.0, 0.0, 1.0, 1.0]], (64, 64), (8, 8))
    with pytest.raises(ValueError, match="map_size"):
        disw_map([torch.zeros(0, 4)], (64, 64), (0, 8))
    with pytest.raises(ValueError, match="image_size"):
        disw_map([torch.zeros(0, 4)], (64,), (8, 8))
    with pytest.raises(ValueError, match="map_sizes is empty"):
        disw_maps([torch.zeros(0, 4)], (64, 64), [])
    with pytest.raises(ValueError, match=r"map_sizes\[1\]"):
        disw_maps([torch.zeros(0, 4)], (64, 64), [(8, 8), (4, -4)])
