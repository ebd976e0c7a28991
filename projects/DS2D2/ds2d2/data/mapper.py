"""Detectron2's DatasetMapper with the image read by the project's one reader, ``ds2d2_onnx.image_io``.

Detectron2's mapper decodes with PIL: a truncated JPEG stops training with "image file is truncated", an
image declaring billions of pixels with PIL's DecompressionBombError, neither naming the file. Here a
missing, truncated, undecodable image, or one of more than ``INPUT.MAX_PIXELS`` pixels (refused from its
header), is an ``ImageReadError`` naming the file. Augmentations, annotations and proposals are handled as
DatasetMapper handles them, except oriented boxes (XYWHA_ABS), which DatasetMapper would turn into their
horizontal hulls: they move with their corners (``rotated_annotations``) into RotatedBoxes ``gt_boxes``.
Semantic-segmentation inputs (``sem_seg_file_name``) are not supported.
"""

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ds2d2_onnx import image_io
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS

from .rotated_annotations import has_rotated_boxes, rotated_annotations_to_instances

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """DatasetMapper (same arguments and config keys) plus ``max_pixels`` (``INPUT.MAX_PIXELS``): images are
    read by ``ds2d2_onnx.image_io.read_image`` and converted to ``image_format`` (``INPUT.FORMAT``)."""

    @configurable
    def __init__(self, is_train: bool = True, *, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs):
        super().__init__(is_train, **kwargs)
        self.max_pixels = image_io.check_max_pixels(max_pixels)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        args = super().from_config(cfg, is_train)
        args["max_pixels"] = cfg.INPUT.MAX_PIXELS
        return args

    def read_image(self, file_name: str) -> np.ndarray:
        """The image as an (H, W, C) uint8 array in ``self.image_format`` (C = 3, or 1 for "L")."""
        bgr = image_io.read_image(file_name, self.max_pixels)
        if self.image_format == "BGR":
            return bgr
        rgb = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
        return utils.convert_PIL_to_numpy(rgb, self.image_format)

    def _transform_annotations(self, dataset_dict: dict, transforms: T.TransformList, image_shape) -> None:
        """DatasetMapper's, except for oriented (XYWHA_ABS) annotations: see ``rotated_annotations``."""
        if not has_rotated_boxes(dataset_dict["annotations"], dataset_dict["file_name"]):
            super()._transform_annotations(dataset_dict, transforms, image_shape)
            return
        instances = rotated_annotations_to_instances(dataset_dict.pop("annotations"), transforms, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def __call__(self, dataset_dict: dict) -> dict:
        """One dataset dict -> the model's input dict: ``image`` (C, H, W) uint8 tensor after augmentation,
        ``instances`` (training) or no annotations (testing), proposals if loaded."""
        if "sem_seg_file_name" in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']}: this dataset dict has a sem_seg_file_name; ds2d2's mapper "
                "reads detection data only"
            )
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image.shape[:2], transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
