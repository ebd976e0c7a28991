"""FGD's focal masks from rotated boxes (ds2d2.distill.fgd.focal_masks on [N_i, 5] XYWHA) against a per-box
loop over Shapely's covered cells, the weight of a box at the border, mixed box kinds refused, and the
feature loss of the FGD term on rotated ground truth against a direct computation."""
from typing import Sequence, Tuple

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import ImageList, Instances, RotatedBoxes
from torch import Tensor

from ds2d2 import add_ds2d2_config
from ds2d2.distill import DistillStep
from ds2d2.distill.fgd import FGD, fgd_attention, focal_masks
from kd_baseline_support import checked_term
from test_disw_oriented import random_rotated_boxes, reference_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")
INPUT = (64, 96)  # (H_in, W_in)
STRIDES = {"p3": 8, "p4": 16}


def loop_masks(boxes: Sequence[Tensor], image_size, map_size) -> Tuple[Tensor, Tensor]:
    """[B, 1, h, w] float64 foreground (per cell, the max over the boxes covering it of 1 / the box's number
    of covered cells, by Shapely) and background (1 / N_bg on the cells no box covers)."""
    h, w = map_size
    fg = torch.zeros(len(boxes), h * w, dtype=torch.float64)
    for i, image_boxes in enumerate(boxes):
        for box in image_boxes.tolist():
            covered = reference_cells(box, image_size, map_size)
            for cell in covered:
                fg[i, cell] = max(fg[i, cell].item(), 1.0 / len(covered))
    free = (fg == 0).double()
    bg = free / free.sum(dim=1, keepdim=True).clamp(min=1)
    return fg.view(-1, 1, h, w), bg.view(-1, 1, h, w)


def images_of_boxes(seed: int) -> list:
    """Random rotated boxes (crowded, tiny, partly outside), an image without boxes, one covered whole."""
    generator = torch.Generator().manual_seed(seed)
    return [random_rotated_boxes(40, INPUT, generator), torch.zeros(0, 5, dtype=torch.float64),
            torch.tensor([[48.0, 32.0, 120.0, 120.0, 30.0]], dtype=torch.float64)]


@pytest.mark.parametrize("map_size", [(8, 12), (5, 7), (1, 1)])
def test_masks_match_a_per_box_loop(map_size):
    boxes = images_of_boxes(sum(map_size))
    fg, bg = focal_masks(boxes, INPUT, map_size)
    expected_fg, expected_bg = loop_masks(boxes, INPUT, map_size)
    assert fg.shape == bg.shape == (3, 1, *map_size) and fg.dtype == bg.dtype == torch.float32
    torch.testing.assert_close(fg.double(), expected_fg, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(bg.double(), expected_bg, rtol=1e-6, atol=0.0)
    assert fg[1].sum() == 0 and bg[1].sum().item() == pytest.approx(1.0) and bg[2].sum() == 0


def test_a_box_at_the_border_weighs_by_its_cells_inside_the_grid():
    """[80, 96] x [40, 64] as a rotated box covers the 2 x 3 cells of the 8 x 12 grid's corner, 1/6 each (the
    horizontal rule would count the span running past the grid: 1/12)."""
    fg, bg = focal_masks([torch.tensor([[88.0, 52.0, 16.0, 24.0, 0.0]])], INPUT, (8, 12))
    assert torch.all(fg[0, 0, 5:, 10:] == torch.tensor(1 / 6, dtype=torch.float32))
    assert fg.sum().item() == pytest.approx(1.0)
    assert bg[0, 0, 5:, 10:].sum() == 0
    assert torch.all(bg[0, 0, :5] == torch.tensor(1 / 90, dtype=torch.float32))


def test_mixed_box_kinds_are_refused():
    with pytest.raises(ValueError, match=r"FGD focal_masks: .*got shapes \[\(2, 5\), \(1, 4\)\]"):
        focal_masks([torch.zeros(2, 5), torch.zeros(1, 4)], INPUT, (8, 12))


def test_the_feature_loss_on_rotated_ground_truth_matches_a_direct_computation():
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    cfg.merge_from_list(["MODEL.DS2D2.FGD.ALPHA", 0.3, "MODEL.DS2D2.FGD.BETA", 0.2,
                         "MODEL.DS2D2.FGD.GAMMA", 0.0, "MODEL.DS2D2.FGD.LAMBDA", 0.0])
    term = checked_term(FGD, cfg, STRIDES, 6, 6)  # same widths: the align is the identity
    boxes = images_of_boxes(0)
    generator = torch.Generator().manual_seed(1)
    teacher = {f: torch.randn(3, 6, INPUT[0] // s, INPUT[1] // s, generator=generator)
               for f, s in STRIDES.items()}
    student = {f: torch.randn(t.shape, generator=generator).requires_grad_() for f, t in teacher.items()}
    instances = []
    for image_boxes in boxes:
        instance = Instances(INPUT)
        instance.gt_boxes = RotatedBoxes(image_boxes.float())
        instances.append(instance)
    step = DistillStep(ImageList(torch.zeros(3, 3, *INPUT), [INPUT] * 3), instances, student, teacher, {})
    losses = term(step)
    assert set(losses) == {"loss_fgd_fea"}

    expected = 0.0
    for f in STRIDES:
        t, s = teacher[f].double(), student[f].detach().double()
        fg, bg = loop_masks([b.float() for b in boxes], INPUT, t.shape[-2:])
        spatial, channel = fgd_attention(t, float(cfg.MODEL.DS2D2.FGD.TEMPERATURE))
        weighted = spatial * channel * (t - s) ** 2
        expected += (0.3 * (fg * weighted).sum() + 0.2 * (bg * weighted).sum()).item() / 3
    torch.testing.assert_close(losses["loss_fgd_fea"].double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=0.0)
