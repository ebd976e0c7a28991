"""The two rotated detectors as plain Detectron2 models: Rotated RetinaNet (ds2d2.modeling) and Rotated
Faster R-CNN (Detectron2's RRPN + RROIHeads), from the shipped configs. RotatedRetinaNet is checked against
Detectron2's RetinaNet on horizontal objects (same labels, losses and detections), its regression targets
against the rectangles' corners."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances, RotatedBoxes
from detectron2.utils.events import EventStorage

from conftest import CrashAt, load_script, tiny_stages
from ds2d2.checks import check_config
from ds2d2.config import detector_architecture, load_config
from ds2d2.data.own import register_own_datasets
from ds2d2.data.synthetic import (
    SYNTHETIC_DIOR_CLASSES,
    SYNTHETIC_DOTA_CLASSES,
    write_synthetic_dior,
    write_synthetic_dota,
)
from ds2d2.engine import Trainer
from ds2d2.modeling import RotatedRetinaNet
from ds2d2.modeling.rotated_retinanet import nearest_spelling
from ds2d2.rotated.boxes import rotated_boxes_to_polygons
from ds2d2_onnx.draw import draw_detections
from rotated_setup import CONFIGS, DETECTORS, TINY, TINY_TRAINING, register_oriented_dataset, rotated_batch, \
    tiny_config

ROTATED_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix()
    for d in ("DOTA", "DIOR-R", "synthetic") for p in (CONFIGS / d).glob("*.yaml")
    if p.name.startswith(("rotated_", "Base-RR"))
)


def corner_set(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4, 2] corners of rotated boxes, sorted so that equal rectangles give equal tensors."""
    corners = rotated_boxes_to_polygons(boxes.double()).view(-1, 4, 2)
    key = corners[..., 0] * 1e4 + corners[..., 1]
    return torch.gather(corners, 1, key.round(decimals=6).argsort(dim=1)[..., None].expand(-1, -1, 2))


def test_nearest_spelling_keeps_the_rectangle_within_45_degrees_of_the_anchor():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    boxes = torch.cat([
        torch.rand(n, 2, generator=generator) * 100, torch.rand(n, 2, generator=generator) * 50 + 1,
        torch.rand(n, 1, generator=generator) * 720 - 360,
    ], dim=1).double()
    anchor_angles = (torch.rand(n, generator=generator) * 360 - 180).double()
    spelled = nearest_spelling(boxes, anchor_angles)
    delta = spelled[:, 4] - anchor_angles
    assert ((delta >= -45) & (delta < 45)).all()
    torch.testing.assert_close(corner_set(spelled), corner_set(boxes), atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle, anchor, expected", [
    (0.0, 0.0, (8.0, 2.0, 0.0)),
    (180.0, 0.0, (8.0, 2.0, 0.0)),  # a half turn is free
    (90.0, 0.0, (2.0, 8.0, 0.0)),  # a quarter turn is a swap of the sides
    (-90.0, 90.0, (8.0, 2.0, 90.0)),
    (44.0, 0.0, (8.0, 2.0, 44.0)),
    (45.0, 0.0, (2.0, 8.0, -45.0)),  # [-45, 45): the boundary goes to -45
    (-45.0, 0.0, (8.0, 2.0, -45.0)),
    (30.0, -170.0, (8.0, 2.0, -150.0)),
])
def test_nearest_spelling_cases(angle, anchor, expected):
    box = torch.tensor([[5.0, 6.0, 8.0, 2.0, angle]])
    assert nearest_spelling(box, torch.tensor([anchor]))[0].tolist() == [5.0, 6.0, *expected]


def horizontal_twin(rotated: RotatedRetinaNet, cfg) -> RetinaNet:
    """Detectron2's RetinaNet with ``rotated``'s weights: the 4 box deltas per anchor copied, the angle's
    output of ``rotated`` zeroed (so both predict the same horizontal boxes)."""
    horizontal_cfg = cfg.clone()
    horizontal_cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.ANCHOR_GENERATOR.NAME",
                                    "DefaultAnchorGenerator", "MODEL.RETINANET.BBOX_REG_WEIGHTS", (1.0,) * 4])
    horizontal = build_model(horizontal_cfg)
    anchors = rotated.anchor_generator.num_cell_anchors[0]
    conv = rotated.head.bbox_pred
    with torch.no_grad():
        conv.weight.view(anchors, 5, *conv.weight.shape[1:])[:, 4] = 0
        conv.bias.view(anchors, 5)[:, 4] = 0
    keep = torch.tensor([a * 5 + k for a in range(anchors) for k in range(4)])
    state = {k: (v[keep] if k.startswith("head.bbox_pred") else v) for k, v in rotated.state_dict().items()}
    horizontal.load_state_dict(state)
    return horizontal


def test_rotated_retinanet_equals_detectron2s_retinanet_on_horizontal_objects():
    """Objects at angle 0, horizontal anchors: the rotated IoU labels the anchors as the horizontal one, so
    the focal and L1 losses and the detections (rotated NMS) are Detectron2's RetinaNet's."""
    torch.manual_seed(0)
    cfg = tiny_config("synthetic/Base-RRetinaNet.yaml", ["MODEL.RETINANET.NMS_THRESH_TEST", 0.5])
    rotated = build_model(cfg)
    horizontal = horizontal_twin(rotated, cfg)
    horizontal_anchors = horizontal.anchor_generator.cell_anchors
    for cells, rotated_cells in zip(horizontal_anchors, rotated.anchor_generator.cell_anchors):
        xywh = torch.cat([(cells[:, :2] + cells[:, 2:]) / 2, cells[:, 2:] - cells[:, :2]], dim=1)
        torch.testing.assert_close(rotated_cells, torch.cat([xywh, torch.zeros(len(xywh), 1)], dim=1))

    batch = rotated_batch(angles=False)
    horizontal_batch = []
    for item in batch:
        instances = Instances(item["instances"].image_size, gt_classes=item["instances"].gt_classes)
        cx, cy, w, h, _ = item["instances"].gt_boxes.tensor.unbind(1)
        instances.gt_boxes = Boxes(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1))
        horizontal_batch.append({**item, "instances": instances})
    with EventStorage():
        losses = rotated(batch)
        expected = horizontal(horizontal_batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-5, atol=1e-7)
    assert expected["loss_box_reg"] > 0

    rotated.eval()
    horizontal.eval()
    with torch.no_grad():
        ours = rotated([{"image": batch[0]["image"]}])[0]["instances"]
        theirs = horizontal([{"image": batch[0]["image"]}])[0]["instances"]
    assert isinstance(ours.pred_boxes, RotatedBoxes) and len(ours) == len(theirs) > 0
    torch.testing.assert_close(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_classes, theirs.pred_classes)
    x0, y0, x1, y1 = theirs.pred_boxes.tensor.unbind(1)
    xywha = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, torch.zeros_like(x0)], dim=1)
    torch.testing.assert_close(ours.pred_boxes.tensor, xywha, rtol=1e-5, atol=1e-4)


def test_rotated_retinanet_regresses_each_anchor_to_its_objects_nearest_spelling():
    """The box loss is the L1 distance of the predicted deltas to Box2BoxTransformRotated's deltas from each
    positive anchor to its object, written within 45 degrees of the anchor (the objects' angles turned by a
    half or quarter turn, with the sides swapped for the latter, change no loss)."""
    torch.manual_seed(0)
    model = build_model(tiny_config("synthetic/Base-RRetinaNet.yaml"))
    batch = rotated_batch(seed=3)
    respelled = []
    for item in batch:
        instances = Instances(item["instances"].image_size, gt_classes=item["instances"].gt_classes)
        cx, cy, w, h, a = item["instances"].gt_boxes.tensor.unbind(1)
        instances.gt_boxes = RotatedBoxes(torch.stack([cx, cy, h, w, a + 270], dim=1))  # the same rectangles
        respelled.append({**item, "instances": instances})
    with EventStorage():
        losses = model(batch)
        model.loss_normalizer = 100  # the EMA the first step started from
        again = model(respelled)
    for key in losses:
        torch.testing.assert_close(losses[key], again[key])

    with torch.no_grad():
        features = model.backbone(model.preprocess_image(batch).tensor)
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    labels, targets = model.label_anchors(anchors, [item["instances"] for item in batch])
    anchors = RotatedBoxes.cat(anchors).tensor
    for image_labels, image_targets, item in zip(labels, targets, batch):
        positive = (image_labels >= 0) & (image_labels < 3)
        assert positive.any()
        delta = image_targets[positive, 4] - anchors[positive, 4]
        assert ((delta >= -45) & (delta < 45)).all()
        # every positive's target is one of the objects, as a rectangle
        objects = corner_set(item["instances"].gt_boxes.tensor)
        found = corner_set(image_targets[positive])
        distance = (found[:, None] - objects[None]).abs().amax(dim=(2, 3)).amin(dim=1)
        assert distance.max() < 1e-3


@pytest.mark.parametrize("name", ["synthetic/rotated_retinanet_R18_student.yaml",
                                  "synthetic/rotated_faster_rcnn_R18_student.yaml"])
def test_rotated_detector_trains_and_predicts_rotated_boxes(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(name))
    batch = rotated_batch()
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        result = model([{"image": batch[0]["image"], "height": 128, "width": 96}])[0]["instances"]
    assert isinstance(result.pred_boxes, RotatedBoxes) and len(result) > 0
    assert result.image_size == (128, 96)  # boxes rescaled to the requested output size


@pytest.mark.parametrize("name", ROTATED_CONFIGS)
def test_shipped_rotated_configs_build_their_detector(name):
    cfg = load_config(str(CONFIGS / name), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""], register=False)
    if detector_architecture(cfg) == "RotatedRetinaNet":  # the DS2D2 stages' detector included
        assert cfg.MODEL.ANCHOR_GENERATOR.ANGLES == [[0]]
        assert len(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS) == 5
    else:
        assert detector_architecture(cfg) == "GeneralizedRCNN"
        assert (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.ROI_HEADS.NAME) == ("RRPN", "RROIHeads")
        assert cfg.MODEL.RPN.LOW_QUALITY_MIN_IOU == 0  # RRPN has no minimum (check_config refuses one)
    assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "RotatedAnchorGenerator"
    assert cfg.TEST.VOC_USE_07_METRIC == name.startswith(("DIOR-R/", "synthetic/"))  # DIOR-R AP: VOC07
    if "/Base-" not in name:
        depth = int(name.rsplit("_R", 1)[1].split("_")[0].split(".")[0])
        assert cfg.MODEL.RESNETS.DEPTH == depth


def test_every_rotated_depth_and_dataset_has_its_config():
    for dataset in ("DOTA", "DIOR-R"):
        for detector in ("rotated_retinanet", "rotated_faster_rcnn"):
            for depth in (18, 50, 101):
                assert f"{dataset}/{detector}_R{depth}.yaml" in ROTATED_CONFIGS
    for detector in ("rotated_retinanet", "rotated_faster_rcnn"):
        assert f"synthetic/{detector}_R50_teacher.yaml" in ROTATED_CONFIGS
        assert f"synthetic/{detector}_R18_student.yaml" in ROTATED_CONFIGS


@pytest.mark.parametrize("key, value, named", [
    ("MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator", "MODEL.ANCHOR_GENERATOR.NAME"),
    ("MODEL.RETINANET.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0), "MODEL.RETINANET.BBOX_REG_WEIGHTS"),
    ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE"),
])
def test_rotated_retinanet_refuses_horizontal_settings_naming_the_key(key, value, named):
    cfg = tiny_config("synthetic/Base-RRetinaNet.yaml", [key, value])
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build_model(cfg)


def test_rotated_retinanet_angles_give_rotated_anchors():
    """More ANGLES: as many more anchors per location and outputs of the head, at those angles."""
    model = build_model(tiny_config("synthetic/Base-RRetinaNet.yaml", ["MODEL.ANCHOR_GENERATOR.ANGLES",
                                                                       [[-60, 0, 60]]]))
    assert model.anchor_generator.num_cell_anchors == [27] * 5
    assert model.head.bbox_pred.out_channels == 27 * 5 and model.head.cls_score.out_channels == 27 * 3
    assert sorted(set(list(model.anchor_generator.cell_anchors)[0][:, 4].tolist())) == [-60, 0, 60]
    assert math.isclose(model.head.cls_score.bias[0].item(), -math.log(99), rel_tol=1e-6)  # RetinaNet's prior


# ---- end to end: train_net.py in this process on a small registered dataset of oriented boxes ----
TRAIN_NET = load_script(CONFIGS.parent / "train_net.py", "train_net")
VISUALIZE = load_script(CONFIGS.parent / "tools" / "visualize_ds2d2.py", "visualize_ds2d2")


@pytest.fixture
def oriented_dataset(tmp_path, restore_catalogs) -> str:
    return register_oriented_dataset(tmp_path / "images")


def train_net_args(config: str, output: Path, opts=(), flags=()):
    opts = [*TINY, *TINY_TRAINING, *opts, "OUTPUT_DIR", output]
    argv = ["--config-file", str(CONFIGS / config), *flags, *map(str, opts)]
    return default_argument_parser().parse_args(argv)


@pytest.mark.slow
@pytest.mark.parametrize("config", DETECTORS)
def test_train_net_trains_a_rotated_detector_and_writes_a_plain_checkpoint(config, oriented_dataset, tmp_path,
                                                                           single_torch_thread):
    out = tmp_path / "out"
    datasets = ["DATASETS.TRAIN", (oriented_dataset,), "DATASETS.TEST", ()]
    TRAIN_NET.main(train_net_args(config, out, ["SOLVER.MAX_ITER", 4, *datasets]))
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 3 and checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert all(math.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)

    # a plain Detectron2 checkpoint: Detectron2's own checkpointer loads every tensor of the detector
    cfg = load_config(str(out / "config.yaml"), register=False)
    model = build_model(cfg)
    loaded = DetectionCheckpointer(model).load(str(out / "model_final.pth"))
    assert "model" not in loaded  # consumed: nothing left unloaded
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, checkpoint["model"][key], msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("config", DETECTORS)
def test_rotated_detector_resumes_exactly(config, oriented_dataset, tmp_path, single_torch_thread):
    """4 iterations straight == a run that crashes before iteration 2, then a new Trainer resumed from its
    checkpoint: weights, momentum and (RetinaNet) the loss normaliser's EMA; RRPN and RROIHeads sample from
    torch's RNG, reseeded per iteration."""

    def trainer(output, iterations=4):
        torch.manual_seed(0)  # the same initial weights
        opts = ["SOLVER.MAX_ITER", iterations, "DATASETS.TRAIN", (oriented_dataset,), "DATASETS.TEST", ()]
        cfg = tiny_config(config, [*TINY_TRAINING, *opts, "OUTPUT_DIR", output])
        return Trainer(cfg)

    # The first training of a process sums some float32 kernels in another order (1e-9 differences in the
    # weights, amplified in the BN statistics): one warm-up iteration, so that both runs use the same kernels.
    warm_up = trainer(tmp_path / "warm_up", iterations=1)
    warm_up.resume_or_load(resume=False)
    warm_up.train()
    straight = trainer(tmp_path / "straight")
    straight.resume_or_load(resume=False)
    straight.train()

    crashing = trainer(tmp_path / "split")
    crashing.register_hooks([CrashAt(2)])
    crashing.resume_or_load(resume=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    resumed = trainer(tmp_path / "split")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()

    final = [torch.load(tmp_path / run / "model_final.pth", map_location="cpu", weights_only=True)
             for run in ("straight", "split")]
    assert final[0]["model"].keys() == final[1]["model"].keys()
    # rtol 1e-4: run as the first test of a process, the straight run's kernels may sum in another order
    # (seen: one of 128 BN values off by 4e-5 relative); a resume that lost state moves weights by ~1e-3.
    for key in final[0]["model"]:
        torch.testing.assert_close(final[0]["model"][key], final[1]["model"][key], rtol=1e-4, atol=1e-8,
                                   msg=lambda m, key=key: f"{key}: {m}")
    momentum = [f["trainer"]["_trainer"]["optimizer"]["state"] for f in final]
    assert momentum[0].keys() == momentum[1].keys() and momentum[0]
    for key in momentum[0]:
        torch.testing.assert_close(momentum[0][key]["momentum_buffer"], momentum[1][key]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-8)
    assert final[0]["trainer"]["loss_normalizers"] == final[1]["trainer"]["loss_normalizers"]
    if "retinanet" in config:
        assert set(final[0]["trainer"]["loss_normalizers"]) == {""}  # the model is the RotatedRetinaNet


def test_check_config_refuses_a_rotated_retinanet_head_of_another_class_count(oriented_dataset):
    cfg = tiny_config(DETECTORS[0], ["DATASETS.TRAIN", (oriented_dataset,), "DATASETS.TEST", (),
                                     "MODEL.RETINANET.NUM_CLASSES", 5])
    with pytest.raises(ValueError, match=r"^MODEL\.RETINANET\.NUM_CLASSES is 5, but dataset 'rotated_tiny'"):
        check_config(cfg)


# ---- the tools name the classes the run recorded ----
INFER = load_script(CONFIGS.parent / "tools" / "infer_large_image.py", "infer_large_image")


def write_dota_folder(root: Path, size: int = 96) -> Path:
    """A DOTA-format folder (images/, labelTxt/) of one scene with one tilted "tree"; its image's path."""
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    image = np.zeros((size, size, 3), np.uint8)
    corners = np.array([[30, 20], [60, 35], [50, 55], [20, 40]])
    cv2.fillPoly(image, [corners.astype(np.int32)], (40, 160, 40))
    cv2.imwrite(str(root / "images" / "P0001.png"), image)
    (root / "labelTxt" / "P0001.txt").write_text(" ".join(map(str, corners.ravel())) + " tree 0\n")
    return root / "images" / "P0001.png"


@pytest.mark.slow
def test_infer_large_image_names_the_classes_the_run_recorded(tmp_path, restore_catalogs):
    """A run on own DOTA-format data records its class list (DATASETS.OWN.<name>.CLASSES) in
    OUTPUT_DIR/config.yaml; tiled inference from that file labels the boxes with it, in a process where the
    dataset is not registered."""
    image = write_dota_folder(tmp_path / "trees")
    key = "DATASETS.OWN.my_trees"
    opts = [f"{key}.FORMAT", "dota", f"{key}.ROOT", tmp_path / "trees", f"{key}.CACHE", tmp_path / "cache",
            f"{key}.PATCH_SIZE", 64, f"{key}.GAP", 16, "DATASETS.TRAIN", ("my_trees",), "DATASETS.TEST", (),
            "MODEL.RETINANET.NUM_CLASSES", 1]
    cfg = load_config(str(CONFIGS / "synthetic/retinanet_R18_student.yaml"), [str(v) for v in [*TINY, *opts]])
    assert list(cfg.DATASETS.OWN.my_trees.CLASSES) == ["tree"]  # collected from the labels, recorded
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    torch.save({"model": build_model(cfg).state_dict()}, run / "model_final.pth")
    DatasetCatalog.remove("my_trees")  # as in a new process: nothing registered
    MetadataCatalog.remove("my_trees")

    argv = ["--config-file", run / "config.yaml", "--weights", run / "model_final.pth", "--input", image,
            "--output", tmp_path / "out", "--patch-size", 64, "--gap", 16, "--draw-score", 0]
    assert INFER.main([str(a) for a in argv]) == 0
    report = json.loads((tmp_path / "out" / "P0001.json").read_text())
    assert report["classes"] == ["tree"]
    assert report["detections"] and {d["category"] for d in report["detections"]} == {"tree"}


class TiltedBoxPerTile:
    """A stand-in rotated detector: one box per tile, at the tile's pixel (20, 12), 10 x 4 px, at 30 degrees,
    score 1 - tile index / 100 (so the merge keeps them all: they do not overlap), class 1."""

    def __init__(self):
        self.calls = 0

    def __call__(self, inputs):
        outputs = []
        for inp in inputs:
            instances = Instances((inp["height"], inp["width"]))
            instances.pred_boxes = RotatedBoxes(torch.tensor([[20.0, 12.0, 10.0, 4.0, 30.0]]))
            instances.scores = torch.tensor([1.0 - self.calls / 100])
            instances.pred_classes = torch.tensor([1])
            outputs.append({"instances": instances})
            self.calls += 1
        return outputs


def test_tiled_rotated_detections_map_back_and_merge_with_rotated_nms():
    cfg = tiny_config("synthetic/Base-RRetinaNet.yaml")  # 64 px tiles, tested at 128 px
    image = np.zeros((100, 150, 3), np.uint8)
    tiles = INFER.predict_tiles(TiltedBoxPerTile(), image, cfg, patch_size=64, gap=16, rates=(1.0,))
    origins = [(left, up) for _, (left, up), _ in INFER.cut_tiles(image, 64, 16, (1.0,))]
    assert len(tiles) == len(origins) == 6
    for part, (left, up) in zip(tiles, origins):
        np.testing.assert_allclose(part.boxes, [[left + 20, up + 12, 10, 4, 30]])
    merged = INFER.merge_tiles(tiles, 150, 100)
    assert merged.boxes.shape == (6, 5) and merged.classes.tolist() == [1] * 6
    # a copy of each box, one pixel away, on a lower score: rotated NMS at 0.1 keeps the originals only
    shifted = [INFER.ImageDetections(p.boxes + [1, 0, 0, 0, 0], p.scores / 2, p.classes) for p in tiles]
    np.testing.assert_allclose(INFER.merge_tiles(tiles + shifted, 150, 100).boxes, merged.boxes)


@pytest.mark.slow
def test_visualize_ds2d2_reads_a_dataset_the_run_recorded(tmp_path, restore_catalogs):
    """--dataset may name a DATASETS.OWN entry of the run's config.yaml, registered from what it recorded."""
    write_dota_folder(tmp_path / "trees")
    key = "DATASETS.OWN.my_trees"
    own = [f"{key}.FORMAT", "dota", f"{key}.ROOT", tmp_path / "trees", f"{key}.CACHE", tmp_path / "cache",
           f"{key}.PATCH_SIZE", 64, f"{key}.GAP", 16, "MODEL.RETINANET.NUM_CLASSES", 1]
    (tmp_path / "stages").mkdir()
    cfg = tiny_stages(tmp_path / "stages", "RetinaNet", teacher_opts=own[-2:], student_opts=own)
    cfg.DATASETS.TRAIN = ("my_trees",)
    register_own_datasets(cfg)  # as train_net.py does: CLASSES collected and recorded
    (tmp_path / "config.yaml").write_text(cfg.dump())
    DatasetCatalog.remove("my_trees")  # as in a new process
    MetadataCatalog.remove("my_trees")
    argv = ["--config-file", tmp_path / "config.yaml", "--dataset", "my_trees",
            "--output", tmp_path / "m.png"]
    assert VISUALIZE.main([str(a) for a in argv]) == 0
    assert (tmp_path / "m.png").stat().st_size > 0


def test_rotated_boxes_are_drawn_turned():
    """A box of 100 x 30 px at 30 degrees: the middle of its upper long side is drawn, the corner of its
    horizontal hull is not."""
    image = np.zeros((160, 160, 3), np.uint8)
    boxes = INFER.ImageDetections(np.array([[80.0, 80.0, 100.0, 30.0, 30.0]]), np.ones(1), np.zeros(1, int))
    canvas = draw_detections(image, boxes, ["ship"], 0.5)
    sin, cos = math.sin(math.radians(30)), math.cos(math.radians(30))
    edge = 80 - 15 * sin, 80 - 15 * cos  # the centre + R (0, -h/2)
    hull_corner = 80 - (50 * cos + 15 * sin), 80 - (50 * sin + 15 * cos)

    def lit(x, y):
        return canvas[round(y) - 1: round(y) + 2, round(x) - 1: round(x) + 2].any()

    assert lit(*edge) and not lit(*hull_corner)


@pytest.mark.slow
@pytest.mark.parametrize("config", DETECTORS)
def test_infer_large_image_draws_rotated_boxes_with_the_recorded_class_names(config, tmp_path,
                                                                             restore_catalogs):
    """A rotated detector's run on own oriented DOTA-format data: the large-image tool writes 5-number boxes
    (cx, cy, w, h, angle), labels them with the recorded classes and draws them."""
    image = write_dota_folder(tmp_path / "trees")
    key = "DATASETS.OWN.my_trees"
    opts = [f"{key}.FORMAT", "dota", f"{key}.BOXES", "oriented", f"{key}.ROOT", tmp_path / "trees",
            f"{key}.CACHE", tmp_path / "cache", f"{key}.PATCH_SIZE", 64, f"{key}.GAP", 16,
            "DATASETS.TRAIN", ("my_trees",), "DATASETS.TEST", (), "MODEL.RETINANET.NUM_CLASSES", 1,
            "MODEL.ROI_HEADS.NUM_CLASSES", 1]
    cfg = load_config(str(CONFIGS / config), [str(v) for v in [*TINY, *opts]])  # registered, recorded
    assert list(cfg.DATASETS.OWN.my_trees.CLASSES) == ["tree"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, run / "model_final.pth")
    DatasetCatalog.remove("my_trees")
    MetadataCatalog.remove("my_trees")

    argv = ["--config-file", run / "config.yaml", "--weights", run / "model_final.pth", "--input", image,
            "--output", tmp_path / "out", "--patch-size", 64, "--gap", 16, "--draw-score", 0]
    assert INFER.main([str(a) for a in argv]) == 0
    report = json.loads((tmp_path / "out" / "P0001.json").read_text())
    assert report["classes"] == ["tree"] and report["detections"]
    assert all(len(d["bbox"]) == 5 and d["category"] == "tree" for d in report["detections"])
    picture = cv2.imread(str(tmp_path / "out" / "P0001_boxes.jpg"))
    assert picture.shape == cv2.imread(str(image)).shape


@pytest.fixture(scope="module")
def oriented_sources(tmp_path_factory) -> dict:
    """Synthetic DOTA-format scenes and DIOR-R-layout images (oriented labels), written once."""
    root = tmp_path_factory.mktemp("oriented_sources")
    return {
        "dota": write_synthetic_dota(root / "dota", num_images=3, seed=0, image_size=160, object_scale=0.5),
        "dior": write_synthetic_dior(root / "dior", num_images=8, seed=0, image_size=64),
    }


def own_oriented_entry(kind: str, sources: dict, cache: Path) -> list:
    """DATASETS.OWN entry ``my_<kind>`` (BOXES oriented) for DOTA-format scenes (split into 64 px patches)
    or DIOR-R XMLs, used for training and testing, with the head sized to its classes."""
    key = f"DATASETS.OWN.my_{kind}"
    if kind == "dota":
        entry = [f"{key}.FORMAT", "dota", f"{key}.ROOT", sources["dota"] / "train", f"{key}.CACHE", cache,
                 f"{key}.PATCH_SIZE", 64, f"{key}.GAP", 16, f"{key}.CLASSES", list(SYNTHETIC_DOTA_CLASSES)]
        classes = SYNTHETIC_DOTA_CLASSES
    else:
        entry = [f"{key}.FORMAT", "voc", f"{key}.ROOT", sources["dior"], f"{key}.IMAGES",
                 "JPEGImages-trainval", f"{key}.ANNOTATIONS", "Annotations/Oriented Bounding Boxes",
                 f"{key}.SPLIT_FILE", "ImageSets/Main/train.txt",
                 f"{key}.CLASSES", list(SYNTHETIC_DIOR_CLASSES)]
        classes = SYNTHETIC_DIOR_CLASSES
    return [*entry, f"{key}.BOXES", "oriented", "DATASETS.TRAIN", (f"my_{kind}",), "DATASETS.TEST",
            (f"my_{kind}",), "MODEL.RETINANET.NUM_CLASSES", len(classes), "MODEL.ROI_HEADS.NUM_CLASSES",
            len(classes)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dota", "dior"])
@pytest.mark.parametrize("config", DETECTORS)
def test_train_net_trains_and_evaluates_on_own_oriented_data(config, kind, oriented_sources, tmp_path,
                                                             restore_catalogs, single_torch_thread):
    """train_net.py on DOTA-format (Task 1) and DIOR-R-format (rotated VOC AP50) own data: 3 iterations, the
    evaluation after them, then --eval-only of the final weights gives the same results."""
    opts = ["SOLVER.MAX_ITER", 3, *own_oriented_entry(kind, oriented_sources, tmp_path / "cache")]
    results = TRAIN_NET.main(train_net_args(config, tmp_path / "train", opts))
    expected = {"dota": "dota_task1", "dior": "voc_rotated_ap50"}[kind]
    assert expected in results, results
    again = TRAIN_NET.main(train_net_args(config, tmp_path / "eval", [
        *opts, "MODEL.WEIGHTS", tmp_path / "train" / "model_final.pth"], flags=["--eval-only"]))
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)  # NaN == NaN there
