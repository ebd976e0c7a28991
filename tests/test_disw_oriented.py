"""DISW from rotated boxes (ds2d2.disw on [N, 5] XYWHA, ds2d2.rotated.cells.oriented_box_cells): the covered
cells against Shapely (each cell's square intersected with the box's polygon), density independence (every
object reaching the grid adds exactly 1, crowded, overlapping or partly outside), the rectangles of boxes at
multiples of 90 degrees against the horizontal rule, zero-size boxes, chunking and bad input."""
import math
from typing import List, Sequence, Set, Tuple

import numpy as np
import pytest
import shapely
import torch
from torch import Tensor

import ds2d2.rotated.cells as cells_module
from ds2d2.disw import disw_map, disw_maps
from ds2d2.rotated.boxes import rotated_boxes_to_polygons
from ds2d2.rotated.cells import oriented_box_cells

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---- an independent reference: Shapely polygons, one box at a time ----------------------------------------
def cell_squares(image_size: Sequence[int], map_size: Sequence[int]) -> np.ndarray:
    """The grid's cells as Shapely boxes, in flat row * w + col order."""
    (in_h, in_w), (h, w) = image_size, map_size
    rows, cols = np.divmod(np.arange(h * w), w)
    return shapely.box(cols * in_w / w, rows * in_h / h, (cols + 1) * in_w / w, (rows + 1) * in_h / h)


def box_polygon(box: Sequence[float]) -> shapely.Polygon:
    corners = rotated_boxes_to_polygons(torch.tensor([box], dtype=torch.float64))[0].tolist()
    return shapely.Polygon(list(zip(corners[0::2], corners[1::2])))


def reference_cells(box: Sequence[float], image_size, map_size) -> Set[int]:
    """Cells whose square overlaps the box's polygon with positive area (boxes of positive area only)."""
    overlap = shapely.area(shapely.intersection(box_polygon(box), cell_squares(image_size, map_size)))
    return set(np.flatnonzero(overlap > 0).tolist())


def reference_disw(boxes: Sequence[Tensor], image_size, map_size) -> Tensor:
    """[B, 1, h, w] float64: 1 + 1 / (number of covered cells) on each cell a box covers."""
    h, w = map_size
    out = np.ones((len(boxes), h * w), dtype=np.float64)
    for i, image_boxes in enumerate(boxes):
        for box in image_boxes.double().cpu().tolist():
            covered = reference_cells(box, image_size, map_size)
            for cell in covered:
                out[i, cell] += 1.0 / len(covered)
    return torch.from_numpy(out).view(len(boxes), 1, h, w)


def reaches_the_input(box: Sequence[float], image_size) -> bool:
    """Whether the box's polygon overlaps the input rectangle with positive area."""
    in_h, in_w = image_size
    return shapely.intersection(box_polygon(box), shapely.box(0, 0, in_w, in_h)).area > 0


def random_rotated_boxes(n: int, image_size, generator: torch.Generator) -> Tensor:
    """[n, 5] float64: ordinary, tiny (down to 1e-3 px), thin, larger than the input, partly or fully outside,
    crowded (jittered copies of one box at other angles and sizes), at any angle in [-360, 360)."""
    in_h, in_w = image_size
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    boxes = torch.stack([
        u[:, 0] * 1.4 * in_w - 0.2 * in_w,
        u[:, 1] * 1.4 * in_h - 0.2 * in_h,
        u[:, 2] ** 3 * 0.6 * min(in_h, in_w) + 0.5,
        u[:, 3] ** 3 * 0.3 * min(in_h, in_w) + 0.5,
        u[:, 4] * 720 - 360,
    ], dim=1)
    kind = torch.randint(0, 5, (n,), generator=generator)
    tiny = int((kind == 1).sum())
    boxes[kind == 1, 2:4] = torch.rand(tiny, 2, generator=generator, dtype=torch.float64) + 1e-3
    boxes[kind == 2, 2] *= 4  # long and thin
    boxes[kind == 2, 3] = 1.0
    boxes[kind == 3, 2:4] *= 6  # often larger than the input
    crowd = (kind == 4).nonzero().squeeze(1)
    jitter = torch.randn(crowd.shape[0], 2, generator=generator, dtype=torch.float64)
    boxes[crowd, :2] = boxes[:1, :2] + jitter  # around the first box
    return boxes


GRIDS = [((64, 64), (8, 8)), ((64, 96), (8, 12)), ((100, 75), (13, 10)), ((256, 256), (32, 32)),
         ((33, 17), (1, 1)), ((40, 40), (3, 7))]


# ---- the covered cells ----------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size,map_size", GRIDS)
def test_covered_cells_match_shapely(image_size, map_size):
    generator = torch.Generator().manual_seed(sum(image_size) + sum(map_size))
    boxes = random_rotated_boxes(120, image_size, generator)
    box_index, cell_index = oriented_box_cells(boxes, image_size, map_size)
    assert box_index.dtype == cell_index.dtype == torch.int64
    got = {(b, c) for b, c in zip(box_index.tolist(), cell_index.tolist())}
    assert len(got) == box_index.shape[0]  # each pair once
    expected = {(b, c) for b, box in enumerate(boxes.tolist())
                for c in reference_cells(box, image_size, map_size)}
    assert got == expected
    keys = box_index * map_size[0] * map_size[1] + cell_index
    assert torch.equal(keys, keys.sort().values)  # sorted by box, then cell


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("image_size,map_size", GRIDS[:4])
def test_disw_map_matches_a_per_box_loop(image_size, map_size, device):
    generator = torch.Generator().manual_seed(7 + sum(map_size))
    boxes = [random_rotated_boxes(n, image_size, generator).to(device) for n in (60, 0, 9)]
    result = disw_map(boxes, image_size, map_size)
    assert result.shape == (3, 1, *map_size) and result.dtype == torch.float32
    assert result.device.type == device
    torch.testing.assert_close(result.double().cpu(), reference_disw(boxes, image_size, map_size),
                               rtol=0, atol=1e-6)
    assert (result[1] == 1).all()


def test_chunks_do_not_change_the_cells(monkeypatch):
    generator = torch.Generator().manual_seed(11)
    image_size, map_size = (128, 96), (16, 12)
    boxes = random_rotated_boxes(80, image_size, generator)
    whole = oriented_box_cells(boxes, image_size, map_size)
    for chunk in (1, 5, 37, 400):
        monkeypatch.setattr(cells_module, "CANDIDATE_CHUNK", chunk)
        part = oriented_box_cells(boxes, image_size, map_size)
        assert torch.equal(part[0], whole[0]) and torch.equal(part[1], whole[1]), chunk


# ---- density independence -------------------------------------------------------------------------------
def assert_added_weight(maps: Tensor, expected: Sequence[float]) -> None:
    """Per image, sum(map - 1) == expected up to the float32 rounding of the map's cells (each cell within
    half its spacing: a box's equal shares all round the same way, so the bound grows with its cells)."""
    added = (maps.double() - 1).sum(dim=(1, 2, 3))
    bound = torch.from_numpy(np.spacing(maps.cpu().numpy()).astype(np.float64)).sum(dim=(1, 2, 3)) / 2
    error = (added - torch.tensor(expected, dtype=torch.float64)).abs()
    assert (error <= bound + 1e-12).all(), (added, expected, bound)


@pytest.mark.parametrize("image_size,map_size", GRIDS)
def test_each_object_adds_exactly_one_whatever_its_size_angle_or_crowding(image_size, map_size):
    generator = torch.Generator().manual_seed(3 + sum(map_size))
    boxes = random_rotated_boxes(60, image_size, generator)
    reaching = [reaches_the_input(box, image_size) for box in boxes.tolist()]
    assert 0 < sum(reaching) < len(reaching)  # the draw has boxes inside and boxes outside the input
    for box, reaches in zip(boxes, reaching):  # one object alone: 1 in total, or 0 when outside the input
        assert_added_weight(disw_map([box[None]], image_size, map_size), [float(reaches)])
    assert_added_weight(disw_map([boxes], image_size, map_size), [sum(reaching)])  # all at once, overlapping


def test_every_grid_of_a_pyramid_gets_one_per_object():
    generator = torch.Generator().manual_seed(5)
    image_size = (320, 480)
    grids = [(40, 60), (20, 30), (10, 15), (5, 8), (3, 4), (1, 1)]
    boxes = [random_rotated_boxes(n, image_size, generator) for n in (0, 70, 12)]
    reaching = [sum(reaches_the_input(b, image_size) for b in image_boxes.tolist()) for image_boxes in boxes]
    maps = disw_maps(boxes, image_size, grids)
    for grid, result in zip(grids, maps):
        assert torch.equal(result, disw_map(boxes, image_size, grid))
        assert_added_weight(result, reaching)


def test_the_same_object_at_every_angle_adds_one():
    angles = torch.arange(-180.0, 180.0, 7.5, dtype=torch.float64)
    boxes = torch.tensor([37.3, 29.1, 30.0, 6.0, 0.0], dtype=torch.float64).repeat(len(angles), 1)
    boxes[:, 4] = angles
    assert_added_weight(disw_map([b[None] for b in boxes], (64, 64), (8, 8)), [1.0] * len(angles))


# ---- boxes at multiples of 90 degrees -------------------------------------------------------------------
def expected_rectangle(x0: float, y0: float, x1: float, y1: float, image_size, map_size) -> Set[int]:
    """Cells floor(x0 w / W) .. ceil(x1 w / W) - 1 by the same for rows, clamped: the horizontal rule of
    ds2d2.disw less its last column and row."""
    (in_h, in_w), (h, w) = image_size, map_size
    cols = range(max(0, math.floor(x0 * w / in_w)), min(w - 1, math.ceil(x1 * w / in_w) - 1) + 1)
    rows = range(max(0, math.floor(y0 * h / in_h)), min(h - 1, math.ceil(y1 * h / in_h) - 1) + 1)
    return {r * w + c for r in rows for c in cols}


@pytest.mark.parametrize("angle", [0.0, 90.0, -90.0, 180.0, 270.0])
@pytest.mark.parametrize("aligned", [False, True])
def test_boxes_at_multiples_of_90_degrees_cover_a_rectangle(angle, aligned):
    """Also with every edge on a cell border (aligned): a box touching a cell does not cover it."""
    image_size, map_size = (64, 96), (8, 12)
    generator = torch.Generator().manual_seed(int(angle) + 1000 * aligned)
    scale = torch.tensor([96.0, 64.0, 60.0, 40.0], dtype=torch.float64)
    corners = torch.rand(40, 4, generator=generator, dtype=torch.float64) * scale - 10
    if aligned:
        corners = torch.round(corners / 8) * 8
    x0, y0 = corners[:, 0], corners[:, 1]
    least = 8.0 if aligned else 0.5
    x1, y1 = x0 + corners[:, 2].abs() + least, y0 + corners[:, 3].abs() + least
    quarter_turn = angle % 180 == 90
    w, h = (y1 - y0, x1 - x0) if quarter_turn else (x1 - x0, y1 - y0)
    boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, w, h, torch.full_like(x0, angle)], dim=1)
    box_index, cell_index = oriented_box_cells(boxes, image_size, map_size)
    for b in range(len(boxes)):
        got = set(cell_index[box_index == b].tolist())
        edges = (x0[b].item(), y0[b].item(), x1[b].item(), y1[b].item())
        assert got == expected_rectangle(*edges, image_size, map_size), (b, edges)


def test_at_angle_0_the_horizontal_rule_covers_one_more_column_and_row():
    # 64 x 64 input, 8 x 8 grid. The xyxy box [8, 0, 15, 8] covers columns 1..2 and rows 0..1 by the
    # horizontal rule (floor .. ceil, inclusive); as a rotated box it lies in cell (0, 1) alone.
    horizontal = disw_map([torch.tensor([[8.0, 0.0, 15.0, 8.0]])], (64, 64), (8, 8))[0, 0]
    rotated = disw_map([torch.tensor([[11.5, 4.0, 7.0, 8.0, 0.0]])], (64, 64), (8, 8))[0, 0]
    expected_horizontal, expected_rotated = torch.ones(8, 8), torch.ones(8, 8)
    expected_horizontal[0:2, 1:3] += 0.25
    expected_rotated[0, 1] += 1.0
    assert torch.equal(horizontal, expected_horizontal) and torch.equal(rotated, expected_rotated)


# ---- zero-size and unusual boxes ------------------------------------------------------------------------
def covered(box: List[float]) -> Set[Tuple[int, int]]:
    """(row, col) cells of one box on the 8 x 8 grid of a 64 x 64 input."""
    _, cell = oriented_box_cells(torch.tensor([box], dtype=torch.float64), (64, 64), (8, 8))
    return {divmod(c, 8) for c in cell.tolist()}


def test_zero_size_boxes():
    assert covered([20.0, 12.0, 0.0, 0.0, 0.0]) == {(1, 2)}  # a point inside cell (1, 2)
    assert covered([16.0, 16.0, 0.0, 0.0, 33.0]) == {(2, 2)}  # a point on a cell corner: its centre's cell
    assert covered([20.0, 12.0, 16.0, 0.0, 0.0]) == {(1, 1), (1, 2), (1, 3)}  # a segment across 3 cells
    assert covered([20.0, 16.0, 16.0, 0.0, 0.0]) == {(2, 2)}  # a segment along a cell border
    assert covered([64.0, 64.0, 0.0, 0.0, 0.0]) == {(7, 7)}  # a point on the input's far corner
    assert covered([70.0, 12.0, 0.0, 0.0, 0.0]) == set()  # a point outside
    assert covered([-3.0, 12.0, 10.0, 4.0, 0.0]) == {(1, 0)}  # partly inside
    assert covered([-3.0, 12.0, 10.0, 4.0, 90.0]) == set()  # turned: ends at x = -1, outside
    assert covered([-4.0, 12.0, 8.0, 4.0, 0.0]) == set()  # touches the left border from outside
    assert covered([float("nan"), 12.0, 8.0, 4.0, 0.0]) == set()
    assert covered([20.0, 12.0, -16.0, 0.0, 0.0]) == covered([20.0, 12.0, 16.0, 0.0, 0.0])  # |size|


def test_a_tiny_box_covers_the_cell_of_its_centre():
    generator = torch.Generator().manual_seed(2)
    centres = torch.rand(200, 2, generator=generator, dtype=torch.float64) * 64
    sizes = torch.rand(200, 2, generator=generator, dtype=torch.float64) * 1e-3
    angles = torch.rand(200, 1, generator=generator, dtype=torch.float64) * 360
    box_index, cell_index = oriented_box_cells(torch.cat([centres, sizes, angles], 1), (64, 64), (8, 8))
    centre_cells = (torch.floor(centres[:, 1] / 8) * 8 + torch.floor(centres[:, 0] / 8)).long()
    for b in range(200):
        assert centre_cells[b].item() in cell_index[box_index == b].tolist()


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"boxes\[1\] has shape \(3, 4\) but boxes\[0\] \(2, 5\)"):
        disw_map([torch.zeros(2, 5), torch.zeros(3, 4)], (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"boxes\[0\] must be an \[N, 4\] xyxy or \[N, 5\] XYWHA.*\(2, 6\)"):
        disw_map([torch.zeros(2, 6)], (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"oriented_box_cells: boxes must be \[N, 5\]"):
        oriented_box_cells(torch.zeros(2, 4), (64, 64), (8, 8))
    with pytest.raises(ValueError, match="must be positive"):
        oriented_box_cells(torch.zeros(2, 5), (64, 64), (0, 8))
