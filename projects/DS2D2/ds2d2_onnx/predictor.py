"""``OnnxDetector``: a ds2d2 ONNX export run by onnxruntime, image in, detections in the image's pixels out.

Needs onnxruntime, NumPy and Pillow only (no torch, no Detectron2). Per image: channel order as the model was
trained (INPUT.FORMAT), ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST), padding with PIXEL_MEAN
(``preprocess``), the graph, then ``postprocess`` (NMS etc.) and rescaling to the original size (a Rotated
Faster R-CNN runs its graph's two parts around the NumPy proposal NMS and ``roi_align_rotated``). A corrupt
file is refused (``integrity``): NaN or infinite weights at load (where ``onnx`` is installed), NaN or
infinite raw outputs on the first image.

    from ds2d2_onnx import OnnxDetector, read_image

    detector = OnnxDetector("student.onnx", threads=2)
    dets = detector(read_image("scene.jpg"))  # boxes [N, 4] (x0 y0 x1 y1), scores [N], classes [N]
    # a rotated detector's boxes are [N, 5]: cx, cy, w, h, angle (degrees, counter-clockwise on screen)
    names = [detector.info.class_names[c] for c in dets.classes]
"""
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from .integrity import check_finite_outputs, check_finite_weights
from .metadata import DeployFileError, DeployInfo
from .postprocess import Detections, dense_detections, rescale, roi_detections, rotated_proposals
from .preprocess import resize, to_input
from .roi_align_rotated import pool_rotated

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def _last_dim(shape: Sequence) -> Optional[int]:
    return shape[-1] if shape and isinstance(shape[-1], int) else None


class OnnxDetector:
    """Run a ds2d2 export. ``threads``: onnxruntime intra-op threads, at least 1 (None: its default, all
    cores); ``providers``: onnxruntime execution providers (default CPU); ``num_classes``: if given, the model
    must predict that many classes; ``score_thresh``: overrides the exported test score threshold (a number
    in [0, 1])."""

    def __init__(
        self,
        path: str,
        threads: Optional[int] = None,
        providers: Optional[Sequence[str]] = None,
        num_classes: Optional[int] = None,
        score_thresh: Optional[float] = None,
    ):
        self.path = path
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}.")
        if score_thresh is not None and not (math.isfinite(score_thresh) and 0 <= score_thresh <= 1):
            raise ValueError(f"score_thresh must be a number in [0, 1], got {score_thresh}.")
        if not os.path.isfile(path):
            raise DeployFileError(f"model file '{path}' does not exist.")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            providers = list(providers or DEFAULT_PROVIDERS)
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise DeployFileError(
                f"onnxruntime cannot load '{path}' (truncated or not an ONNX model?): {type(e).__name__}: {e}"
            ) from e
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info: DeployInfo = DeployInfo.from_metadata(metadata, path)
        self._check_graph()
        if num_classes is not None and num_classes != self.info.num_classes:
            raise DeployFileError(
                f"'{path}' predicts {self.info.num_classes} classes, {num_classes} were expected: is it the "
                "model of another dataset?"
            )
        check_finite_weights(path)
        self.score_thresh = self.info.score_thresh if score_thresh is None else float(score_thresh)
        self._outputs_checked = False

    def _check_graph(self) -> None:
        """DeployFileError unless the graph's inputs and outputs are those of ``info.family`` with
        ``info.num_classes`` classes."""
        inputs = [i.name for i in self.session.get_inputs()]
        outputs: Dict[str, List] = {o.name: o.shape for o in self.session.get_outputs()}
        k, dim, family = self.info.num_classes, self.info.box_dim, self.info.family
        if family.endswith("RetinaNet"):
            levels = [n[len("scores_"):] for n in outputs if n.startswith("scores_")]
            fits = (inputs == ["image"] and len(levels) > 0 and len(outputs) == 2 * len(levels)
                    and all(_last_dim(outputs["scores_" + v]) in (k, None) for v in levels)
                    and all("boxes_" + v in outputs and _last_dim(outputs["boxes_" + v]) in (dim, None)
                            for v in levels))
        else:
            expected = ["image", "image_size"]
            if self.info.rotated:
                expected = ["image", "roi_features", "proposals"]
            fits = (inputs == expected and {"class_boxes", "class_probs"} <= set(outputs)
                    and _last_dim(outputs["class_probs"]) in (k + 1, None)
                    and _last_dim(outputs["class_boxes"]) in (dim * k, dim, None))
            if self.info.rotated:
                features = [f"features_{f}" for f in self.info.pooler["features"]]
                fits = fits and all(f in outputs for f in features) and len(self._rpn_levels(outputs)) > 0
            else:
                fits = fits and len(outputs) == 2
        if not fits:
            raise DeployFileError(
                f"'{self.path}': the graph (inputs {inputs}, outputs {outputs}) is not a {family} "
                f"export with {k} classes as its metadata says."
            )

    @staticmethod
    def _rpn_levels(outputs: Sequence[str]) -> List[str]:
        """The RPN levels of a Rotated Faster R-CNN graph of outputs ``outputs`` (its objectness_<level>)."""
        return [n[len("objectness_"):] for n in outputs if n.startswith("objectness_")
                and "proposals_" + n[len("objectness_"):] in outputs]

    def preprocess(self, image: np.ndarray) -> Tuple[Dict[str, np.ndarray], Tuple[int, int]]:
        """BGR uint8 ``(H, W, 3)`` -> (the graph's inputs, the resized image's (h, w))."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a (H, W, 3) uint8 BGR image, got {image.dtype} {image.shape}")
        info = self.info
        pixels = image if info.input_format == "BGR" else image[:, :, ::-1]
        resized = resize(pixels, info.min_size_test, info.max_size_test)
        size = resized.shape[:2]
        try:
            feed = {"image": to_input(resized, info.pixel_mean, info.size_divisibility, info.input_size)}
        except ValueError as e:
            raise ValueError(f"'{self.path}': {e}; export it with a dynamic size or a larger one.") from e
        if info.family == "GeneralizedRCNN":
            feed["image_size"] = np.asarray(size, dtype=np.float32)
        elif info.family == "RotatedGeneralizedRCNN":  # the box head's part gets one dummy RoI on this run
            feed.update(self._dummy_rois())
        return feed, size

    def _dummy_rois(self) -> Dict[str, np.ndarray]:
        """The minimal input of a Rotated Faster R-CNN graph's box-head part: one RoI of zero features."""
        channels = self.session.get_inputs()[1].shape[1]
        height, width = self.info.pooler["output_size"]
        return {"roi_features": np.zeros((1, channels, height, width), np.float32),
                "proposals": np.array([[8.0, 8.0, 8.0, 8.0, 0.0]], np.float32)}

    def _dummy_image(self) -> np.ndarray:
        """The minimal input of a graph's image part (dynamic, as every Rotated Faster R-CNN export): one
        size-divisibility square."""
        side = max(self.info.size_divisibility, 1)
        return np.zeros((1, 3, side, side), np.float32)

    def _run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(names, feed)))
        if not self._outputs_checked:
            check_finite_outputs(self.path, out)
            self._outputs_checked = True
        return out

    def _rotated_rcnn(self, feed: Dict[str, np.ndarray], size: Tuple[int, int]) -> Detections:
        """A Rotated Faster R-CNN's detections in model-input pixels: the graph's image part, RRPN's NMS and
        the pooling in NumPy, then the graph's box-head part (fed the smallest image it takes)."""
        info = self.info
        out = self._run(feed)
        levels = self._rpn_levels(out)
        rpn = info.proposals
        proposals = rotated_proposals(
            [out["objectness_" + v] for v in levels], [out["proposals_" + v] for v in levels], size,
            rpn["nms_thresh"], int(rpn["post_nms_topk"]), rpn["min_box_size"])
        if len(proposals) == 0:
            return Detections.empty(5)
        pooler = info.pooler
        pooled = pool_rotated([out["features_" + f] for f in pooler["features"]], proposals,
                              pooler["output_size"], pooler["scales"], pooler["sampling_ratio"],
                              pooler["canonical_box_size"], pooler["canonical_level"])
        out = self._run({"image": self._dummy_image(), "roi_features": pooled, "proposals": proposals})
        return roi_detections(out["class_probs"], out["class_boxes"], size, self.score_thresh,
                              info.nms_thresh, info.detections_per_image, box_dim=5)

    def __call__(self, image: np.ndarray) -> Detections:
        """Detections of one BGR uint8 image ``(H, W, 3)``, in its pixels, best first."""
        feed, size = self.preprocess(image)
        info = self.info
        if info.family == "RotatedGeneralizedRCNN":
            return rescale(self._rotated_rcnn(feed, size), size, image.shape[:2])
        out = self._run(feed)
        if info.family.endswith("RetinaNet"):
            levels = [n[len("scores_"):] for n in out if n.startswith("scores_")]
            dets = dense_detections([out["scores_" + v] for v in levels], [out["boxes_" + v] for v in levels],
                                    self.score_thresh, info.topk_candidates, info.nms_thresh,
                                    info.detections_per_image)
        else:
            dets = roi_detections(out["class_probs"], out["class_boxes"], size, self.score_thresh,
                                  info.nms_thresh, info.detections_per_image)
        return rescale(dets, size, image.shape[:2])
