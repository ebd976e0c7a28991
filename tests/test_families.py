"""Detector families (ds2d2.families) against Detectron2's own calls on tiny random detectors: the losses and
targets of the detector's own training step, the head's predictions at given targets, the targets computed
without losses (a teacher's: its matcher, its own proposals), and a head run on fewer levels than its own."""
import copy
from typing import Dict, List

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from conftest import random_batch, tiny_cfg
from ds2d2.families import AnchorTargets, RCNNFamily, RetinaNetFamily, RoITargets, family_for

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def detectors():
    """``detectors(name)``: a tiny random detector of that kind, in training mode, built once."""
    cache = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_model(tiny_cfg(name)).train()
        return cache[name]

    return get


def inputs(detector: nn.Module, seed: int = 0):
    batch = random_batch(2, size=64, seed=seed)
    images = detector.preprocess_image(batch)
    return batch, images, detector.backbone(images.tensor), [x["instances"] for x in batch]


def flat(levels: List[Tensor], dim: int) -> Tensor:
    return torch.cat([permute_to_N_HWA_K(x, dim) for x in levels], dim=1).flatten(0, 1)


def test_retinanet_losses_targets_and_predictions_are_detectron2s(detectors):
    detector = detectors("RetinaNet")
    family = family_for(detector)
    assert isinstance(family, RetinaNetFamily) and family.kind == "RetinaNet"
    assert family.levels == ["p3", "p4", "p5", "p6", "p7"] and family.num_classes == 3
    batch, images, feats, gt = inputs(detector)
    twin = copy.deepcopy(detector)  # its loss normaliser is a running average that each loss call updates
    with torch.no_grad(), EventStorage():
        losses, targets, predictions = family.detection_losses(images, feats, gt)
        expected_losses = twin(batch)
        levels = [feats[f] for f in family.levels]
        anchors = detector.anchor_generator(levels)
        labels, _ = detector.label_anchors(anchors, gt)
        logits, deltas = detector.head(levels)
    assert losses.keys() == expected_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], expected_losses[key])
    assert isinstance(targets, AnchorTargets)
    assert torch.equal(targets.gt_labels, torch.stack(labels))
    assert torch.equal(targets.anchors, Boxes.cat(anchors).tensor)
    assert int(targets.num_pos) == int(((targets.gt_labels >= 0) & (targets.gt_labels < 3)).sum()) > 0
    assert torch.equal(predictions.class_logits, flat(logits, 3))
    assert torch.equal(predictions.box_deltas, flat(deltas, 4))
    with torch.no_grad():
        again = family.predict(detector.head, feats, family.kd_targets(images, feats, gt))
    assert torch.equal(again.class_logits, predictions.class_logits)
    boxes = family.decode_boxes(predictions.box_deltas, targets)
    anchors = targets.anchors.repeat(2, 1)
    assert torch.equal(boxes, detector.box2box_transform.apply_deltas(predictions.box_deltas, anchors))


def test_retinanet_head_on_its_first_levels_is_those_rows_of_the_full_head(detectors):
    detector = detectors("RetinaNet")
    full, fewer = family_for(detector), family_for(detector, ["p3", "p4", "p5", "p6"])
    _, images, feats, gt = inputs(detector)
    with torch.no_grad():
        all_targets, targets = full.kd_targets(images, feats, gt), fewer.kd_targets(images, feats, gt)
        all_rows = full.predict(detector.head, feats, all_targets)
        rows = fewer.predict(detector.head, feats, targets)
    kept = targets.anchors.shape[0]  # the anchors of p3-p6 come first in each image
    assert kept == sum(feats[f].shape[-2] * feats[f].shape[-1] * 9 for f in fewer.levels)
    assert torch.equal(targets.anchors, all_targets.anchors[:kept])
    assert torch.equal(targets.gt_labels, all_targets.gt_labels[:, :kept])
    per_image = all_rows.class_logits.view(2, -1, 3)[:, :kept].flatten(0, 1)
    torch.testing.assert_close(rows.class_logits, per_image, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"first of its levels .* got \['p4', 'p5'\]"):
        RetinaNetFamily(detector, ["p4", "p5"])


def test_rcnn_losses_targets_and_predictions_are_detectron2s(detectors):
    detector = detectors("GeneralizedRCNN")
    family = family_for(detector)
    assert isinstance(family, RCNNFamily) and family.levels == ["p2", "p3", "p4", "p5"]
    batch, images, feats, gt = inputs(detector)
    with torch.no_grad(), EventStorage():
        torch.manual_seed(3)
        losses, targets, predictions = family.detection_losses(images, feats, gt)
        torch.manual_seed(3)
        expected = detector(batch)  # the same proposals and the same sample (same RNG state)
    assert losses.keys() == expected.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key])
    assert isinstance(targets, RoITargets) and targets.num_images == 2
    heads = detector.roi_heads
    with torch.no_grad():
        pooled = heads.box_pooler([feats[f] for f in family.levels], targets.rois)
        scores, deltas = heads.box_predictor(heads.box_head(pooled))
        copies = {f: x.clone() for f, x in feats.items()}  # other tensors: pooled again, not reused
        again = family.predict(heads, copies, targets)
    assert torch.equal(predictions.class_logits, scores) and torch.equal(again.class_logits, scores)
    assert torch.equal(again.box_deltas, deltas)


def test_rcnn_teacher_targets_are_its_proposals_sampled_against_the_ground_truth(detectors):
    detector = detectors("GeneralizedRCNN").eval()  # a frozen teacher: test-time proposals
    try:
        family = family_for(detector)
        _, images, feats, gt = inputs(detector, seed=1)
        with torch.no_grad(), EventStorage():
            proposals, _ = detector.proposal_generator(images, feats, None)
            torch.manual_seed(5)
            targets = family.kd_targets(images, feats, gt)
    finally:
        detector.train()
    per_image = detector.roi_heads.batch_size_per_image
    for rois, props, truth in zip(targets.rois, proposals, gt):
        assert 0 < len(rois) <= per_image
        candidates = Boxes.cat([props.proposal_boxes, truth.gt_boxes])
        best = pairwise_iou(rois, candidates).max(dim=1).values  # each RoI is a proposal or a GT box
        torch.testing.assert_close(best, torch.ones_like(best))


def test_rcnn_pooler_on_fewer_levels_is_a_pooler_built_for_them(detectors):
    detector = detectors("GeneralizedRCNN")
    family = RCNNFamily(detector, ["p3", "p4", "p5"])
    own, box_head = detector.roi_heads.box_pooler, tiny_cfg("GeneralizedRCNN").MODEL.ROI_BOX_HEAD
    independent = ROIPooler(own.output_size, (1 / 8, 1 / 16, 1 / 32), box_head.POOLER_SAMPLING_RATIO,
                            box_head.POOLER_TYPE)
    _, _, feats, gt = inputs(detector)
    rois = [Boxes(torch.cat([g.gt_boxes.tensor, g.gt_boxes.tensor * 0.25])) for g in gt]  # some tiny RoIs
    levels: Dict[str, Tensor] = {f: feats[f] for f in family.levels}
    with torch.no_grad():
        ours = family.pooler(list(levels.values()), rois)
        expected = independent(list(levels.values()), rois)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert own.min_level == 2 and family.pooler.min_level == 3  # the teacher's own pooler is untouched
    with pytest.raises(ValueError, match="consecutive levels"):
        RCNNFamily(detector, ["p2", "p4"])


def test_other_detectors_are_refused_by_name():
    with pytest.raises(ValueError, match="builds a Linear.*ds2d2/families/"):
        family_for(nn.Linear(2, 2))
