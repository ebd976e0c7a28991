"""FGD: Focal and Global Knowledge Distillation for Detectors (Yang et al., CVPR 2022), per FPN level of
``MODEL.DS2D2.FGD.IN_FEATURES`` (docs/baselines.md, "FGD").

With T the teacher's level [B, C, H, W], S the student's after a 1x1 align conv to the teacher's width
(identity when the widths are equal), N the images on this process and every sum over all elements:
- focal: the teacher's spatial attention A_s [B, 1, H, W] and channel attention A_c [B, C, 1, 1] weight the
  squared difference, split by the foreground mask M_fg (1 / box area in cells; for rotated boxes the cells
  each overlaps, as rotated DISW) and the background mask M_bg (1 / background cell count):
  ``loss_fgd_fea`` = (ALPHA * sum(M_fg A_s A_c (T - S)^2) + BETA * sum(M_bg A_s A_c (T - S)^2)) / N;
- attention: the student's attentions imitate the teacher's: ``loss_fgd_att`` = GAMMA * (sum|A_s^T - A_s^S|
  + sum|A_c^T - A_c^S|) / N;
- global: a GCNet context block per side (trainable) adds each feature's global relation to it:
  ``loss_fgd_global`` = LAMBDA * sum((GC_t(T) - GC_s(S))^2) / N.
Each part is summed over the levels; a part whose weights are 0 is not computed and has no key. The
authors' recipe also starts the student's FPN and heads from the teacher's: the distiller-level
``MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD`` (``ds2d2.meta_arch.inherit``), on in the FGD configs.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor, nn

from ..rotated.cells import oriented_box_cells
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext, select_levels
from .fpn_levels import conv_levels

WEIGHT_KEYS = ("ALPHA", "BETA", "GAMMA", "LAMBDA")  # MODEL.DS2D2.FGD.<key>
MASK_CHUNK = 1 << 22  # at most this many (box, cell) pairs are compared at once when building the masks


def fgd_weights(cfg: CfgNode) -> Dict[str, float]:
    """ALPHA, BETA, GAMMA, LAMBDA of ``MODEL.DS2D2.FGD`` (checked by ``ds2d2.checks.check_config``)."""
    return {k: float(cfg.MODEL.DS2D2.FGD[k]) for k in WEIGHT_KEYS}


def fgd_attention(feature: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Spatial [B, 1, H, W] and channel [B, C, 1, 1] attention of ``feature`` [B, C, H, W]:
    H*W * softmax over cells of mean_c |F| / T, and C * softmax over channels of mean_cells |F| / T."""
    b, c, h, w = feature.shape
    magnitude = feature.abs()
    spatial = F.softmax(magnitude.mean(dim=1).flatten(1) / temperature, dim=1).view(b, 1, h, w)
    channel = F.softmax(magnitude.mean(dim=(2, 3)) / temperature, dim=1).view(b, c, 1, 1)
    return h * w * spatial, c * channel


def _oriented_foreground(
    boxes: Sequence[Tensor], image_size: Sequence[int], map_size: Sequence[int]
) -> Tensor:
    """[B, h, w] float64: on each cell the max over the [N_i, 5] XYWHA boxes covering it (the cells a box
    overlaps with positive area, ``oriented_box_cells``) of 1 / (the box's number of covered cells); 0
    elsewhere."""
    h, w = int(map_size[0]), int(map_size[1])
    device = boxes[0].device
    all_boxes = torch.cat(list(boxes))
    image_index = torch.cat(
        [torch.full((b.shape[0],), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)]
    )
    box, cell = oriented_box_cells(all_boxes, image_size, (h, w))
    count = torch.bincount(box, minlength=all_boxes.shape[0]).to(torch.float64)
    mask = torch.zeros(len(boxes) * h * w, dtype=torch.float64, device=device)
    mask.scatter_reduce_(0, image_index[box] * (h * w) + cell, 1.0 / count[box], reduce="amax")
    return mask.view(len(boxes), h, w)


def _horizontal_foreground(
    boxes: Sequence[Tensor], image_size: Sequence[int], map_size: Sequence[int]
) -> Tensor:
    """[B, h, w] float64: the authors' foreground of [N_i, 4] xyxy boxes (``focal_masks``)."""
    in_h, in_w = int(image_size[0]), int(image_size[1])
    h, w = int(map_size[0]), int(map_size[1])
    device = boxes[0].device
    rows = torch.arange(h, dtype=torch.float64, device=device)
    cols = torch.arange(w, dtype=torch.float64, device=device)
    chunk = max(1, MASK_CHUNK // (h * w))
    foreground = []
    for image_boxes in boxes:
        x0, y0, x1, y1 = image_boxes.to(torch.float64).unbind(dim=1)  # each [N]
        c0, r0 = torch.floor(x0 * w / in_w), torch.floor(y0 * h / in_h)
        c1, r1 = torch.ceil(x1 * w / in_w), torch.ceil(y1 * h / in_h)
        value = 1.0 / ((c1 - c0 + 1) * (r1 - r0 + 1)).clamp(min=1)  # the unclamped span's area
        c0, r0, c1, r1 = c0.clamp(min=0), r0.clamp(min=0), c1.clamp(max=w - 1), r1.clamp(max=h - 1)
        mask = torch.zeros(h, w, dtype=torch.float64, device=device)
        for i in range(0, value.shape[0], chunk):
            part = slice(i, i + chunk)
            in_rows = (rows >= r0[part, None]) & (rows <= r1[part, None])  # [n, h]
            in_cols = (cols >= c0[part, None]) & (cols <= c1[part, None])  # [n, w]
            covers = in_rows[:, :, None] & in_cols[:, None, :]  # [n, h, w]
            mask = torch.maximum(mask, torch.where(covers, value[part, None, None], 0.0).amax(dim=0))
        foreground.append(mask)
    return torch.stack(foreground)


def focal_masks(
    boxes: Sequence[Tensor], image_size: Sequence[int], map_size: Sequence[int]
) -> Tuple[Tensor, Tensor]:
    """Foreground and background masks of one grid, each [B, 1, h, w] float32 on the boxes' device.

    ``boxes``: per image [N_i, 4] xyxy or (rotated detectors) [N_i, 5] XYWHA (angle in degrees CCW), one kind
    for the whole batch, in the pixels of the padded input ``image_size`` (H_in, W_in). An xyxy box spans the
    columns floor(x0*w/W_in) .. ceil(x1*w/W_in) and the rows likewise (inclusive); its area in cells counts
    that whole span, as the authors' code, while it covers only the span's cells inside the grid (as DISW,
    docs/method.md), so a box reaching the right or bottom border weighs less per cell than its clamped area
    would give. A rotated box covers the cells it overlaps with positive area (``oriented_box_cells``, as
    rotated DISW) and its area is their number. Foreground: on each covered cell, the max over the boxes
    covering it of 1 / (the box's area); 0 elsewhere. Background: 1 / N_bg on the N_bg cells no box covers
    (all 0 when every cell is).
    """
    widths = {int(b.shape[-1]) for b in boxes}
    if len(widths) != 1 or not widths <= {4, 5} or any(b.dim() != 2 for b in boxes):
        raise ValueError(
            "FGD focal_masks: boxes must be one [N_i, 4] xyxy or [N_i, 5] XYWHA tensor per image, all of one "
            f"kind, got shapes {[tuple(b.shape) for b in boxes]}"
        )
    foreground = _oriented_foreground if widths == {5} else _horizontal_foreground
    fg = foreground(boxes, image_size, map_size)[:, None].to(torch.float32)
    bg = (fg == 0).to(torch.float32)
    return fg, bg / bg.sum(dim=(2, 3), keepdim=True).clamp(min=1)


class GlobalContextBlock(nn.Module):
    """GCNet's context block with channel-add fusion (Cao et al., ICCV Workshops 2019), FGD's global relation
    module: [B, C, H, W] -> F + transform(sum over cells of softmax(conv_1x1(F)) * F), the context
    [B, C, 1, 1] going through conv C->C/2, LayerNorm([C/2, 1, 1]), ReLU, conv C/2->C. The last conv starts at
    zero, so the block starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // 2)
        self.attention = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.attention.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attention.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        weights = F.softmax(self.attention(x).flatten(1), dim=1)  # [B, H*W]
        context = torch.einsum("bcn,bn->bc", x.flatten(2), weights)[:, :, None, None]  # [B, C, 1, 1]
        return x + self.transform(context)


@DISTILL_TERM_REGISTRY.register()
class FGD(DistillTerm):
    """``loss_fgd_fea`` (ALPHA, BETA), ``loss_fgd_att`` (GAMMA), ``loss_fgd_global`` (LAMBDA); see the module
    docstring. Trainable helpers: ``align`` (per level, 1x1 conv with bias, or identity) and, with LAMBDA > 0,
    ``gc_s`` / ``gc_t`` (per level, the GlobalContextBlock of the student's / the teacher's side, both at the
    teacher's width)."""

    @staticmethod
    def enabled(cfg: CfgNode) -> bool:
        return any(w > 0 for w in fgd_weights(cfg).values())

    def __init__(self, cfg: CfgNode, context: TermContext):
        super().__init__()
        fgd = cfg.MODEL.DS2D2.FGD
        self.alpha, self.beta, self.gamma, self.lam = fgd_weights(cfg).values()
        self.temperature = float(fgd.TEMPERATURE)
        self.in_features = select_levels(
            fgd.IN_FEATURES or conv_levels(context), "MODEL.DS2D2.FGD.IN_FEATURES", context, None
        )
        s_width, t_width = context.student_width, context.teacher_width
        same_width = s_width == t_width
        self.align = nn.ModuleDict({
            f: nn.Identity() if same_width else nn.Conv2d(s_width, t_width, kernel_size=1)
            for f in self.in_features
        })
        global_levels = self.in_features if self.lam > 0 else []
        self.gc_s = nn.ModuleDict({f: GlobalContextBlock(t_width) for f in global_levels})
        self.gc_t = nn.ModuleDict({f: GlobalContextBlock(t_width) for f in global_levels})

    def forward(self, step: DistillStep) -> Dict[str, Tensor]:
        parts: Dict[str, List[Tensor]] = {"loss_fgd_fea": [], "loss_fgd_att": [], "loss_fgd_global": []}
        for f in self.align:
            t = step.teacher_feats[f].float()
            s = self.align[f](step.student_feats[f]).float()
            n = t.shape[0]
            t_spatial, t_channel = fgd_attention(t, self.temperature)
            if self.alpha > 0 or self.beta > 0:
                fg, bg = focal_masks(step.gt_boxes, step.input_size, t.shape[-2:])
                weighted = t_spatial * t_channel * (t - s) ** 2
                fea = self.alpha * (fg * weighted).sum() + self.beta * (bg * weighted).sum()
                parts["loss_fgd_fea"].append(fea / n)
            if self.gamma > 0:
                s_spatial, s_channel = fgd_attention(s, self.temperature)
                att = (t_spatial - s_spatial).abs().sum() + (t_channel - s_channel).abs().sum()
                parts["loss_fgd_att"].append(self.gamma * att / n)
            if self.lam > 0:
                relation = self.gc_t[f](t) - self.gc_s[f](s)
                parts["loss_fgd_global"].append(self.lam * (relation ** 2).sum() / n)
        return {key: torch.stack(values).sum() for key, values in parts.items() if values}
