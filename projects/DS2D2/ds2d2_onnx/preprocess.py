"""Image -> graph input, as Detectron2's test-time path does it: ResizeShortestEdge(MIN_SIZE_TEST,
MAX_SIZE_TEST) with Pillow's bilinear filter (what Detectron2 uses for uint8 images), then padding at the
bottom/right to the graph's size (a multiple of the size divisibility, or the fixed size)."""
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after ResizeShortestEdge: the short side to ``short_edge`` unless the long side would
    pass ``max_size`` (then the long side to ``max_size``); rounded as Detectron2 rounds."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 resized for the model (``short_edge`` 0: unchanged)."""
    if short_edge == 0:
        return image
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], short_edge, max_size)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def padded_shape(height: int, width: int, divisibility: int) -> Tuple[int, int]:
    """The smallest (height, width) at least the given ones and multiples of ``divisibility``."""
    d = max(divisibility, 1)
    return -(-height // d) * d, -(-width // d) * d


def to_input(
    image: np.ndarray, pixel_mean: Sequence[float], divisibility: int, size: Optional[Tuple[int, int]]
) -> np.ndarray:
    """(h, w, 3) pixels -> ``[1, 3, H, W]`` float32, padded with ``pixel_mean`` to ``size`` (fixed-size
    graph) or to multiples of ``divisibility`` (dynamic); ValueError if the image exceeds ``size``."""
    h, w = image.shape[:2]
    out_h, out_w = size if size is not None else padded_shape(h, w, divisibility)
    if h > out_h or w > out_w:
        raise ValueError(f"the resized image is {h} x {w}, larger than the fixed input {out_h} x {out_w}")
    tensor = np.empty((1, 3, out_h, out_w), dtype=np.float32)
    tensor[0] = np.asarray(pixel_mean, dtype=np.float32)[:, None, None]
    tensor[0, :, :h, :w] = image.transpose(2, 0, 1)
    return tensor
