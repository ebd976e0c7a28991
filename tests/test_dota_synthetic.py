"""End to end on the synthetic DOTA release: split -> register -> ground truth as detections -> merge ->
AP 1."""

import json

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from ds2d2.data.dota import DOTA_V1_CLASSES, register_dota
from ds2d2.data.dota_split import SplitSettings, split_dota
from ds2d2.data.synthetic import write_synthetic_dota
from ds2d2.evaluation.dota import DOTAFullImageEvaluator, merge_and_evaluate_coco_results

# patches of 512 px with a 128-px gap: every synthetic object (at most ~45 px at object_scale 1) lies whole in
# some patch, so nothing can be lost by the split and merged ground truth must score exactly 1
SETTINGS = SplitSettings(patch_size=512, gap=128, rates=(0.5, 1.0))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_dota")
    write_synthetic_dota(root / "raw", num_images=5, seed=0, image_size=600, object_scale=1.0)
    for split in ("train", "val", "test"):
        split_dota(root / "raw" / split, root / split, settings=SETTINGS, num_workers=2, progress=False)
    return root


def test_ground_truth_survives_split_and_merge(synthetic, catalog, tmp_path):
    register_dota("syn_dota_val", synthetic / "val")
    dicts = DatasetCatalog.get("syn_dota_val")
    assert MetadataCatalog.get("syn_dota_val").thing_classes == list(DOTA_V1_CLASSES)
    results = [
        {
            "image_id": d["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]],
            "score": 1.0,
        }
        for d in dicts
        for a in d["annotations"]
    ]
    (tmp_path / "r.json").write_text(json.dumps(results))
    labels = synthetic / "raw" / "val" / "labelTxt"
    result = merge_and_evaluate_coco_results("syn_dota_val", tmp_path / "r.json", tmp_path / "out", labels)
    present = [c for c, ap in result["AP"].items() if ap == ap]  # not NaN: the class has objects
    assert len(present) >= 3
    assert result["mAP"] == 1.0 and all(result["AP"][c] == 1.0 for c in present)
    assert len(list((tmp_path / "out").glob("Task2_*.txt"))) == len(DOTA_V1_CLASSES)


def test_test_split_gives_submission_files(synthetic, catalog, tmp_path):
    register_dota("syn_dota_test", synthetic / "test")
    assert MetadataCatalog.get("syn_dota_test").has_labels is False
    evaluator = DOTAFullImageEvaluator("syn_dota_test", str(tmp_path))
    evaluator.reset()
    for d in DatasetCatalog.get("syn_dota_test"):
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 30.0]]))
        inst.scores = torch.tensor([0.5])
        inst.pred_classes = torch.tensor([0])
        evaluator.process([d], [{"instances": inst}])
    assert evaluator.evaluate() == {}
    lines = (tmp_path / "Task2_plane.txt").read_text().splitlines()
    assert lines and all(len(line.split()) == 6 for line in lines)
