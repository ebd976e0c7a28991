"""What the ONNX parity tests compare against: Detectron2's own detections for an image."""
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ds2d2_onnx import Detections


def torch_detections(model: torch.nn.Module, cfg: CfgNode, image: np.ndarray) -> Detections:
    """What Detectron2's DefaultPredictor computes for a BGR image (test resize, model, rescale); boxes [N, 4]
    xyxy or [N, 5] XYWHA in the image's pixels, as the model predicts."""
    pixels = image if cfg.INPUT.FORMAT == "BGR" else image[:, :, ::-1]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    pixels = resize.get_transform(pixels).apply_image(pixels)
    tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad():
        inst = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]["instances"]
    return Detections(inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy())
