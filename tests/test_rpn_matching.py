"""DS2D2RPN: the RPN's low-quality matches need IoU >= MODEL.RPN.LOW_QUALITY_MIN_IOU (MMDetection's
min_pos_iou), checked against a loop over the objects; the configs that mirror the authors' turn it on."""
from pathlib import Path
from typing import List

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou

from conftest import assert_same_outputs, random_batch, tiny_cfg, tiny_stages
from ds2d2.checks import check_config
from ds2d2.config import load_config
from ds2d2.rpn import DS2D2RPN, MinIoULowQualityMatcher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IMAGE = 128  # px, square
TINY_BOX = [56.0, 56.0, 66.0, 66.0]  # 10 x 10 px: IoU 100/1024 with a 32 px anchor around it
MEDIUM_BOX = [20.0, 20.0, 44.0, 44.0]  # 24 x 24 px: IoU 576/1024 with a 32 px anchor around it
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def reference_labels(iou: torch.Tensor, min_iou: float) -> List[int]:
    """Anchor labels (1, 0, -1) from the [objects, anchors] IoU matrix, one object at a time: >= 0.7 positive,
    < 0.3 negative, else ignored; then each object's best anchors (ties included) positive if its best IoU is
    >= ``min_iou`` (MMDetection's MaxIoUAssigner with match_low_quality and min_pos_iou)."""
    rows = iou.tolist()
    labels = []
    for a in range(len(rows[0])):
        best = max(row[a] for row in rows)
        labels.append(1 if best >= 0.7 else 0 if best < 0.3 else -1)
    for row in rows:
        top = max(row)
        if top >= min_iou:
            for a, value in enumerate(row):
                if value == top:
                    labels[a] = 1
    return labels


def rpn_cfg(min_iou: float):
    """The tiny Faster R-CNN with Detectron2's anchors of 32-512 px (P2-P6) and the option at ``min_iou``."""
    return tiny_cfg(
        "GeneralizedRCNN",
        [
            "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]",
            "MODEL.RPN.LOW_QUALITY_MIN_IOU", min_iou,
        ],
    )


@pytest.fixture(scope="module")
def anchors_and_iou():
    """The RPN's anchors on a 128 px image (all levels, concatenated) and their IoU with the two boxes."""
    torch.manual_seed(0)
    rpn = build_model(rpn_cfg(0.3)).proposal_generator
    features = [torch.zeros(1, 1, IMAGE // s, IMAGE // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(features)
    boxes = Boxes(torch.tensor([TINY_BOX, MEDIUM_BOX]))
    return anchors, boxes, pairwise_iou(boxes, Boxes.cat(anchors))


def test_the_boxes_are_what_the_test_needs(anchors_and_iou):
    _, _, iou = anchors_and_iou
    best = iou.max(dim=1).values
    assert best[0] < 0.3  # the tiny box: only a low-quality match, under MMDetection's minimum
    assert 0.3 <= best[1] < 0.7  # the medium box: a low-quality match above the minimum
    assert best[0] == pytest.approx(100 / 1024) and best[1] == pytest.approx(576 / 1024)


@pytest.mark.parametrize("min_iou", [0.0, 0.3])
def test_matcher_labels_equal_a_loop_over_objects(anchors_and_iou, min_iou):
    _, _, iou = anchors_and_iou
    rpn = build_model(rpn_cfg(min_iou)).proposal_generator
    assert isinstance(rpn, DS2D2RPN) and rpn.anchor_matcher.min_iou == min_iou
    _, labels = rpn.anchor_matcher(iou)
    assert labels.tolist() == reference_labels(iou, min_iou)


def test_tiny_box_gets_a_positive_at_0_only_and_the_medium_box_at_both(anchors_and_iou):
    _, _, iou = anchors_and_iou
    tiny_best = iou[0] == iou[0].max()
    medium_best = iou[1] == iou[1].max()
    for min_iou, tiny_positive in ((0.0, True), (0.3, False)):
        _, labels = MinIoULowQualityMatcher([0.3, 0.7], [0, -1, 1], min_iou)(iou)
        assert bool((labels[tiny_best] == 1).all()) is tiny_positive
        assert (labels[medium_best] == 1).all()
        assert not (labels[~(tiny_best | medium_best)] == 1).any()  # nothing reaches 0.7


def test_rpn_training_labels_have_the_reference_positives(anchors_and_iou):
    """Through Detectron2's ``label_and_sample_anchors``: every reference positive is kept (fewer than the 128
    the sampler allows) and nothing else is positive; the sampled negatives are reference negatives."""
    anchors, boxes, iou = anchors_and_iou
    for min_iou in (0.0, 0.3):
        rpn = build_model(rpn_cfg(min_iou)).proposal_generator
        instances = Instances((IMAGE, IMAGE), gt_boxes=boxes)
        (labels,), _ = rpn.label_and_sample_anchors(anchors, [instances])
        reference = torch.tensor(reference_labels(iou, min_iou))
        assert 0 < int((reference == 1).sum()) < 128
        assert torch.equal(labels == 1, reference == 1)
        assert (reference[labels == 0] == 0).all()


def test_at_zero_it_is_detectron2s_matcher():
    """Random IoU matrices with many ties and objects without any overlap: identical matches and labels."""
    generator = torch.Generator().manual_seed(0)
    ours = MinIoULowQualityMatcher([0.3, 0.7], [0, -1, 1], 0.0)
    theirs = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    for _ in range(20):
        iou = torch.randint(0, 11, (5, 200), generator=generator).float() / 10
        iou[0] = 0.0
        for a, b in zip(ours(iou), theirs(iou)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_bad_minimum_is_named(value):
    with pytest.raises(ValueError, match="MODEL.RPN.LOW_QUALITY_MIN_IOU"):
        build_model(rpn_cfg(value))


def test_checkpoints_and_inference_are_detectron2s():
    """The same tensor names and shapes as Detectron2's RPN (checkpoints load either way), and with the same
    weights the same detections: the matcher is used in training only."""
    torch.manual_seed(0)
    ours = build_model(rpn_cfg(0.3)).eval()
    plain_cfg = rpn_cfg(0.3)
    plain_cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    plain = build_model(plain_cfg).eval()
    assert type(plain.proposal_generator) is not DS2D2RPN
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (ours, plain)]
    assert shapes[0] == shapes[1]
    plain.load_state_dict(ours.state_dict())
    batch = random_batch()
    with torch.no_grad():
        assert_same_outputs(ours(batch), plain(batch))


def faster_rcnn_configs() -> List[Path]:
    """Every shipped YAML whose detector is a Faster R-CNN (plain, amplifier or distilled student), except the
    rotated ones (Detectron2's RRPN: rotated anchors, no minimum IoU, tests/test_rotated_detectors.py)."""
    found = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.name.startswith("Base-") and path.parent == CONFIGS:
            continue
        cfg = load_config(str(path), register=False)
        arch = cfg.MODEL.META_ARCHITECTURE
        detector = cfg.MODEL.DS2D2.DETECTOR if arch in ("DS2D2Amplifier", "DS2D2Distiller") else arch
        if detector == "GeneralizedRCNN" and cfg.MODEL.PROPOSAL_GENERATOR.NAME != "RRPN":
            found.append(path)
    return found


def test_every_faster_rcnn_config_uses_the_authors_rpn_matching():
    paths = faster_rcnn_configs()
    names = {p.relative_to(CONFIGS).as_posix() for p in paths}
    # teacher, student alone, amplifier, DS2D2 student, a baseline and a deploy student of each dataset
    for expected in (
        "DIOR/faster_rcnn_R101.yaml", "DIOR/faster_rcnn_R18.yaml",
        "DIOR/ds2d2/faster_rcnn_R101_amplifier.yaml", "DIOR/ds2d2/faster_rcnn_R101_to_R18.yaml",
        "DIOR/baselines/faster_rcnn_R101_to_R18_fgd.yaml", "DIOR/faster_rcnn_R18_deploy.yaml",
        "DOTA/faster_rcnn_R101.yaml", "DOTA/ds2d2/faster_rcnn_R101_to_R18.yaml",
        "synthetic/faster_rcnn_R50_teacher.yaml", "synthetic/faster_rcnn_R50_to_R18.yaml",
        "synthetic/faster_rcnn_R18_deploy_student.yaml",
    ):
        assert expected in names
    for path in paths:
        cfg = load_config(str(path), register=False)
        assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "DS2D2RPN", path
        assert cfg.MODEL.RPN.LOW_QUALITY_MIN_IOU == 0.3, path


def test_distiller_student_and_amplifier_label_with_the_minimum(tmp_path):
    """The distiller's student (whose RPN the two-stage family runs for the detection losses) and the stage-2
    amplifier are built with the same matcher as a plain Faster R-CNN of that config."""
    cfg = tiny_stages(tmp_path, "GeneralizedRCNN")
    assert cfg.MODEL.RPN.LOW_QUALITY_MIN_IOU == 0.3
    distiller = build_model(cfg)
    opts = ["MODEL.META_ARCHITECTURE", "DS2D2Amplifier"]
    opts += ["MODEL.DS2D2.TEACHER_WEIGHTS", str(tmp_path / "teacher.pth")]
    amplifier = build_model(load_config(str(tmp_path / "teacher.yaml"), opts, register=False))
    for rpn in (distiller.student.proposal_generator, amplifier.detector.proposal_generator):
        assert isinstance(rpn, DS2D2RPN) and rpn.anchor_matcher.min_iou == 0.3


def test_min_iou_with_the_plain_rpn_is_refused_by_key():
    """A non-zero MODEL.RPN.LOW_QUALITY_MIN_IOU that Detectron2's own RPN would silently ignore is refused."""
    cfg = load_config(str(CONFIGS / "synthetic" / "faster_rcnn_R18_student.yaml"), register=False)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    message = r"MODEL\.RPN\.LOW_QUALITY_MIN_IOU is 0\.3.*PROPOSAL_GENERATOR\.NAME"
    with pytest.raises(ValueError, match=message):
        check_config(cfg, datasets=())
    cfg.MODEL.RPN.LOW_QUALITY_MIN_IOU = 0.0
    check_config(cfg, datasets=())
