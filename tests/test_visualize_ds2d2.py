"""tools/visualize_ds2d2.py: its maps against direct recomputations, and its PNG (tiny random models)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import ImageList
from matplotlib.image import imread
from pytorch_wavelets import DWTForward

from conftest import load_script, tiny_stages
from ds2d2 import disw_map, explicit_loss
from ds2d2.data import register_voc_detection
from ds2d2.data.builtin import DIOR_CLASSES
from ds2d2.data.synthetic import write_synthetic_dior

REPO = Path(__file__).resolve().parents[1]
DATASET = "visualize_ds2d2_synthetic_dior"
# Test-time resize 128 -> 144 px, padded to 160 (FPN size divisibility 32): boxes move, DISW sees padding.
RESIZE = ["INPUT.MIN_SIZE_TEST", "144", "INPUT.MAX_SIZE_TEST", "144"]


def load_tool():
    module = load_script(REPO / "tools" / "visualize_ds2d2.py", "visualize_ds2d2")
    return module


V = load_tool()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, distiller YAML, synthetic DIOR root): random tiny RetinaNet stages, FPN 64 -> 32 channels."""
    folder = tmp_path_factory.mktemp("visualize")
    root = write_synthetic_dior(folder / "synthetic_dior", num_images=4, seed=0)
    main = root / "ImageSets" / "Main"
    register_voc_detection(
        DATASET,
        image_dir=str(root / "JPEGImages-trainval"),
        annotation_dir=str(root / "Annotations" / "Horizontal Bounding Boxes"),
        classes=DIOR_CLASSES,
        split_file=[str(main / "train.txt"), str(main / "val.txt")],
    )
    torch.manual_seed(0)
    config = folder / "distiller.yaml"
    config.write_text(tiny_stages(folder, "RetinaNet").dump())
    return folder, config, root


def reference_maps(model, batched_input, boxes: torch.Tensor, wave: str):
    """Per level (low, high, disw) from the two backbones with pytorch_wavelets, and the explicit loss."""
    student, teacher = model.student, model.teacher
    images = student.preprocess_image([batched_input])
    image = batched_input["image"].float()
    teacher_input = ImageList.from_tensors([(image - teacher.pixel_mean) / teacher.pixel_std], 32).tensor
    size = tuple(images.tensor.shape[-2:])
    assert tuple(teacher_input.shape[-2:]) == size
    with torch.no_grad():
        s_feats = student.backbone(images.tensor)
        t_feats = teacher.backbone(teacher_input)
        adapted = {f: model.adapters[f](s_feats[f]) for f in model.in_features}
        transform = DWTForward(J=1, mode="zero", wave=wave)
        out = {}
        for f in model.in_features:
            s_low, (s_high,) = transform(adapted[f])
            t_low, (t_high,) = transform(t_feats[f])
            out[f] = (
                ((s_low - t_low) ** 2).sum(dim=1)[0],
                ((s_high - t_high) ** 2).sum(dim=(1, 2))[0],
                disw_map([boxes], size, tuple(t_low.shape[-2:]))[0, 0],
            )
        loss = explicit_loss([adapted[f] for f in model.in_features], [t_feats[f] for f in model.in_features],
                             [boxes], size, wave)
    return out, loss


@pytest.fixture(scope="module")
def model(setup):
    """The haar distiller of ``setup`` with the test-time resize of RESIZE, and its config."""
    torch.manual_seed(0)
    cfg = V.setup_cfg(str(setup[1]), RESIZE)
    return V.build_distiller(cfg), cfg


@pytest.mark.parametrize("wave", ["haar", "db2"])
def test_maps_match_direct_recomputation(setup, model, wave):
    model, cfg = model
    if wave != "haar":
        cfg = V.setup_cfg(str(setup[1]), RESIZE + ["MODEL.DS2D2.WAVELET", wave])
        model = V.build_distiller(cfg)
    assert model.wave == wave
    record = DatasetCatalog.get(DATASET)[0]
    batched_input = V.load_input(cfg, dataset=DATASET, index=0)
    maps = V.compute_maps(model, batched_input)

    # ground truth resized with the image (128 -> 144), the batch padded to 160
    expected = np.array([a["bbox"] for a in record["annotations"]], dtype=np.float32) * 144 / 128
    assert len(expected) > 0
    np.testing.assert_allclose(maps["boxes"], expected, rtol=1e-5)
    assert maps["image"].shape == (144, 144, 3) and maps["image"].dtype == np.uint8
    assert maps["input_size"] == (160, 160)

    reference, (loss_low, loss_high) = reference_maps(model, batched_input, torch.from_numpy(expected), wave)
    assert list(maps["levels"]) == model.in_features == ["p3", "p4", "p5", "p6", "p7"]
    for name, (low, high, disw) in reference.items():
        level = maps["levels"][name]
        assert level["low"].shape == level["high"].shape == level["disw"].shape == tuple(low.shape)
        assert (level["low"] >= 0).all() and (level["high"] >= 0).all()
        np.testing.assert_array_equal(level["disw"], disw.numpy())
        np.testing.assert_allclose(level["low"], low.numpy(), rtol=1e-4, atol=1e-6 * float(low.max()))
        np.testing.assert_allclose(level["high"], high.numpy(), rtol=1e-4, atol=1e-6 * float(high.max()))
        np.testing.assert_allclose(level["weighted_low"], level["disw"] * level["low"], rtol=1e-6)
        np.testing.assert_allclose(level["weighted_high"], level["disw"] * level["high"], rtol=1e-6)
    assert maps["levels"]["p3"]["disw"].max() > 1  # the boxes are there
    levels = maps["levels"].values()
    np.testing.assert_allclose(sum(v["loss_low"] for v in levels), float(loss_low), rtol=1e-4)
    np.testing.assert_allclose(sum(v["loss_high"] for v in levels), float(loss_high), rtol=1e-4)


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(str(path))


def test_plain_image_has_unit_disw(setup, model):
    folder, _, root = setup
    model, cfg = model
    maps = V.compute_maps(model, V.load_input(cfg, image=str(root / "JPEGImages-test" / "00004.jpg")))
    assert maps["boxes"].shape == (0, 4)
    for level in maps["levels"].values():
        np.testing.assert_array_equal(level["disw"], np.ones_like(level["disw"]))
        np.testing.assert_array_equal(level["weighted_low"], level["low"])
    out = folder / "plain.png"
    V.plot_maps(maps, str(out), weighted=False)
    picture = read_png(out)
    assert 700 <= picture.shape[0] < 1000 and picture.shape[1] >= 1500  # three rows of maps, six columns


def test_cli_writes_png_and_loads_weights(setup, model):
    folder, config, _ = setup
    weights = folder / "distiller.pth"
    torch.save({"model": model[0].state_dict()}, weights)
    out = folder / "maps.png"
    argv = ["--config-file", str(config), "--weights", str(weights), "--dataset", DATASET, "--index", "1"]
    assert V.main(argv + ["--output", str(out)]) == 0
    picture = read_png(out)
    assert picture.shape[0] >= 1200 and picture.shape[1] >= 1500 and picture.std() > 0.05

    torch.manual_seed(1)  # a build initialised differently from ``model``: the weights must overwrite it
    loaded = V.build_distiller(V.setup_cfg(str(config), []), str(weights)).state_dict()
    expected = model[0].state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_cli_reports_bad_inputs(setup, capsys):
    folder, config, _ = setup
    out = str(folder / "never.png")
    assert V.main(["--config-file", str(folder / "teacher.yaml"), "--dataset", DATASET, "--output", out]) == 1
    assert "DS2D2Distiller" in capsys.readouterr().err
    wrong = ["--weights", str(folder / "teacher.pth")]  # a teacher checkpoint does not fit the distiller
    assert V.main(["--config-file", str(config), *wrong, "--dataset", DATASET, "--output", out]) == 1
    assert "--weights" in capsys.readouterr().err
    assert V.main(["--config-file", str(config), "--dataset", DATASET, "--index", "99", "--output", out]) == 1
    assert "out of range" in capsys.readouterr().err
    assert not Path(out).exists()


def test_images_are_read_as_the_trainer_reads_them(setup, capsys):
    """--image and --dataset go through CheckedDatasetMapper: a truncated JPEG (which PIL would decode half
    grey or fail on without a name) and an image over INPUT.MAX_PIXELS are refused naming the file, before
    any model is built."""
    folder, config, root = setup
    source = root / "JPEGImages-test" / "00004.jpg"
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(source.read_bytes()[:-400])
    out = str(folder / "never.png")
    assert V.main(["--config-file", str(config), "--image", str(truncated), "--output", out]) == 1
    assert f"'{truncated}' is a truncated JPEG" in capsys.readouterr().err

    no_resize = V.setup_cfg(str(config), ["INPUT.MIN_SIZE_TEST", "0"])
    assert no_resize.INPUT.FORMAT == "BGR"
    pixels = V.load_input(no_resize, image=str(source))["image"].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels, cv2.imread(str(source)))  # OpenCV's decoding, not PIL's
    limit = ["INPUT.MAX_PIXELS", str(128 * 128 - 1)]
    assert V.main(["--config-file", str(config), "--image", str(source), "--output", out, *limit]) == 1
    err = capsys.readouterr().err
    assert f"'{source}' is 128 x 128 = 16384 pixels, more than the limit of 16383" in err
    assert "INPUT.MAX_PIXELS" in err
    assert V.main(["--config-file", str(config), "--dataset", DATASET, "--output", out, *limit]) == 1
    assert "more than the limit of 16383 pixels" in capsys.readouterr().err
    assert not Path(out).exists()
