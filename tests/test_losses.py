"""ds2d2.losses against hand-computed values and independent re-computations."""
import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F
from pytorch_wavelets import DWTForward
from torchvision.ops import generalized_box_iou

import ds2d2.disw
import ds2d2.losses
import ds2d2.wavelet
from ds2d2.losses import (
    dense_box_kd,
    dense_cls_kd,
    explicit_band_losses,
    explicit_loss,
    explicit_loss_from_bands,
    roi_box_kd,
    roi_cls_kd,
)


def student_and_teacher(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_(True)
    teacher = torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_(True)
    return student, teacher


def assert_grad_only_to_student(loss, student, teacher):
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --------------------------------------------------------------------------------------------------
# Explicit stream
# --------------------------------------------------------------------------------------------------
def per_box_disw(boxes, image_size, map_size):
    in_h, in_w = image_size
    h, w = map_size
    out = torch.ones(len(boxes), 1, h, w, dtype=torch.float64)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes.double().tolist():
            c0, r0 = max(0, math.floor(x0 * w / in_w)), max(0, math.floor(y0 * h / in_h))
            c1, r1 = min(w - 1, math.ceil(x1 * w / in_w)), min(h - 1, math.ceil(y1 * h / in_h))
            if c0 <= c1 and r0 <= r1:
                out[i, 0, r0:r1 + 1, c0:c1 + 1] += 1.0 / ((c1 - c0 + 1) * (r1 - r0 + 1))
    return out


def test_explicit_band_losses_known_values():
    student_low = torch.tensor([[[[1.0, 2.0]]]])  # [1, 1, 1, 2]
    teacher_low = torch.tensor([[[[0.0, 0.0]]]])
    student_high = torch.zeros(1, 1, 3, 1, 2)
    teacher_high = torch.zeros(1, 1, 3, 1, 2)
    teacher_high[0, 0, 1, 0, 1] = 3.0
    weight = torch.tensor([[[[1.0, 2.0]]]])
    low, high = explicit_band_losses(student_low, student_high, teacher_low, teacher_high, weight)
    assert low.item() == pytest.approx((1 * 1 + 4 * 2) / 2)
    assert high.item() == pytest.approx(9 * 2 / 6)


def test_explicit_band_losses_gradients_reach_only_the_student():
    student_low, teacher_low = student_and_teacher(2, 3, 4, 5)
    student_high, teacher_high = student_and_teacher(2, 3, 3, 4, 5, seed=1)
    weight = torch.rand(2, 1, 4, 5, requires_grad=True)
    low, high = explicit_band_losses(student_low, student_high, teacher_low, teacher_high, weight)
    (low + high).backward()
    assert student_low.grad.abs().sum() > 0 and student_high.grad.abs().sum() > 0
    assert teacher_low.grad is None and teacher_high.grad is None and weight.grad is None


@pytest.mark.parametrize("wave", ["haar", "db2"])
def test_explicit_loss_matches_direct_formula(wave):
    image_size = (64, 48)
    shapes = [(2, 4, 16, 12), (2, 4, 8, 6), (2, 4, 3, 5)]
    students = [torch.randn(s, requires_grad=True) for s in shapes]
    teachers = [torch.randn(s) for s in shapes]
    boxes = [torch.tensor([[3.0, 4.0, 30.0, 20.0], [0.0, 50.0, 47.0, 64.0]]), torch.zeros(0, 4)]
    low, high = explicit_loss(students, teachers, boxes, image_size, wave)

    reference = DWTForward(J=1, mode="zero", wave=wave)
    expected_low = expected_high = 0.0
    for student, teacher in zip(students, teachers):
        s_low, (s_high,) = reference(student.detach())
        t_low, (t_high,) = reference(teacher)
        weight = per_box_disw(boxes, image_size, t_low.shape[-2:]).float()
        expected_low += ((s_low - t_low) ** 2 * weight).mean()
        expected_high += ((s_high - t_high) ** 2 * weight[:, :, None]).mean()
    assert low.shape == high.shape == () and low.dtype == high.dtype == torch.float32
    torch.testing.assert_close(low, expected_low, rtol=1e-5, atol=0)
    torch.testing.assert_close(high, expected_high, rtol=1e-5, atol=0)


def test_explicit_loss_from_bands_matches_direct_formula():
    # The distiller's entry point (teacher bands already computed), against pytorch_wavelets + a per-box DISW.
    image_size = (64, 48)
    shapes = [(2, 4, 16, 12), (2, 4, 8, 6), (2, 4, 3, 5)]
    reference = DWTForward(J=1, mode="zero", wave="haar")
    students = [torch.randn(s) for s in shapes]
    teachers = [torch.randn(s) for s in shapes]
    boxes = [torch.tensor([[3.0, 4.0, 30.0, 20.0], [0.0, 50.0, 47.0, 64.0]]), torch.zeros(0, 4)]
    student_bands = [(low, high) for low, (high,) in map(reference, students)]
    teacher_bands = [(low, high) for low, (high,) in map(reference, teachers)]
    low, high = explicit_loss_from_bands(student_bands, teacher_bands, boxes, image_size)
    expected_low = expected_high = 0.0
    for (s_low, s_high), (t_low, t_high) in zip(student_bands, teacher_bands):
        weight = per_box_disw(boxes, image_size, t_low.shape[-2:]).float()
        expected_low += ((s_low - t_low) ** 2 * weight).mean()
        expected_high += ((s_high - t_high) ** 2 * weight[:, :, None]).mean()
    torch.testing.assert_close(low, expected_low, rtol=1e-5, atol=0)
    torch.testing.assert_close(high, expected_high, rtol=1e-5, atol=0)


def test_explicit_loss_equal_inputs_and_gradients():
    feats = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)]
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    low, high = explicit_loss(feats, [f.clone() for f in feats], boxes, (32, 32))
    assert low.item() == 0 and high.item() == 0

    student, teacher = student_and_teacher(1, 3, 8, 8)
    low, high = explicit_loss([student], [teacher], boxes, (32, 32))
    assert_grad_only_to_student(low + high, student, teacher)


def test_explicit_loss_half_inputs_give_float32():
    student, teacher = student_and_teacher(1, 2, 6, 6, dtype=torch.float16)
    low, high = explicit_loss([student], [teacher], [torch.zeros(0, 4)], (24, 24))
    assert low.dtype == high.dtype == torch.float32 and torch.isfinite(low) and torch.isfinite(high)


def test_explicit_loss_rejects_mismatches():
    with pytest.raises(ValueError, match="same non-zero number"):
        explicit_loss([torch.zeros(1, 1, 4, 4)], [], [torch.zeros(0, 4)], (8, 8))
    with pytest.raises(ValueError, match=r"level 0.*\(1, 2, 4, 4\).*\(1, 1, 4, 4\)"):
        explicit_loss([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 1, 4, 4)], [torch.zeros(0, 4)], (8, 8))
    with pytest.raises(ValueError, match="weight shape"):
        explicit_band_losses(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 2, 2), torch.zeros(1, 1, 2, 2),
                             torch.zeros(1, 1, 3, 2, 2), torch.ones(1, 1, 3, 3))


# --------------------------------------------------------------------------------------------------
# Dense KD
# --------------------------------------------------------------------------------------------------
def test_dense_cls_kd_known_value():
    # p_s = 0.5, p_t = 0.75: BCE = log 2 whatever the target, factor |0.5 - 0.75| = 0.25.
    student = torch.tensor([[0.0], [5.0]])
    teacher = torch.tensor([[math.log(3.0)], [-5.0]])
    valid = torch.tensor([True, False])
    assert dense_cls_kd(student, teacher, valid, num_pos=0.5).item() == pytest.approx(0.25 * math.log(2))
    loss = dense_cls_kd(student, teacher, valid, num_pos=torch.tensor(2.0))
    assert loss.shape == () and loss.item() == pytest.approx(0.125 * math.log(2))


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_dense_cls_kd_matches_per_element_loop(beta):
    student, teacher = student_and_teacher(12, 3, dtype=torch.float64)
    valid = torch.rand(12) > 0.3
    loss = dense_cls_kd(student, teacher, valid, torch.tensor(4.0), beta=beta)
    expected = 0.0
    for n in range(12):
        if not valid[n]:
            continue
        for k in range(3):
            s, t = float(student[n, k]), float(teacher[n, k])
            p_s, p_t = 1 / (1 + math.exp(-s)), 1 / (1 + math.exp(-t))
            bce = -(p_t * math.log(p_s) + (1 - p_t) * math.log(1 - p_s))
            expected += bce * abs(p_s - p_t) ** beta
    assert loss.item() == pytest.approx(expected / 4.0, rel=1e-5)


def test_dense_cls_kd_equal_inputs_gradients_and_half():
    logits = torch.randn(6, 4)
    assert dense_cls_kd(logits, logits.clone(), torch.ones(6, dtype=torch.bool), 3).item() == 0
    student, teacher = student_and_teacher(6, 4)
    loss = dense_cls_kd(student, teacher, torch.ones(6, dtype=torch.bool), 3)
    assert_grad_only_to_student(loss, student, teacher)
    student, teacher = student_and_teacher(6, 4, dtype=torch.float16)
    assert dense_cls_kd(student, teacher, torch.ones(6, dtype=torch.bool), 3).dtype == torch.float32


def test_dense_cls_kd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="valid must be a bool"):
        dense_cls_kd(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3), 1)
    with pytest.raises(ValueError, match="0-dim"):
        dense_cls_kd(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, dtype=torch.bool), torch.ones(2))
    with pytest.raises(ValueError, match="beta"):
        dense_cls_kd(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, dtype=torch.bool), 1, beta=0)


def random_boxes(n, seed):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=generator) * 50
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=generator) * 30], dim=1)


def test_dense_box_kd_known_value():
    student = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    teacher = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, hull 9
    expected = 1 - (1 / 7 - (9 - 7) / 9)
    assert dense_box_kd(student, teacher, torch.tensor([0.5]), 0).item() == pytest.approx(0.5 * expected)


def test_dense_box_kd_matches_torchvision_giou():
    student, teacher = random_boxes(20, 0).requires_grad_(True), random_boxes(20, 1)
    weight = torch.rand(20)
    loss = dense_box_kd(student, teacher, weight, torch.tensor(5.0))
    giou = generalized_box_iou(student.detach(), teacher).diagonal()
    torch.testing.assert_close(loss, ((1 - giou) * weight).sum() / 5.0, rtol=1e-5, atol=0)


def test_dense_box_kd_equal_inputs_and_gradients():
    boxes = random_boxes(10, 2)
    assert dense_box_kd(boxes, boxes.clone(), torch.ones(10), 4).item() == 0
    student, teacher = random_boxes(10, 3).requires_grad_(True), random_boxes(10, 4).requires_grad_(True)
    weight = torch.rand(10, requires_grad=True)
    dense_box_kd(student, teacher, weight, 4).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None and weight.grad is None


# --------------------------------------------------------------------------------------------------
# Two-stage KD
# --------------------------------------------------------------------------------------------------
def test_roi_cls_kd_known_value():
    temperature = 3.0
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[temperature * math.log(3.0), 0.0]])  # softmax(t / T) = (0.75, 0.25)
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * temperature**2
    assert roi_cls_kd(student, teacher, temperature).item() == pytest.approx(expected)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_roi_cls_kd_matches_torch_kl_div(temperature):
    student, teacher = student_and_teacher(7, 5)
    expected = F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                        reduction="batchmean") * temperature**2
    torch.testing.assert_close(roi_cls_kd(student, teacher, temperature), expected, rtol=1e-5, atol=1e-7)


def test_roi_cls_kd_equal_inputs_empty_and_gradients():
    logits = torch.randn(5, 4)
    assert roi_cls_kd(logits, logits.clone()).item() == 0
    assert roi_cls_kd(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0
    student, teacher = student_and_teacher(5, 4)
    assert_grad_only_to_student(roi_cls_kd(student, teacher), student, teacher)
    student, teacher = student_and_teacher(5, 4, dtype=torch.float16)
    assert roi_cls_kd(student, teacher).dtype == torch.float32


def per_roi_box_kd(student_deltas, teacher_deltas, teacher_logits):
    numerator = denominator = 0.0
    num_classes = teacher_logits.shape[1] - 1
    for s, t, logits in zip(student_deltas.tolist(), teacher_deltas.tolist(), teacher_logits.tolist()):
        exps = [math.exp(v) for v in logits]
        probs = [e / sum(exps) for e in exps][:num_classes]
        best = max(range(num_classes), key=probs.__getitem__)
        if len(s) != 4:
            s, t = s[4 * best:4 * best + 4], t[4 * best:4 * best + 4]
        numerator += probs[best] * sum(abs(a - b) for a, b in zip(s, t))
        denominator += 4 * probs[best]
    return numerator / denominator


def test_roi_box_kd_known_value():
    # Teacher: RoI 0 prefers class 1 with p = 0.5 (probs 0.25, 0.5, bg 0.25); RoI 1 prefers class 0 (p = 0.5).
    logits = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]))
    student = torch.zeros(2, 8)
    teacher = torch.zeros(2, 8)
    teacher[0, 4:8] = torch.tensor([1.0, -1.0, 2.0, 0.0])  # class 1 of RoI 0: L1 = 4
    teacher[0, 0:4] = 100.0  # class 0 of RoI 0 is not the teacher's choice
    teacher[1, 0] = 2.0  # class 0 of RoI 1: L1 = 2
    expected = (0.5 * 4 + 0.5 * 2) / (4 * (0.5 + 0.5))
    assert roi_box_kd(student, teacher, logits).item() == pytest.approx(expected)


@pytest.mark.parametrize("class_specific", [True, False])
def test_roi_box_kd_matches_per_roi_loop(class_specific):
    num_classes = 3
    width = 4 * num_classes if class_specific else 4
    student, teacher = student_and_teacher(9, width, dtype=torch.float64)
    logits = torch.randn(9, num_classes + 1, dtype=torch.float64) * 3
    loss = roi_box_kd(student, teacher, logits)
    assert loss.item() == pytest.approx(per_roi_box_kd(student.detach(), teacher.detach(), logits), rel=1e-5)


def test_roi_box_kd_equal_inputs_empty_and_gradients():
    deltas = torch.randn(5, 8)
    logits = torch.randn(5, 3, requires_grad=True)
    assert roi_box_kd(deltas, deltas.clone(), logits).item() == 0
    assert roi_box_kd(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(0, 3)).item() == 0
    student, teacher = student_and_teacher(5, 8)
    roi_box_kd(student, teacher, logits).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None and logits.grad is None


def test_roi_box_kd_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[R, 4\] or \[R, 8\] for 2 classes"):
        roi_box_kd(torch.zeros(3, 12), torch.zeros(3, 12), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="teacher_logits"):
        roi_box_kd(torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(2, 3))


def test_numerics_modules_never_sync_to_host():
    pattern = re.compile(r"\.(item|tolist|cpu|numpy)\(")
    for module in (ds2d2.wavelet, ds2d2.disw, ds2d2.losses):
        assert not pattern.search(inspect.getsource(module)), module.__name__
