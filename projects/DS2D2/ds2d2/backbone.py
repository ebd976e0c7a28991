"""RetinaNet ResNet-FPN backbone whose P7 can be built as the authors' MMDetection RetinaNet builds it.

Detectron2's ``build_retinanet_resnet_fpn_backbone`` computes P6 = conv(C5) and P7 = conv(ReLU(P6));
MMDetection's RetinaNet (``relu_before_extra_convs=False``) computes P7 = conv(P6). The parameters are the
same (``top_block.p6``, ``top_block.p7``), so checkpoints load either way; only the forward differs.
"""
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import Tensor


class LastLevelP6P7Linear(LastLevelP6P7):
    """P6 = conv(C5), P7 = conv(P6) (no ReLU in between)."""

    def forward(self, c5: Tensor):
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


@BACKBONE_REGISTRY.register()
def build_ds2d2_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """Detectron2's RetinaNet ResNet-FPN (P3-P7), with P7 from ReLU(P6) or from P6 as
    ``MODEL.DS2D2.P7_FROM_RELU_P6`` says."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    top_block_type = LastLevelP6P7 if cfg.MODEL.DS2D2.P7_FROM_RELU_P6 else LastLevelP6P7Linear
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block_type(in_channels_p6p7, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
