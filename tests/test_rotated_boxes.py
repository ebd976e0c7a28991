"""ds2d2.rotated.boxes: the angle convention against Detectron2's documented corners, corners against OpenCV's
boxPoints, polygon -> box against OpenCV's minAreaRect and Shapely's minimum rotated rectangle, in every
quadrant, round trips, the canonical form, and the label checks."""
import math

import cv2
import numpy as np
import pytest
import torch
from shapely import affinity
from shapely.geometry import MultiPoint, Polygon, box

from ds2d2.rotated.boxes import (
    canonical_rotated_boxes,
    min_area_rotated_boxes,
    polygons_to_rotated_boxes,
    quadrilateral_problem,
    rotated_boxes_to_polygons,
)

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
# angles in every quadrant, on the boundaries and past +-180
ANGLES = [-200.0, -180.0, -170.0, -135.0, -100.0, -90.0, -60.0, -45.0, -10.0, 0.0, 10.0, 45.0, 60.0, 90.0,
          100.0, 135.0, 170.0, 180.0, 250.0]


def shapely_rectangle(rotated_box) -> Polygon:
    """Independent polygon of (cx, cy, w, h, angle): counter-clockwise on screen (y down) is clockwise in
    Shapely's y-up frame, hence the negated angle."""
    cx, cy, w, h, angle = (float(v) for v in rotated_box)
    rectangle = box(-w / 2, -h / 2, w / 2, h / 2)
    return affinity.translate(affinity.rotate(rectangle, -angle, origin=(0, 0)), cx, cy)


def cv2_corners(rotated_box) -> np.ndarray:
    """[4, 2] corners by OpenCV, whose angle turns clockwise on screen."""
    cx, cy, w, h, angle = (float(v) for v in rotated_box)
    return cv2.boxPoints(((cx, cy), (w, h), -angle)).astype(np.float64)


def same_corner_set(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    """Whether two [4, 2] corner lists hold the same points in some order."""
    distances = np.linalg.norm(a[:, None] - b[None], axis=2)
    return bool((distances.min(1) <= atol).all() and (distances.min(0) <= atol).all())


def expected_canonical_angle(angle: float, w: float, h: float) -> float:
    """Long edge as width, angle wrapped into [-90, 90), by plain arithmetic."""
    if w < h:
        angle += 90.0
    angle = math.fmod(angle + 90.0, 180.0)
    if angle < 0:
        angle += 180.0
    return angle - 90.0


def test_corners_are_detectron2s_documented_a_b_c_d():
    # RotatedBoxes' docstring: (5, 3, 4, 2, a) has A, B, C, D at these points
    boxes = torch.tensor([[5.0, 3.0, 4.0, 2.0, 0.0], [5.0, 3.0, 4.0, 2.0, 90.0], [5.0, 3.0, 4.0, 2.0, -90.0],
                          [5.0, 3.0, 4.0, 2.0, 180.0]])
    expected = torch.tensor([
        [3, 2, 7, 2, 7, 4, 3, 4],
        [4, 5, 4, 1, 6, 1, 6, 5],
        [6, 1, 6, 5, 4, 5, 4, 1],
        [7, 4, 3, 4, 3, 2, 7, 2],
    ], dtype=torch.float32)
    torch.testing.assert_close(rotated_boxes_to_polygons(boxes), expected, atol=1e-5, rtol=0)


def test_positive_angle_turns_counter_clockwise_on_screen():
    # a bar along x turned by +30: its right end (width direction) rises, i.e. moves to smaller y
    tr = rotated_boxes_to_polygons(torch.tensor([[0.0, 0.0, 10.0, 0.0, 30.0]]))[0, 2:4]
    assert tr[0] == pytest.approx(5 * math.cos(math.radians(30))) and tr[1] == pytest.approx(-2.5)
    # corners clockwise on screen: with y down, a clockwise loop has a positive shoelace sum
    poly = rotated_boxes_to_polygons(torch.tensor([[0.0, 0.0, 8.0, 3.0, 37.0]]))[0].reshape(4, 2).double()
    shoelace = (poly[:, 0] * poly.roll(-1, 0)[:, 1] - poly.roll(-1, 0)[:, 0] * poly[:, 1]).sum() / 2
    assert shoelace.item() == pytest.approx(24.0)


@pytest.mark.parametrize("angle", ANGLES)
def test_corners_match_opencv_and_shapely_in_every_quadrant(angle):
    b = [100.5, -40.25, 30.0, 12.0, angle]
    corners = rotated_boxes_to_polygons(torch.tensor([b], dtype=torch.float64))[0].reshape(4, 2).numpy()
    assert same_corner_set(corners, cv2_corners(b), atol=1e-3)  # boxPoints works in float32
    assert Polygon(corners).symmetric_difference(shapely_rectangle(b)).area < 1e-9


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("size", [(30.0, 12.0), (12.0, 30.0)])
def test_rectangle_polygon_to_box_in_every_quadrant(angle, size):
    w, h = size
    b = [250.0, 80.0, w, h, angle]
    for start in range(4):  # the polygon may start at any corner
        corners = np.roll(cv2_corners(b), -start, axis=0)
        got = polygons_to_rotated_boxes(torch.tensor(corners.reshape(1, 8)))[0].tolist()
        assert got[:4] == pytest.approx([250.0, 80.0, max(w, h), min(w, h)], abs=1e-4)
        want = expected_canonical_angle(angle, w, h)
        assert abs(got[4] - want) < 1e-4 or abs(abs(got[4] - want) - 180) < 1e-4  # -90 and 90 are one angle
        assert -90.0 <= got[4] < 90.0
        assert shapely_rectangle(got).symmetric_difference(shapely_rectangle(b)).area < 1e-3


def test_random_quadrilaterals_against_opencv_min_area_rect_and_shapely():
    rng = np.random.default_rng(0)
    polys = rng.uniform(-50, 50, size=(300, 4, 2)) + rng.uniform(0, 4000, size=(300, 1, 2))
    boxes = polygons_to_rotated_boxes(torch.tensor(polys.reshape(-1, 8))).numpy()
    for poly, b in zip(polys, boxes):
        (_, _), (cw, ch), _ = cv2.minAreaRect(poly.astype(np.float32))
        envelope = MultiPoint([tuple(p) for p in poly]).minimum_rotated_rectangle
        assert b[2] * b[3] == pytest.approx(cw * ch, rel=1e-3)
        assert b[2] * b[3] == pytest.approx(envelope.area, rel=1e-9)
        assert b[2] >= b[3] and -90.0 <= b[4] < 90.0
        assert shapely_rectangle(b).buffer(1e-6).contains(MultiPoint([tuple(p) for p in poly]))


@pytest.mark.parametrize("num_points", [1, 2, 3, 5, 8])
def test_point_sets_of_any_size_against_shapely(num_points):
    rng = np.random.default_rng(num_points)
    points = rng.uniform(-30, 30, size=(100, num_points, 2)) + rng.uniform(0, 1000, size=(100, 1, 2))
    boxes = min_area_rotated_boxes(torch.tensor(points)).numpy()
    for pts, b in zip(points, boxes):
        envelope = MultiPoint([tuple(p) for p in pts]).minimum_rotated_rectangle
        assert b[2] * b[3] == pytest.approx(envelope.area, rel=1e-9, abs=1e-9)
        assert shapely_rectangle(b).buffer(1e-6).covers(MultiPoint([tuple(p) for p in pts]))
    if num_points == 1:
        np.testing.assert_allclose(boxes[:, :2], points[:, 0], atol=1e-9)
    # a repeated point (padding of a shorter set) changes nothing (but which of equal minima is found: an
    # acute triangle has three rectangles of twice its area)
    padded = min_area_rotated_boxes(torch.tensor(np.concatenate([points, points[:, :1]], axis=1))).numpy()
    np.testing.assert_allclose(padded[:, 2] * padded[:, 3], boxes[:, 2] * boxes[:, 3], rtol=1e-9, atol=1e-9)


def test_round_trips():
    gen = torch.Generator().manual_seed(1)
    n = 500
    boxes = torch.cat([torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1000,
                       torch.rand(n, 2, generator=gen, dtype=torch.float64) * 99 + 1,
                       torch.rand(n, 1, generator=gen, dtype=torch.float64) * 720 - 360], 1)
    polys = rotated_boxes_to_polygons(boxes)
    back = polygons_to_rotated_boxes(polys)
    torch.testing.assert_close(back, canonical_rotated_boxes(boxes), atol=1e-6, rtol=0)
    for p, q in zip(polys.numpy(), rotated_boxes_to_polygons(back).numpy()):
        assert same_corner_set(p.reshape(4, 2), q.reshape(4, 2), atol=1e-6)


def test_canonical_form():
    boxes = torch.tensor([
        [0, 0, 4, 2, 90.0],     # boundary: 90 is written -90
        [0, 0, 4, 2, -90.0],
        [0, 0, 2, 4, 0.0],      # tall: long edge becomes the width, turned by 90
        [0, 0, 2, 4, 30.0],
        [0, 0, 3, 3, 80.0],     # square: angle within [-45, 45)
        [0, 0, 3, 3, 45.0],
        [0, 0, 4, 2, -450.0],
    ], dtype=torch.float64)
    want = torch.tensor([
        [0, 0, 4, 2, -90.0], [0, 0, 4, 2, -90.0], [0, 0, 4, 2, -90.0], [0, 0, 4, 2, -60.0],
        [0, 0, 3, 3, -10.0], [0, 0, 3, 3, -45.0], [0, 0, 4, 2, -90.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(canonical_rotated_boxes(boxes), want)
    for b, c in zip(boxes.tolist(), want.tolist()):  # the same region
        assert shapely_rectangle(b).symmetric_difference(shapely_rectangle(c)).area < 1e-9


def test_dtype_far_coordinates_and_empty_input():
    poly32 = rotated_boxes_to_polygons(torch.tensor([[20000.5, 30000.25, 6.0, 2.0, 33.0]]))
    assert poly32.dtype == torch.float32
    back = polygons_to_rotated_boxes(poly32)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, torch.tensor([[20000.5, 30000.25, 6.0, 2.0, 33.0]]), atol=5e-3, rtol=0)
    assert polygons_to_rotated_boxes(torch.zeros(0, 8)).shape == (0, 5)
    assert rotated_boxes_to_polygons(torch.zeros(0, 5)).shape == (0, 8)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        polygons_to_rotated_boxes(torch.zeros(3, 4))


def test_degenerate_polygons_give_zero_height_boxes():
    polys = torch.tensor([[0, 0, 10, 0, 20, 0, 5, 0], [3, 3, 3, 3, 3, 3, 3, 3]], dtype=torch.float64)
    boxes = polygons_to_rotated_boxes(polys)
    torch.testing.assert_close(boxes[:, 3], torch.zeros(2, dtype=torch.float64))
    assert boxes[0, 2].item() == pytest.approx(20.0)


@NO_CUDA
def test_cuda_matches_cpu():
    polys = torch.rand(64, 8, dtype=torch.float64) * 100
    on_cuda = polygons_to_rotated_boxes(polys.cuda())
    assert on_cuda.is_cuda
    torch.testing.assert_close(on_cuda.cpu(), polygons_to_rotated_boxes(polys))


@pytest.mark.parametrize("poly,problem", [
    ([0, 0, 10, 0, 10, 5, 0, 5], None),
    ([0, 0, 10, 0, 10, 5, 4, 1], None),                # concave: fine, its hull is boxed
    ([0, 0, 10, 0, 10, 5, 10, 5], None),               # a triangle with a repeated corner: still an area
    ([0, 0, 10, 0, float("nan"), 5, 0, 5], "non-finite"),
    ([0, 0, 10, 0, float("inf"), 5, 0, 5], "non-finite"),
    ([0, 0, 10, 0, 20, 0, 5, 0], "degenerate"),       # collinear
    ([3, 3, 3, 3, 3, 3, 3, 3], "degenerate"),
    ([0, 0, 10, 5, 10, 0, 0, 5], "self-intersecting"),  # bow tie: corners 2 and 3 swapped
    ([0, 0, 10, 0, 0, 5, 10, 5], "self-intersecting"),
    ([0, 0, 10, 0, 10, 5], "expected 8 numbers"),
])
def test_quadrilateral_problem(poly, problem):
    found = quadrilateral_problem(poly)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
