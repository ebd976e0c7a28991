"""Boxes drawn on an image, one colour per class (OpenCV), and the detections of an image saved."""
import colorsys
import json
import math
import os
from pathlib import Path
from typing import Sequence, Tuple

import cv2
import numpy as np

from .postprocess import Detections


def class_colour(cls: int) -> Tuple[int, int, int]:
    """A BGR colour for class ``cls``: hues spread by the golden ratio."""
    hue = (int(cls) * 0.618034) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0)[::-1])


def rotated_box_corners(box: Sequence[float]) -> np.ndarray:
    """Corners (4, 2) int32 of a rotated box (cx, cy, w, h, angle in degrees counter-clockwise on screen,
    Detectron2's XYWHA_ABS): centre + (+-w/2, +-h/2) turned by the angle."""
    cx, cy, w, h, angle = (float(v) for v in box)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    offsets = ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    corners = [(cx + dx * cos + dy * sin, cy - dx * sin + dy * cos) for dx, dy in offsets]
    return np.round(np.array(corners)).astype(np.int32)


def draw_detections(
    image: np.ndarray, detections: Detections, class_names: Sequence[str], min_score: float
) -> np.ndarray:
    """A copy of the BGR image with the boxes scoring at least ``min_score`` drawn and labelled.
    ``detections``: anything with ``boxes`` [N, 4] (x0, y0, x1, y1) or [N, 5] (rotated: cx, cy, w, h, angle),
    ``scores`` [N], ``classes`` [N] in the image's pixels."""
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 1500))
    for box, score, cls in zip(detections.boxes, detections.scores, detections.classes):
        if score < min_score:
            continue
        colour = class_colour(cls)
        if len(box) == 5:
            corners = rotated_box_corners(box)
            cv2.polylines(canvas, [corners], True, colour, thickness)
            x0, y0 = corners[np.argmin(corners[:, 1])]  # the label goes above the highest corner
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        label = f"{class_names[cls]} {score:.2f}"
        origin = (int(x0), max(int(y0) - 3, 10))
        cv2.putText(canvas, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


def bbox_format(boxes: np.ndarray) -> str:
    """Detectron2's BoxMode name of boxes [N, 4] ("XYXY_ABS") or rotated boxes [N, 5] ("XYWHA_ABS")."""
    return "XYWHA_ABS" if boxes.shape[1] == 5 else "XYXY_ABS"


def save_detections(
    folder: Path, image_path: str, image: np.ndarray, detections: Detections, class_names: Sequence[str],
    min_score: float, **extra
) -> Path:
    """Write ``<stem>.json`` (the image, its size, the classes, ``extra``, "bbox_format" and every detection:
    bbox x0 y0 x1 y1 ("XYXY_ABS"), or cx cy w h angle for rotated boxes ("XYWHA_ABS", the angle in degrees
    counter-clockwise on screen), in the image's pixels, score, category) and ``<stem>_boxes.jpg``
    (``draw_detections``) into ``folder``; returns the picture's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    report = {"image": os.path.abspath(image_path), "width": image.shape[1], "height": image.shape[0],
              "classes": list(class_names), **extra, "bbox_format": bbox_format(detections.boxes)}
    report["detections"] = [
        {"bbox": [float(v) for v in box], "score": float(s), "category_id": int(c),
         "category": class_names[c]}
        for box, s, c in zip(detections.boxes, detections.scores, detections.classes)
    ]
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=1))
    picture = folder / f"{stem}_boxes.jpg"
    cv2.imwrite(str(picture), draw_detections(image, detections, class_names, min_score))
    return picture
