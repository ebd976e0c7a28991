"""ds2d2.rotated: rotated IoU against Shapely polygons, NMS against a greedy Shapely reference,
ROIAlignRotated against torchvision's roi_align (angle 0, and 90 degrees on the rotated image) and a
per-sample loop of Detectron2's definition; and Detectron2's own rotated calls after ``import ds2d2``."""
import csv
import math
from typing import List

import pytest
import torch
from shapely import affinity
from shapely.geometry import Polygon, box
from torchvision.ops import roi_align

import ds2d2  # noqa: F401  (installs the rotated ops into detectron2 where it has no compiled ops)
from ds2d2.compat import detectron2_has_compiled_ops
from ds2d2.rotated import batched_nms_rotated, nms_rotated, pairwise_iou_rotated, roi_align_rotated
from ds2d2.rotated import ops

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


def polygon(rotated_box) -> Polygon:
    """Shapely polygon of (cx, cy, w, h, angle): Detectron2's angle is counter-clockwise in the image, whose y
    points down, i.e. clockwise in Shapely's y-up convention."""
    cx, cy, w, h, angle = (float(v) for v in rotated_box)
    rectangle = box(-w / 2, -h / 2, w / 2, h / 2)
    return affinity.translate(affinity.rotate(rectangle, -angle, origin=(0, 0)), cx, cy)


def shapely_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """[N, M] IoU in float64 by Shapely; 0 when a box has area w * h < 1e-14 (Detectron2's rule)."""
    out = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    polygons2 = [polygon(b) for b in boxes2.tolist()]
    for i, b1 in enumerate(boxes1.tolist()):
        p1 = polygon(b1)
        for j, (b2, p2) in enumerate(zip(boxes2.tolist(), polygons2)):
            if b1[2] * b1[3] < 1e-14 or b2[2] * b2[3] < 1e-14:
                continue
            inter = p1.intersection(p2).area
            out[i, j] = inter / (p1.area + p2.area - inter)
    return out


def random_boxes(num: int, generator: torch.Generator, span: float = 60.0) -> torch.Tensor:
    """[num, 5] boxes crowded in a span x span square (many overlaps), sides 1-30, angles in [-720, 720)."""
    centers = torch.rand(num, 2, generator=generator, dtype=torch.float64) * span
    sizes = torch.rand(num, 2, generator=generator, dtype=torch.float64) * 29 + 1
    angles = torch.rand(num, 1, generator=generator, dtype=torch.float64) * 1440 - 720
    return torch.cat([centers, sizes, angles], 1)


def test_angle_is_counter_clockwise_in_the_image():
    bar = torch.tensor([[0.0, 0.0, 10.0, 1.0, 30.0]])  # its right end turned up (towards negative y)
    up, down = torch.tensor([[2.6, -1.5, 0.1, 0.1, 0.0]]), torch.tensor([[2.6, 1.5, 0.1, 0.1, 0.0]])
    assert pairwise_iou_rotated(bar, up).item() > 0 and pairwise_iou_rotated(bar, down).item() == 0
    tall = torch.tensor([[5.0, 7.0, 2.0, 6.0, 0.0]])
    assert pairwise_iou_rotated(torch.tensor([[5.0, 7.0, 6.0, 2.0, 90.0]]), tall).item() == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_iou_matches_shapely_on_random_pairs(device):
    generator = torch.Generator().manual_seed(0)
    boxes1, boxes2 = random_boxes(30, generator, span=40), random_boxes(40, generator, span=40)
    expected = shapely_iou(boxes1, boxes2)
    assert (expected > 0).sum() > 400  # of the 1200 pairs: the test exercises the polygon code
    ours = pairwise_iou_rotated(boxes1.float().to(device), boxes2.float().to(device)).cpu()
    assert ours.dtype == torch.float32 and ours.shape == (30, 40)
    assert (ours.double() - expected).abs().max() <= 1e-4
    ours64 = pairwise_iou_rotated(boxes1.to(device), boxes2.to(device)).cpu()
    assert ours64.dtype == torch.float64 and (ours64 - expected).abs().max() <= 1e-9


SPECIAL_CASES = {
    "identical": ([10, 10, 8, 4, 33], [10, 10, 8, 4, 33]),
    "identical, turned 180": ([10, 10, 8, 4, 33], [10, 10, 8, 4, 213]),
    "square turned 90": ([0, 0, 5, 5, 10], [0, 0, 5, 5, 100]),
    "angles past +-180": ([3, 4, 6, 2, 200], [3, 4, 6, 2, -160]),
    "angles far past 360": ([3, 4, 6, 2, 725], [3.5, 4, 6, 2, -355]),
    "disjoint": ([0, 0, 4, 4, 0], [10, 0, 4, 4, 45]),
    "contained": ([0, 0, 20, 10, 15], [1, 1, 2, 3, 70]),
    "contained, sharing an edge": ([0, 0, 20, 10, 0], [8, 0, 4, 10, 0]),
    "touching along an edge": ([0, 0, 4, 4, 0], [4, 1, 4, 4, 0]),
    "touching at a corner": ([0, 0, 4, 4, 0], [4, 4, 4, 4, 0]),
    "touching a corner to an edge": ([0, 0, 4, 4, 0], [2 + math.sqrt(2), 0, 2, 2, 45]),
    "parallel edges, shifted": ([0, 0, 10, 4, 30], [2, 1, 10, 4, 30]),
    "parallel edges, opposite direction": ([0, 0, 10, 4, 30], [2, 1, 10, 4, 210]),
    "nearly parallel": ([0, 0, 10, 4, 30], [0.5, 0.2, 10, 4, 30.0001]),
    "nearly parallel, crossing": ([0, 0, 100, 1, 0], [0, 0.5, 100, 1, 0.01]),
    "cross": ([0, 0, 20, 2, 0], [0, 0, 20, 2, 90]),
    "star of David-like": ([0, 0, 6, 6, 0], [0, 0, 6, 6, 45]),
    "tiny, far from the origin": ([1000.0, 2000.0, 1e-3, 2e-3, 17], [1000.0002, 2000.0, 1e-3, 2e-3, 40]),
    "huge": ([0, 0, 1e4, 5e3, 10], [1e3, -5e2, 8e3, 6e3, -25]),
    "huge and tiny": ([0, 0, 1e4, 1e4, 0], [10, 10, 0.5, 0.5, 45]),
    "thin": ([0, 0, 100, 0.01, 5], [0, 0, 100, 0.01, 6]),
}


@pytest.mark.parametrize("case", list(SPECIAL_CASES))
def test_iou_special_cases_match_shapely(case):
    first, second = (torch.tensor([b], dtype=torch.float32) for b in SPECIAL_CASES[case])
    expected = shapely_iou(first.double(), second.double()).item()  # of the float32 boxes the op is given
    ours = pairwise_iou_rotated(first.float(), second.float()).item()
    assert abs(ours - expected) <= 1e-4, (case, ours, expected)
    assert abs(pairwise_iou_rotated(second.float(), first.float()).item() - expected) <= 1e-4


def test_zero_area_boxes_have_iou_zero_and_empty_inputs_give_empty_matrices():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 4.0, 4.0, 0.0], [0.0, 0.0, 1e-8, 1e-8, 0.0]])
    iou = pairwise_iou_rotated(boxes, boxes)
    assert iou[1, 1] == pytest.approx(1.0) and iou.sum() == pytest.approx(1.0)
    assert pairwise_iou_rotated(torch.zeros(0, 5), boxes).shape == (0, 3)
    assert pairwise_iou_rotated(boxes, torch.zeros(0, 5)).shape == (3, 0)
    with pytest.raises(ValueError, match=r"boxes2 must be \[N, 5\]"):
        pairwise_iou_rotated(boxes, boxes[:, :4])


def test_chunked_screening_and_evaluation_give_the_same_iou(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    boxes1, boxes2 = random_boxes(40, generator, span=200), random_boxes(50, generator, span=200)
    whole = pairwise_iou_rotated(boxes1.float(), boxes2.float())
    monkeypatch.setattr(ops, "SCREEN_BUDGET", 64)  # one row of 50 columns per screen
    monkeypatch.setattr(ops, "PAIR_CHUNK", {"cpu": 7, "cuda": 7})
    assert torch.equal(pairwise_iou_rotated(boxes1.float(), boxes2.float()), whole)
    assert (whole.double() - shapely_iou(boxes1, boxes2)).abs().max() <= 1e-4


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, threshold: float
               ) -> List[int]:
    """Textbook greedy NMS on Shapely IoU: best score first (ties: lower index), drop later boxes of the same
    class whose IoU with it is > threshold."""
    order = sorted(range(len(boxes)), key=lambda k: (-float(scores[k]), k))
    iou = shapely_iou(boxes, boxes)
    kept, removed = [], set()
    for position, i in enumerate(order):
        if i in removed:
            continue
        kept.append(i)
        removed.update(j for j in order[position + 1:] if classes[j] == classes[i] and iou[i, j] > threshold)
    return kept


def clustered_boxes(generator: torch.Generator, objects: int = 12, per_object: int = 10) -> torch.Tensor:
    """Detections as a detector gives them: jittered copies around a few objects (float64 [N, 5])."""
    boxes = random_boxes(objects, generator, span=120).repeat_interleave(per_object, 0)
    jitter = torch.randn(len(boxes), 5, generator=generator, dtype=torch.float64)
    centers, sides = boxes[:, :2] + jitter[:, :2] * 1.5, boxes[:, 2:4] * torch.exp(jitter[:, 2:4] * 0.15)
    return torch.cat([centers, sides, boxes[:, 4:] + jitter[:, 4:] * 8], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7])
def test_nms_equals_greedy_nms_on_shapely_iou(device, threshold):
    generator = torch.Generator().manual_seed(10)
    boxes = clustered_boxes(generator)
    scores = torch.rand(len(boxes), generator=generator)
    iou = shapely_iou(boxes, boxes)
    assert ((iou - threshold).abs() > 1e-4).all(), "a pair sits on the threshold: pick another seed"
    expected = greedy_nms(boxes, scores, torch.zeros(len(boxes)), threshold)
    assert 12 <= len(expected) < len(boxes)
    keep = nms_rotated(boxes.float().to(device), scores.to(device), threshold)
    assert keep.dtype == torch.int64 and keep.cpu().tolist() == expected


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_is_class_aware(device):
    generator = torch.Generator().manual_seed(3)
    boxes = clustered_boxes(generator)
    scores = torch.rand(len(boxes), generator=generator)
    classes = torch.randint(0, 3, (len(boxes),), generator=generator)
    expected = greedy_nms(boxes, scores, classes, 0.5)
    assert expected == sorted(expected, key=lambda k: -float(scores[k]))
    keep = batched_nms_rotated(boxes.float().to(device), scores.to(device), classes.to(device), 0.5)
    assert keep.cpu().tolist() == expected
    same = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]] * 2)
    assert batched_nms_rotated(same, torch.tensor([0.4, 0.9]), torch.tensor([0, 1]), 0.5).tolist() == [1, 0]
    assert batched_nms_rotated(same, torch.tensor([0.4, 0.9]), torch.tensor([1, 1]), 0.5).tolist() == [1]


def test_nms_ties_keep_the_lower_index_and_empty_input_gives_no_indices():
    same = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]] * 3)
    assert nms_rotated(same, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0]
    assert nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).tolist() == []
    chain = torch.tensor([[float(x), 0.0, 4.0, 4.0, 0.0] for x in range(8)])  # each overlaps the next by 3/5
    assert nms_rotated(chain, torch.linspace(1, 0.5, 8), 0.5).tolist() == [0, 2, 4, 6]


def roi_align_rotated_loop(features: torch.Tensor, rois: torch.Tensor, pooled: int, scale: float,
                           sampling_ratio: int) -> torch.Tensor:
    """Detectron2's ROIAlignRotated, one sample at a time, as its C++ documents it (aligned: half-pixel
    offset; adaptive grid ceil(size / pooled); bilinear with clamping within one pixel of the map)."""
    _, channels, height, width = features.shape
    out = torch.zeros(len(rois), channels, pooled, pooled, dtype=features.dtype)
    for r, (b, cx, cy, w, h, angle) in enumerate(rois.tolist()):
        cx, cy, w, h = cx * scale - 0.5, cy * scale - 0.5, w * scale, h * scale
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        grid_h = sampling_ratio or math.ceil(h / pooled)
        grid_w = sampling_ratio or math.ceil(w / pooled)
        for ph in range(pooled):
            for pw in range(pooled):
                total = torch.zeros(channels, dtype=features.dtype)
                for iy in range(grid_h):
                    yy = -h / 2 + ph * h / pooled + (iy + 0.5) * h / pooled / grid_h
                    for ix in range(grid_w):
                        xx = -w / 2 + pw * w / pooled + (ix + 0.5) * w / pooled / grid_w
                        y, x = yy * cos - xx * sin + cy, yy * sin + xx * cos + cx
                        if y < -1 or y > height or x < -1 or x > width:
                            continue
                        y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
                        y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
                        y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                        ly, lx = y - y0, x - x0
                        image = features[int(b)]
                        total += ((1 - ly) * (1 - lx) * image[:, y0, x0] + (1 - ly) * lx * image[:, y0, x1]
                                  + ly * (1 - lx) * image[:, y1, x0] + ly * lx * image[:, y1, x1])
                out[r, :, ph, pw] = total / max(grid_h * grid_w, 1)
    return out


def random_rois(num: int, generator: torch.Generator, angle_range: float) -> torch.Tensor:
    """[num, 6] rois over a 2-image batch of 40 x 50 px: some reaching past the border, sides >= 2 px."""
    image = torch.randint(0, 2, (num, 1), generator=generator).double()
    centers = torch.rand(num, 2, generator=generator, dtype=torch.float64) * torch.tensor([50.0, 40.0])
    sizes = torch.rand(num, 2, generator=generator, dtype=torch.float64) * 30 + 2
    angles = (torch.rand(num, 1, generator=generator, dtype=torch.float64) * 2 - 1) * angle_range
    return torch.cat([image, centers, sizes, angles], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
def test_roi_align_rotated_at_angle_zero_equals_torchvision(device, aligned, sampling_ratio):
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 20, 25, generator=generator).to(device)
    rois = random_rois(12, generator, 0.0).float().to(device)
    corners = torch.cat([rois[:, :1], rois[:, 1:3] - rois[:, 3:5] / 2, rois[:, 1:3] + rois[:, 3:5] / 2], 1)
    expected = roi_align(features, corners, (7, 5), 0.5, sampling_ratio, aligned)
    ours = roi_align_rotated(features, rois, (7, 5), 0.5, sampling_ratio, aligned)
    assert ours.shape == (12, 3, 7, 5) and (ours - expected).abs().max() <= 1e-4  # float32 coordinates


@pytest.mark.parametrize("device", DEVICES)
def test_roi_align_rotated_at_90_degrees_equals_roi_align_on_the_rotated_image(device):
    generator = torch.Generator().manual_seed(5)
    height, width = 20, 25
    features = torch.randn(1, 3, height, width, generator=generator).to(device)
    rois = random_rois(8, generator, 0.0).float().to(device)
    rois[:, 0], rois[:, 5] = 0, 90
    # The box turned 90 degrees CCW samples I(y = cy - u, x = cx + v) at offsets (u, v) along its (w, h);
    # rot90(k=-1) gives J(y', x') = I(H - 1 - x', y'), so the same box unturned sits at (H - cy, cx) in J.
    turned = torch.rot90(features, k=-1, dims=(2, 3))
    cx, cy, w, h = height - rois[:, 2], rois[:, 1], rois[:, 3], rois[:, 4]
    corners = torch.stack([rois[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    for sampling_ratio in (0, 2):
        expected = roi_align(turned, corners, (4, 6), 1.0, sampling_ratio, aligned=True)
        ours = roi_align_rotated(features, rois, (4, 6), 1.0, sampling_ratio)
        assert (ours - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_rotated_equals_a_per_sample_loop_at_any_angle(sampling_ratio):
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(2, 2, 20, 25, generator=generator, dtype=torch.float64)
    rois = random_rois(5, generator, 400.0)
    expected = roi_align_rotated_loop(features, rois, 3, 0.5, sampling_ratio)
    ours = roi_align_rotated(features, rois, 3, 0.5, sampling_ratio)
    assert (ours - expected).abs().max() <= 1e-10


def test_roi_align_rotated_gradients_and_dtypes():
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.0, 3.0, 4.0, 3.0, 30.0], [1, 4.0, 2.5, 3.0, 5.0, -120.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_align_rotated(x, rois, 2, 1.0, 2), (features,))
    half = roi_align_rotated(features.detach().half(), rois.half(), 2, 1.0, 0)
    assert half.dtype == torch.float16 and half.shape == (2, 2, 2, 2)
    assert roi_align_rotated(features, rois[:0], (2, 3), 1.0, 0).shape == (0, 2, 2, 3)
    with pytest.raises(ValueError, match=r"rois must be \[R, 6\]"):
        roi_align_rotated(features, rois[:, 1:], 2, 1.0, 0)


needs_stub = pytest.mark.skipif(detectron2_has_compiled_ops(), reason="detectron2 keeps its compiled ops")
needs_compiled = pytest.mark.skipif(not detectron2_has_compiled_ops(),
                                    reason="detectron2 has no compiled ops")


@needs_compiled
def test_ours_match_detectron2s_compiled_ops():
    from detectron2.layers import ROIAlignRotated, batched_nms_rotated as d2_batched_nms
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated as d2_iou

    generator = torch.Generator().manual_seed(8)
    boxes = clustered_boxes(generator).float()
    scores, classes = torch.rand(len(boxes), generator=generator), torch.randint(0, 3, (len(boxes),))
    assert (pairwise_iou_rotated(boxes, boxes) - d2_iou(boxes, boxes)).abs().max() <= 1e-4
    assert batched_nms_rotated(boxes, scores, classes, 0.5).tolist() == d2_batched_nms(
        boxes, scores, classes, 0.5).tolist()
    features, rois = torch.randn(2, 3, 20, 25, generator=generator), random_rois(6, generator, 180.0).float()
    expected = ROIAlignRotated((3, 4), 0.5, 0)(features, rois)
    assert (roi_align_rotated(features, rois, (3, 4), 0.5, 0) - expected).abs().max() <= 1e-5


@needs_stub
def test_detectron2s_rotated_rcnn_trains_and_infers_after_import_ds2d2():
    """RRPN (rotated anchors, pairwise_iou_rotated, batched_nms_rotated) + RROIHeads (ROIAlignRotated)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Instances, RotatedBoxes
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone", "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.OUT_FEATURES", ["res4", "res5"],
        "MODEL.FPN.IN_FEATURES", ["res4", "res5"], "MODEL.FPN.OUT_CHANNELS", 16,
        "MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator", "MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64]],
        "MODEL.ANCHOR_GENERATOR.ANGLES", [[-60, 0, 60]], "MODEL.PROPOSAL_GENERATOR.NAME", "RRPN",
        "MODEL.RPN.IN_FEATURES", ["p4", "p5"], "MODEL.RPN.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0, 1.0),
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.ROI_HEADS.NAME", "RROIHeads", "MODEL.ROI_HEADS.IN_FEATURES", ["p4", "p5"],
        "MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", 1, "MODEL.ROI_BOX_HEAD.FC_DIM", 16,
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignRotated", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4,
        "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0, 5.0, 1.0),
    ])
    torch.manual_seed(0)
    model = build_model(cfg)
    instances = Instances((96, 128))
    instances.gt_boxes = RotatedBoxes(torch.tensor([[40.0, 50.0, 40.0, 20.0, 30.0], [90, 40, 30, 30, -45]]))
    instances.gt_classes = torch.tensor([0, 1])
    batch = [{"image": torch.rand(3, 96, 128) * 255, "instances": instances}]
    with EventStorage():
        losses = model(batch)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        result = model([{"image": batch[0]["image"]}])[0]["instances"]
    assert isinstance(result.pred_boxes, RotatedBoxes) and len(result) > 0


def test_bench_rotated_ops_tiny(tmp_path, capsys):
    """The benchmark's table on tiny settings (no timing asserted: a measurement, not a test)."""
    import importlib
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    try:
        bench = importlib.import_module("benchmarks.bench_rotated_ops")
    finally:
        sys.path.remove(root)
    bench.main(["--repeats", "1", "--nms-repeats", "1", "--samples", "50", "--image", "128", "--gt", "4",
                "--proposals", "20", "--detections", "30", "--rrpn-levels", "2", "--rrpn-per-level", "20",
                "--merge-objects", "4", "--merge-copies", "5", "--devices", "cpu",
                "--results", str(tmp_path)])
    assert "| pairwise IoU |" in capsys.readouterr().out
    with open(tmp_path / "rotated_ops.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert all(float(r["max_abs_diff"]) <= 1e-4 for r in rows if r["op"] == "pairwise IoU")
    assert all(r["same_keep"] == "True" for r in rows if r["op"] == "batched NMS")
