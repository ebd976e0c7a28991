"""The authors' DOTA metric (COCO AP on the val patches, at most 100 detections per patch) from the shipped
DOTA configs with two documented overrides, next to this project's default (1000 per patch + Task 2)."""
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from ds2d2.config import load_config
from ds2d2.engine import build_evaluators
from ds2d2.evaluation.dota import DOTAFullImageEvaluator

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
AUTHORS_DOTA_METRIC = ["TEST.DETECTIONS_PER_IMAGE", "100", "TEST.DOTA_FULL_IMAGES", "False"]  # docs/method.md
DETECTORS = ["faster_rcnn_R18.yaml", "retinanet_R18.yaml"]


def register_patches(name: str, root: Path, has_labels: bool) -> None:
    """A one-patch DOTA patch set under ``name``, with the metadata ``register_dota`` gives."""
    record = {"file_name": str(root / "P0000__1024__0___0.png"), "image_id": 0, "height": 1024, "width": 1024}
    if has_labels:
        record["annotations"] = [{"bbox": [10, 10, 50, 40], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(
        thing_classes=["plane", "ship"], evaluator_type="dota_patches", dota_root=str(root),
        has_labels=has_labels,
    )


def detections_per_image(model) -> int:
    """The test-time cap on detections per image of a built Faster R-CNN or RetinaNet."""
    if hasattr(model, "roi_heads"):
        return model.roi_heads.box_predictor.test_topk_per_image
    return model.max_detections_per_image


@pytest.mark.parametrize("config", DETECTORS)
def test_default_dota_evaluation_is_patch_ap_plus_task2(config, catalog, tmp_path):
    cfg = load_config(str(CONFIGS / "DOTA" / config), register=False)
    register_patches("patches_val", tmp_path, has_labels=True)
    evaluators = build_evaluators(cfg, "patches_val", str(tmp_path / "out"))._evaluators
    assert [type(e) for e in evaluators] == [COCOEvaluator, DOTAFullImageEvaluator]
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1000


@pytest.mark.parametrize("config", DETECTORS)
def test_authors_dota_metric_is_patch_ap_at_100_detections(config, catalog, tmp_path):
    cfg = load_config(str(CONFIGS / "DOTA" / config), AUTHORS_DOTA_METRIC, register=False)
    register_patches("patches_val", tmp_path, has_labels=True)
    evaluators = build_evaluators(cfg, "patches_val", str(tmp_path / "out"))._evaluators
    assert [type(e) for e in evaluators] == [COCOEvaluator]
    assert evaluators[0]._max_dets_per_image == [1, 10, 100]  # COCO AP counts up to 100 per patch
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    assert detections_per_image(build_model(cfg)) == 100  # and the model returns at most 100


def test_patch_ap_alone_on_an_unlabelled_split_is_refused(catalog, tmp_path):
    cfg = load_config(str(CONFIGS / "DOTA" / DETECTORS[0]), AUTHORS_DOTA_METRIC, register=False)
    register_patches("patches_test", tmp_path, has_labels=False)
    with pytest.raises(ValueError, match="TEST.DOTA_FULL_IMAGES"):
        build_evaluators(cfg, "patches_test", str(tmp_path / "out"))
    cfg.TEST.DOTA_FULL_IMAGES = True
    evaluators = build_evaluators(cfg, "patches_test", str(tmp_path / "out"))._evaluators
    assert [type(e) for e in evaluators] == [DOTAFullImageEvaluator]  # writes the submission files
