"""What a ds2d2 ONNX file says about itself: one JSON document in the model's metadata under ``METADATA_KEY``.

Written by ``ds2d2.deploy.export_onnx`` and read by ``OnnxDetector``; it holds everything inference needs
besides the graph (family, classes, test resize, padding, thresholds): no config file travels with the model.
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

METADATA_KEY = "ds2d2"
FORMAT = "ds2d2-onnx"
VERSION = 1
FAMILIES = ("RetinaNet", "GeneralizedRCNN")


class DeployFileError(ValueError):
    """A model file that is missing, unreadable, or not a ds2d2 export that fits what is asked of it."""


@dataclass
class DeployInfo:
    """The settings of one exported detector (sizes in pixels, thresholds as in the Detectron2 config)."""

    family: str  # "RetinaNet" or "GeneralizedRCNN"
    class_names: List[str]
    input_format: str  # channel order the graph expects: "BGR" or "RGB"
    pixel_mean: List[float]  # padding value per channel (0 after the graph's normalisation)
    min_size_test: int  # INPUT.MIN_SIZE_TEST (0: no resize)
    max_size_test: int  # INPUT.MAX_SIZE_TEST
    size_divisibility: int  # the backbone's: padded height and width are multiples of it
    input_size: Optional[Tuple[int, int]]  # (height, width) of a fixed-size graph; None: dynamic
    score_thresh: float
    nms_thresh: float
    detections_per_image: int
    topk_candidates: int = 0  # RetinaNet: candidates kept per level before NMS
    source: Dict[str, str] = field(default_factory=dict)  # config and checkpoint it was exported from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)})

    @classmethod
    def from_metadata(cls, metadata: Dict[str, str], path: str) -> "DeployInfo":
        """Parse a model's metadata map; DeployFileError naming ``path`` unless it is a ds2d2 export."""
        if METADATA_KEY not in metadata:
            raise DeployFileError(
                f"'{path}' is not a ds2d2 ONNX export (no '{METADATA_KEY}' metadata): write one with "
                "tools/export_student.py --format onnx."
            )
        try:
            doc = json.loads(metadata[METADATA_KEY])
            if doc.pop("format") != FORMAT or doc.pop("version") != VERSION:
                raise ValueError(f"expected format {FORMAT!r} version {VERSION}")
            if doc.get("input_size") is not None:
                doc["input_size"] = tuple(doc["input_size"])
            info = cls(**doc)
        except (ValueError, TypeError, KeyError) as e:
            raise DeployFileError(f"'{path}': unreadable '{METADATA_KEY}' metadata ({e}).") from e
        if info.family not in FAMILIES:
            raise DeployFileError(f"'{path}': family {info.family!r} is not one of {FAMILIES}.")
        return info
