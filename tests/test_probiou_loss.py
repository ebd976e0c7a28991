"""ds2d2.losses.probiou_loss: the Bhattacharyya coefficient against a numerical integral of the two Gaussians
(covariances from the boxes' corners), a hand-computed shift, symmetry, zero for identical boxes, the
(w, h, a) == (h, w, a + 90) and a == a + 180 invariances, range, finite gradients (squares, tiny, zero-size,
identical and long thin boxes), gradcheck, dtypes and bad input."""
import math

import numpy as np
import pytest
import torch

from ds2d2.losses import probiou_loss
from ds2d2.rotated.boxes import canonical_rotated_boxes, rotated_boxes_to_polygons

EPS = 1e-3


def corner_covariance(box: torch.Tensor) -> np.ndarray:
    """[2, 2] covariance of the uniform rectangle from its corners: the edges e1 (width), e2 (height) give
    (e1 e1^T + e2 e2^T) / 12; plus EPS I as the loss adds."""
    corners = rotated_boxes_to_polygons(box[None].double())[0].numpy().reshape(4, 2)
    e1, e2 = corners[1] - corners[0], corners[3] - corners[0]
    return (np.outer(e1, e1) + np.outer(e2, e2)) / 12 + EPS * np.eye(2)


def integrated_coefficient(box1: torch.Tensor, box2: torch.Tensor, points: int = 1201) -> float:
    """Bhattacharyya coefficient: the integral of sqrt(p1 p2) of the boxes' Gaussian densities, on a grid."""
    means = [box1[:2].double().numpy(), box2[:2].double().numpy()]
    covs = [corner_covariance(box1), corner_covariance(box2)]
    spread = 8 * math.sqrt(max(np.linalg.eigvalsh(c).max() for c in covs))
    lo, hi = np.minimum(*means) - spread, np.maximum(*means) + spread
    xs, ys = np.linspace(lo[0], hi[0], points), np.linspace(lo[1], hi[1], points)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # [P, P, 2]
    densities = []
    for mean, cov in zip(means, covs):
        d = grid - mean
        quad = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
        densities.append(np.exp(-quad / 2) / (2 * math.pi * math.sqrt(np.linalg.det(cov))))
    step = (xs[1] - xs[0]) * (ys[1] - ys[0])  # the densities vanish at the borders: a plain sum is exact
    return float(np.sqrt(densities[0] * densities[1]).sum() * step)


def random_pairs(n: int, seed: int) -> tuple:
    """[n, 5] float64 boxes and partners nearby: shifted by up to about a box, resized, turned."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 10, generator=generator, dtype=torch.float64)
    boxes = torch.stack([u[:, 0] * 200, u[:, 1] * 200, 4 + u[:, 2] * 50, 2 + u[:, 3] * 30,
                         u[:, 4] * 360 - 180], dim=1)
    size = boxes[:, 2:4].mean(dim=1)
    partners = torch.stack([boxes[:, 0] + (u[:, 5] - 0.5) * size, boxes[:, 1] + (u[:, 6] - 0.5) * size,
                            boxes[:, 2] * (0.5 + u[:, 7]), boxes[:, 3] * (0.5 + u[:, 8]),
                            boxes[:, 4] + u[:, 9] * 180], dim=1)
    return boxes, partners


def equivalent_forms(boxes: torch.Tensor) -> list:
    """The same rectangles written differently: w and h swapped with a + 90, a +- 180, a + 360, canonical."""
    swapped = boxes[:, [0, 1, 3, 2, 4]].clone()
    swapped[:, 4] += 90
    turned = [boxes.clone() for _ in range(3)]
    for form, delta in zip(turned, (180.0, -180.0, 360.0)):
        form[:, 4] += delta
    return [swapped, *turned, canonical_rotated_boxes(boxes)]


def test_matches_a_numerical_integral_of_the_gaussians():
    boxes, partners = random_pairs(8, seed=0)
    loss = probiou_loss(boxes, partners)
    assert loss.dtype == torch.float64
    for box, partner, value in zip(boxes, partners, loss.tolist()):
        coefficient = integrated_coefficient(box, partner)
        assert 0.05 < coefficient < 0.999  # the draw spans the interesting range
        assert 1 - value**2 == pytest.approx(coefficient, abs=1e-9)


def test_a_shift_along_the_width_has_the_closed_form():
    # Same box moved by d along its width direction (cos a, -sin a): B = d^2 / (8 (w^2/12 + eps)).
    a, d = math.radians(30.0), 7.0
    box = torch.tensor([[50.0, 40.0, 20.0, 6.0, 30.0]], dtype=torch.float64)
    moved = box.clone()
    moved[0, 0] += d * math.cos(a)
    moved[0, 1] -= d * math.sin(a)
    b = d**2 / (8 * (20.0**2 / 12 + EPS))
    assert probiou_loss(moved, box).item() == pytest.approx(math.sqrt(1 - math.exp(-b)), rel=1e-12)


def test_symmetric_zero_for_identical_boxes_and_bounded():
    boxes, partners = random_pairs(50, seed=1)
    torch.testing.assert_close(probiou_loss(boxes, partners), probiou_loss(partners, boxes),
                               rtol=0, atol=1e-12)
    assert torch.equal(probiou_loss(boxes, boxes), torch.zeros(50, dtype=torch.float64))
    far = partners.clone()
    far[:, 0] += 1e4
    loss = probiou_loss(boxes, far)
    assert (loss <= 1).all() and (loss > 0.999).all()


def test_the_representation_of_a_rectangle_does_not_matter():
    boxes, partners = random_pairs(50, seed=2)
    reference = probiou_loss(boxes, partners)
    for form in equivalent_forms(boxes):
        torch.testing.assert_close(probiou_loss(form, partners), reference, rtol=0, atol=1e-7)
        torch.testing.assert_close(probiou_loss(partners, form), reference, rtol=0, atol=1e-7)
        assert (probiou_loss(form, boxes) < 1e-7).all()


def test_gradients_are_finite_on_squares_tiny_zero_size_identical_and_thin_boxes():
    pred = torch.tensor([
        [10.0, 10.0, 8.0, 8.0, 20.0],  # a square
        [10.0, 10.0, 1e-4, 1e-4, 0.0],  # tiny
        [10.0, 10.0, 0.0, 0.0, 0.0],  # zero size
        [30.0, 20.0, 12.0, 5.0, -40.0],  # identical to its target
        [500.0, 500.0, 1000.0, 0.5, 45.0],  # long and thin
        [5.0, 5.0, 6.0, 6.0, 0.0],  # square on a square
    ], requires_grad=True)
    target = torch.tensor([
        [12.0, 9.0, 10.0, 4.0, 10.0],
        [10.5, 10.0, 1e-4, 1e-4, 30.0],
        [10.0, 10.0, 0.0, 0.0, 70.0],
        [30.0, 20.0, 12.0, 5.0, -40.0],
        [501.0, 499.0, 990.0, 0.6, 44.0],
        [5.0, 5.0, 6.0, 6.0, 33.0],
    ], requires_grad=True)
    loss = probiou_loss(pred, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert target.grad is None  # the target is the teacher's: a constant
    assert loss[3] == 0 and loss[5] < 1e-6  # a square's angle is invisible to a Gaussian
    assert pred.grad[0].abs().sum() > 0 and pred.grad[4].abs().sum() > 0


def test_autograd_matches_finite_differences():
    boxes, partners = random_pairs(6, seed=3)
    boxes.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: probiou_loss(p, partners), (boxes,))


def test_dtypes():
    boxes, partners = random_pairs(4, seed=4)
    expected = probiou_loss(boxes, partners)
    half = probiou_loss(boxes.half(), partners.half())
    assert half.dtype == probiou_loss(boxes.float(), partners.float()).dtype == torch.float32
    torch.testing.assert_close(probiou_loss(boxes.float(), partners.float()).double(), expected,
                               rtol=1e-5, atol=1e-6)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"student shape \(2, 5\) != teacher shape \(3, 5\)"):
        probiou_loss(torch.zeros(2, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 5\] XYWHA, got \(2, 4\)"):
        probiou_loss(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="eps must be > 0"):
        probiou_loss(torch.zeros(2, 5), torch.zeros(2, 5), eps=0.0)
