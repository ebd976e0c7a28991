"""What a ds2d2 ONNX file says about itself: one JSON document in the model's metadata under ``METADATA_KEY``.

Written by ``ds2d2.deploy.export_onnx`` and read by ``OnnxDetector``; it holds everything inference needs
besides the graph (family, classes, test resize, padding, thresholds): no config file travels with the model.
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

METADATA_KEY = "ds2d2"
FORMAT = "ds2d2-onnx"
VERSION = 1
# RetinaNet / Faster R-CNN (Detectron2's meta-architecture names) and their rotated twins: ds2d2's
# RotatedRetinaNet, and a GeneralizedRCNN with RRPN + RROIHeads (Rotated Faster R-CNN)
FAMILIES = ("RetinaNet", "GeneralizedRCNN", "RotatedRetinaNet", "RotatedGeneralizedRCNN")
ROTATED_RCNN_FIELDS = ("proposals", "pooler")


class DeployFileError(ValueError):
    """A model file that is missing, unreadable, or not a ds2d2 export that fits what is asked of it."""


@dataclass
class DeployInfo:
    """The settings of one exported detector (sizes in pixels, thresholds as in the Detectron2 config)."""

    family: str  # one of FAMILIES
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
    # RotatedGeneralizedRCNN: RRPN's steps after the graph ("nms_thresh", "post_nms_topk", "min_box_size")
    # and the RoI pooler's ("features": its FPN levels, finest first; "scales": 1 / their strides;
    # "output_size"; "sampling_ratio"; "canonical_box_size"; "canonical_level"); None for the other families
    proposals: Optional[Dict[str, float]] = None
    pooler: Optional[Dict[str, Any]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def rotated(self) -> bool:
        """Whether the model predicts rotated boxes (cx, cy, w, h, angle in degrees), not x0 y0 x1 y1."""
        return self.family.startswith("Rotated")

    @property
    def box_dim(self) -> int:
        return 5 if self.rotated else 4

    def to_json(self) -> str:
        """The metadata document; the rotated R-CNN's fields only where set, so that the exports of the other
        families stay readable by the predictors written before those fields existed."""
        fields = {k: v for k, v in asdict(self).items() if v is not None or k not in ROTATED_RCNN_FIELDS}
        return json.dumps({"format": FORMAT, "version": VERSION, **fields})

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
        if info.family == "RotatedGeneralizedRCNN" and (info.proposals is None or info.pooler is None):
            raise DeployFileError(f"'{path}': a {info.family} export needs 'proposals' and 'pooler' "
                                  "metadata.")
        return info
