"""Each DS2D2 loss term against the authors' training computation, written here independently of ds2d2.

The formulas are those of docs/method.md. The references below are plain loops in float64 (per box, per
anchor, per RoI) with pytorch_wavelets as the DWT; they share no code with ds2d2.losses or its families.
"""
import math
from typing import Dict, List, Sequence

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from pytorch_wavelets import DWTForward

from conftest import random_batch, tiny_cfg, tiny_stages
from ds2d2 import dwt, explicit_loss
from ds2d2.distill.ds2d2_implicit import ImplicitKD
from ds2d2.families import RCNNFamily, RetinaNetFamily
from ds2d2.losses import dense_box_kd, dense_cls_kd, roi_box_kd, roi_cls_divisor, roi_cls_kd

pytestmark = pytest.mark.usefixtures("single_torch_thread")
TEMPERATURE = 3.0  # MODEL.DS2D2.LOSS.ROI_TEMPERATURE
ROI_CLS_WEIGHT = 0.5  # MODEL.DS2D2.LOSS.ROI_CLS_WEIGHT
SCALE_CLAMP = math.log(1000.0 / 16)  # Detectron2's Box2BoxTransform clamp on dw, dh
HAAR = DWTForward(J=1, wave="haar", mode="zero").double()


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(float(expected)), rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# The authors' computation, term by term
# --------------------------------------------------------------------------------------------------
def authors_disw(boxes: List[torch.Tensor], image_size, grid) -> torch.Tensor:
    """[B, 1, h, w] float64: 1 + sum over the boxes covering a cell of 1 / (the box's cell area)."""
    (in_h, in_w), (h, w) = image_size, grid
    weight = torch.ones(len(boxes), 1, h, w, dtype=torch.float64)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes.tolist():
            c0, r0 = max(0, math.floor(x0 * w / in_w)), max(0, math.floor(y0 * h / in_h))
            c1, r1 = min(w - 1, math.ceil(x1 * w / in_w)), min(h - 1, math.ceil(y1 * h / in_h))
            weight[i, 0, r0:r1 + 1, c0:c1 + 1] += 1.0 / ((c1 - c0 + 1) * (r1 - r0 + 1))
    return weight


def authors_explicit(students, teachers, boxes, image_size):
    """(L_ex_low, L_ex_high): per level, the DISW-weighted mean squared band difference, summed."""
    low = high = 0.0
    for student, teacher in zip(students, teachers):
        s_low, (s_high,) = HAAR(student.double())
        t_low, (t_high,) = HAAR(teacher.double())
        weight = authors_disw(boxes, image_size, t_low.shape[-2:])
        low += ((s_low - t_low) ** 2 * weight).mean().item()
        high += ((s_high - t_high) ** 2 * weight[:, :, None]).mean().item()
    return low, high


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def quality_focal(s: float, t: float, beta: float) -> float:
    """BCEWithLogits(s, sigmoid(t)) * |sigmoid(s) - sigmoid(t)|^beta."""
    target = sigmoid(t)
    bce = max(s, 0.0) - s * target + math.log1p(math.exp(-abs(s)))
    return bce * abs(sigmoid(s) - target) ** beta


def decode(delta: Sequence[float], anchor: Sequence[float]) -> List[float]:
    """Box2BoxTransform with weights (1, 1, 1, 1): deltas (dx, dy, dw, dh) on an xyxy anchor -> xyxy."""
    x0, y0, x1, y1 = anchor
    dx, dy, dw, dh = delta
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + 0.5 * w + dx * w, y0 + 0.5 * h + dy * h
    w, h = math.exp(min(dw, SCALE_CLAMP)) * w, math.exp(min(dh, SCALE_CLAMP)) * h
    return [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]


def giou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def authors_dense_kd(s_logits, t_logits, s_deltas, t_deltas, anchors, labels, num_classes, beta=1.0):
    """RetinaNet KD, per anchor. Logits [B, N, K], deltas [B, N, 4], anchors [N, 4], labels [B, N].

    Returns (cls KD, box KD, the part of box KD that comes from ignored anchors), all / max(positives, 1).
    """
    cls = box = box_ignored = 0.0
    num_pos = 0
    for b in range(labels.shape[0]):
        rows = zip(s_logits[b].tolist(), t_logits[b].tolist(), s_deltas[b].tolist(), t_deltas[b].tolist(),
                   anchors.tolist(), labels[b].tolist())
        for s_row, t_row, s_delta, t_delta, anchor, label in rows:
            if label != -1:
                cls += sum(quality_focal(s, t, beta) for s, t in zip(s_row, t_row))
                num_pos += label != num_classes
            term = sigmoid(max(t_row)) * (1.0 - giou(decode(s_delta, anchor), decode(t_delta, anchor)))
            box += term
            box_ignored += term if label == -1 else 0.0
    normaliser = max(num_pos, 1)
    return cls / normaliser, box / normaliser, box_ignored / normaliser


def log_softmax(row: Sequence[float]) -> List[float]:
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_sum for v in row]


def roi_kl(s_logits, t_logits, temperature=TEMPERATURE) -> List[float]:
    """Per RoI: T^2 * KL(softmax(t / T) || softmax(s / T)), summed over the classes."""
    out = []
    for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist()):
        log_q = log_softmax([v / temperature for v in s_row])
        log_p = log_softmax([v / temperature for v in t_row])
        out.append(temperature**2 * sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q)))
    return out


def authors_roi_box(s_deltas, t_deltas, t_logits) -> float:
    """p-weighted L1 of the deltas of the teacher's most probable foreground class, / (4 * sum of p)."""
    num_classes = t_logits.shape[1] - 1
    numerator = denominator = 0.0
    for s, t, logits in zip(s_deltas.tolist(), t_deltas.tolist(), t_logits.tolist()):
        probs = [math.exp(v) for v in log_softmax(logits)][:num_classes]
        c = max(range(num_classes), key=probs.__getitem__)
        if len(s) != 4:
            s, t = s[4 * c:4 * c + 4], t[4 * c:4 * c + 4]
        numerator += probs[c] * sum(abs(a - b) for a, b in zip(s, t))
        denominator += 4 * probs[c]
    return numerator / denominator


def per_2_images(per_image: List[List[float]]) -> float:
    """The authors' RoI KL: summed over each GPU's 2 images, then averaged over GPUs by DDP."""
    sums = [sum(per_image[i]) + sum(per_image[i + 1]) for i in range(0, len(per_image), 2)]
    return sum(sums) / len(sums)


# The RoI KL reduced as each MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION says, from per-image lists of per-RoI KL.
REDUCE = {
    "sum_per_2_images": per_2_images,
    "sum": lambda per_image: sum(map(sum, per_image)),
    "mean": lambda per_image: sum(map(sum, per_image)) / sum(map(len, per_image)),
}


# --------------------------------------------------------------------------------------------------
# Explicit stream
# --------------------------------------------------------------------------------------------------
IMAGE_SIZE = (76, 52)
LEVEL_SIZES = [(19, 13), (10, 7), (5, 4), (3, 2)]
BOXES = [
    torch.tensor([[3.0, 4.0, 30.5, 20.0], [10.0, 12.0, 40.0, 60.0], [0.0, 0.0, 52.0, 76.0]]),
    torch.zeros(0, 4),
    torch.tensor([[20.0, 30.0, 28.0, 38.0], [22.5, 33.0, 27.0, 75.9]]),
]


def random_levels(seed: int, channels: int = 4) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(len(BOXES), channels, h, w, generator=generator) for h, w in LEVEL_SIZES]


def test_haar_bands_match_pytorch_wavelets():
    x = torch.randn(2, 3, 9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, high = dwt(x)
    ref_low, (ref_high,) = HAAR(x)  # its filters are float32 values of 1/sqrt(2)
    assert high.shape == (2, 3, 3, 5, 3)
    torch.testing.assert_close(low, ref_low, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(high, ref_high, rtol=1e-6, atol=1e-7)


def test_explicit_loss_matches_authors():
    students, teachers = random_levels(0), random_levels(1)
    low, high = explicit_loss(students, teachers, BOXES, IMAGE_SIZE)
    expected_low, expected_high = authors_explicit(students, teachers, BOXES, IMAGE_SIZE)
    close(low, expected_low)
    close(high, expected_high)
    # The DISW weights matter here: the unweighted loss is far off.
    unweighted_low, _ = authors_explicit(students, teachers, [torch.zeros(0, 4)] * len(BOXES), IMAGE_SIZE)
    assert abs(unweighted_low - expected_low) > 1e-3 * expected_low


def test_explicit_loss_is_a_mean_over_the_batch():
    students, teachers = random_levels(2), random_levels(3)
    once = explicit_loss(students, teachers, BOXES, IMAGE_SIZE)
    twice = explicit_loss([torch.cat([x, x]) for x in students], [torch.cat([x, x]) for x in teachers],
                          BOXES + BOXES, IMAGE_SIZE)
    for a, b in zip(once, twice):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------------
# RetinaNet KD
# --------------------------------------------------------------------------------------------------
def test_dense_kd_functions_match_authors():
    generator = torch.Generator().manual_seed(0)
    n, k = 40, 3

    def rand(*shape, normal=True):
        sample = torch.randn if normal else torch.rand
        return sample(*shape, generator=generator, dtype=torch.float64)

    s_logits, t_logits = rand(1, n, k) * 3, rand(1, n, k) * 3
    s_deltas, t_deltas = rand(1, n, 4) * 0.3, rand(1, n, 4) * 0.3
    xy = rand(n, 2, normal=False) * 50
    anchors = torch.cat([xy, xy + 4 + rand(n, 2, normal=False) * 30], dim=1)
    labels = torch.randint(-1, k + 1, (1, n), generator=generator)  # -1 ignored, k background
    assert (labels == -1).any() and ((labels >= 0) & (labels < k)).any()
    cls, box, _ = authors_dense_kd(s_logits, t_logits, s_deltas, t_deltas, anchors, labels, k)

    num_pos = ((labels >= 0) & (labels != k)).sum()
    close(dense_cls_kd(s_logits[0], t_logits[0], labels[0] >= 0, num_pos), cls)
    s_boxes = torch.tensor([decode(d, a) for d, a in zip(s_deltas[0].tolist(), anchors.tolist())])
    t_boxes = torch.tensor([decode(d, a) for d, a in zip(t_deltas[0].tolist(), anchors.tolist())])
    weight = t_logits[0].max(dim=1).values.sigmoid()  # every anchor, ignored ones included
    close(dense_box_kd(s_boxes, t_boxes, weight, num_pos), box)


def dense_predictions(head, feats: List[torch.Tensor], num_classes: int):
    """The head's outputs flattened in Detectron2's anchor order: per level [B, A*K, H, W] -> [B, H*W*A, K],
    levels concatenated; float64."""
    with torch.no_grad():
        logits, deltas = head(feats)

    def flatten(levels, k):
        flat = []
        for x in levels:
            b, ak, h, w = x.shape
            flat.append(x.view(b, ak // k, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * (ak // k), k))
        return torch.cat(flat, dim=1).double()

    return flatten(logits, num_classes), flatten(deltas, 4)


def authors_dense_family(head, s_feats, t_feats, targets: Dict, num_classes: int):
    s_logits, s_deltas = dense_predictions(head, s_feats, num_classes)
    t_logits, t_deltas = dense_predictions(head, t_feats, num_classes)
    labels = targets.gt_labels
    return authors_dense_kd(s_logits, t_logits, s_deltas, t_deltas, targets.anchors, labels, num_classes)


def sharpen(roi_heads) -> None:
    """Scale a random box classifier's logits so that its class distributions are far from uniform: the
    RoI KL is then well above float32 rounding (ours computes in float32)."""
    with torch.no_grad():
        roi_heads.box_predictor.cls_score.weight.mul_(20)


@pytest.fixture(scope="module")
def detectors():
    """``detectors(name)``: (student, teacher), two tiny random detectors of one kind, in training mode."""
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            student, teacher = build_model(tiny_cfg(name)).train(), build_model(tiny_cfg(name)).train()
            if name == "GeneralizedRCNN":
                sharpen(teacher.roi_heads)
            cache[name] = student, teacher
        return cache[name]

    return get


def family_inputs(family, student, teacher, num_images: int):
    """Student and teacher head features of a random batch, and the student's own targets."""
    torch.manual_seed(0)
    batch = random_batch(num_images, size=64)
    with torch.no_grad(), EventStorage():
        images = student.preprocess_image(batch)
        s_feats = student.backbone(images.tensor)
        t_feats = teacher.backbone(teacher.preprocess_image(batch).tensor)
        _, targets, _ = family.detection_losses(images, s_feats, [x["instances"] for x in batch])
    names = family.levels
    return [s_feats[f] for f in names], [t_feats[f] for f in names], targets


def implicit_kd(kd: ImplicitKD, family, head, s_feats, t_feats, targets):
    """DS2D2's implicit KD of ``head`` on the listed features of ``family.levels`` at ``targets``."""
    s_preds, t_preds = (family.predict(head, dict(zip(family.levels, x)), targets)
                        for x in (s_feats, t_feats))
    return kd(family, s_preds, t_preds, targets)


def test_dense_family_matches_authors(detectors):
    student, teacher = detectors("RetinaNet")
    family = RetinaNetFamily(student)
    s_feats, t_feats, targets = family_inputs(family, student, teacher, num_images=2)
    labels, k = targets.gt_labels, student.num_classes
    assert (labels == -1).any() and ((labels >= 0) & (labels < k)).any()

    with torch.no_grad():
        kd = ImplicitKD(1.0, TEMPERATURE, ROI_CLS_WEIGHT, "mean")
        ours = implicit_kd(kd, family, teacher.head, s_feats, t_feats, targets)
    cls, box, box_ignored = authors_dense_family(teacher.head, s_feats, t_feats, targets, k)
    close(ours, cls + box)
    assert box_ignored > 1e-3 * (cls + box)  # dropping the ignored anchors' box KD would fail the check


# --------------------------------------------------------------------------------------------------
# Faster R-CNN KD
# --------------------------------------------------------------------------------------------------
def random_logits(rois: int, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rois, classes, generator=generator, dtype=torch.float64) * 4 for _ in range(2)]


def roi_cls(s, t, reduction: str, num_images: int):
    return roi_cls_kd(s, t, TEMPERATURE, roi_cls_divisor(reduction, s.shape[0], num_images))


def test_roi_cls_kd_two_images_is_the_authors_per_gpu_sum():
    s, t = random_logits(16)
    close(roi_cls(s, t, "sum_per_2_images", num_images=2), sum(roi_kl(s, t)))


def test_roi_cls_kd_four_images_is_ddp_over_two_gpus_of_two_images():
    s, t = random_logits(32)
    expected = (sum(roi_kl(s[:16], t[:16])) + sum(roi_kl(s[16:], t[16:]))) / 2
    close(roi_cls(s, t, "sum_per_2_images", num_images=4), expected)


def test_roi_cls_reductions():
    s, t = random_logits(24)
    total = sum(roi_kl(s, t))
    close(roi_cls(s, t, "sum", num_images=4), total)
    close(roi_cls(s, t, "mean", num_images=4), total / 24)
    doubled = torch.cat([s, s]), torch.cat([t, t])
    for reduction, factor in [("sum", 2), ("sum_per_2_images", 2), ("mean", 1)]:
        torch.testing.assert_close(roi_cls(*doubled, reduction, 4), factor * roi_cls(s, t, reduction, 4),
                                   rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION"):
        roi_cls_divisor("average", 24, 4)


@pytest.mark.parametrize("class_specific", [True, False], ids=["class-specific", "class-agnostic"])
def test_roi_box_kd_matches_authors(class_specific):
    s_logits, t_logits = random_logits(20)
    generator = torch.Generator().manual_seed(1)
    width = 4 * (t_logits.shape[1] - 1) if class_specific else 4
    s_deltas, t_deltas = (torch.randn(20, width, generator=generator, dtype=torch.float64) for _ in range(2))
    close(roi_box_kd(s_deltas, t_deltas, t_logits), authors_roi_box(s_deltas, t_deltas, t_logits))


def authors_roi_family(head, s_feats, t_feats, rois, reduction: str) -> float:
    """ROI_CLS_WEIGHT * (RoI KL reduced per ``reduction``) + box KD, on the given RoIs of each image."""
    with torch.no_grad():
        s_logits, s_deltas = head.box_predictor(head.box_head(head.box_pooler(s_feats, rois)))
        t_logits, t_deltas = head.box_predictor(head.box_head(head.box_pooler(t_feats, rois)))
    kl = roi_kl(s_logits.double(), t_logits.double())
    starts = [0, *torch.tensor([len(r) for r in rois]).cumsum(0).tolist()]
    per_image = [kl[a:b] for a, b in zip(starts, starts[1:])]
    box = authors_roi_box(s_deltas.double(), t_deltas.double(), t_logits.double())
    return ROI_CLS_WEIGHT * REDUCE[reduction](per_image) + box


@pytest.mark.parametrize(
    "num_images,reduction",
    [(2, "sum_per_2_images"), (4, "sum_per_2_images"), (4, "sum"), (2, "mean")],
    ids=["2-images-sum-per-2", "4-images-sum-per-2", "4-images-sum", "2-images-mean"],
)
def test_roi_family_matches_authors(detectors, num_images, reduction):
    student, teacher = detectors("GeneralizedRCNN")
    family = RCNNFamily(student)
    s_feats, t_feats, targets = family_inputs(family, student, teacher, num_images)
    assert targets.num_images == len(targets.rois) == num_images
    head = teacher.roi_heads
    with torch.no_grad():
        ours = implicit_kd(ImplicitKD(1.0, TEMPERATURE, ROI_CLS_WEIGHT, reduction), family, head, s_feats,
                           t_feats, targets)
    close(ours, authors_roi_family(head, s_feats, t_feats, targets.rois, reduction))


# --------------------------------------------------------------------------------------------------
# Distiller, end to end: loss_ds2d2_im_full = l3 * the family term at the student's own targets
# --------------------------------------------------------------------------------------------------
IMPLICIT_FULL = 0.25


@pytest.mark.parametrize("detector", ["RetinaNet", "GeneralizedRCNN"])
def test_distiller_full_amplifier_term_matches_authors(tmp_path, monkeypatch, detector):
    torch.manual_seed(0)
    cfg = tiny_stages(tmp_path, detector, student_opts=["MODEL.DS2D2.LOSS.IMPLICIT_FULL", IMPLICIT_FULL])
    model = build_model(cfg).train()
    # student FPN 32 wide, teacher 64: the heads see the adapted features
    assert model.terms["DS2D2Implicit"].adapted_input
    if detector == "GeneralizedRCNN":
        sharpen(model.teacher.roi_heads)

    seen = {}
    detection_losses = model.student_family.detection_losses

    def spy(*args):
        seen["losses"], seen["targets"], predictions = detection_losses(*args)
        return seen["losses"], seen["targets"], predictions

    monkeypatch.setattr(model.student_family, "detection_losses", spy)
    for name, part in (("student", model.student.backbone), ("teacher", model.teacher.backbone)):
        part.register_forward_hook(lambda module, inputs, output, name=name: seen.__setitem__(name, output))
    with EventStorage():
        losses = model(random_batch(2, size=64))

    names = model.teacher_family.levels
    with torch.no_grad():
        s_feats = [model.adapters[f](seen["student"][f]) for f in names]
    t_feats = [seen["teacher"][f] for f in names]
    head = model.teacher_family.head
    if detector == "RetinaNet":
        num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
        cls, box, _ = authors_dense_family(head, s_feats, t_feats, seen["targets"], num_classes)
        expected = cls + box
    else:
        expected = authors_roi_family(head, s_feats, t_feats, seen["targets"].rois, "sum_per_2_images")
    close(losses["loss_ds2d2_im_full"].detach(), IMPLICIT_FULL * expected)
