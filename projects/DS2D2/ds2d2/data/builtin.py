"""Built-in DIOR and DIOR-R registrations: ``dior_{train,val,trainval,test}`` and ``synthetic_dior_{...}``
(horizontal boxes), ``diorr_{...}`` and ``synthetic_diorr_{...}`` (DIOR-R's oriented boxes, XYWHA_ABS).

Layout under ``<root>/DIOR`` (the official release, with DIOR-R's oriented annotations unpacked beside the
horizontal ones) and ``<root>/synthetic_dior`` (datasets/make_synthetic.py --format dior writes both)::

    Annotations/Horizontal Bounding Boxes/*.xml   (or Annotations/*.xml in some copies): dior_*
    Annotations/Oriented Bounding Boxes/*.xml     (DIOR-R's <robndbox> corners): diorr_*
    JPEGImages-trainval/*.jpg                     (train and val images)
    JPEGImages-test/*.jpg
    ImageSets/Main/{train,val,test}.txt           (DIOR-R uses DIOR's images and splits)

Registration only looks at the disk to choose the annotation folder: a missing data root is reported when the
dataset is loaded (``DatasetCatalog.get``), so importing ds2d2 works without any data.
"""

import os
from functools import partial
from typing import Dict, List, Union

from .voc import load_voc_detection, register_dataset

__all__ = ["DIOR_CLASSES", "register_all_dior"]  # DIOR-R has DIOR's classes

# fmt: off
DIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "Expressway-Service-area", "Expressway-toll-station", "golffield", "groundtrackfield", "harbor",
    "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
# fmt: on

# name prefix -> (folder under the data root, box kind)
_FOLDERS = {
    "dior": ("DIOR", "horizontal"),
    "synthetic_dior": ("synthetic_dior", "horizontal"),
    "diorr": ("DIOR", "oriented"),
    "synthetic_diorr": ("synthetic_dior", "oriented"),
}
ORIENTED_ANNOTATIONS = os.path.join("Annotations", "Oriented Bounding Boxes")
# split -> (split lists in ImageSets/Main, image folder)
_SPLITS = {
    "train": (["train"], "JPEGImages-trainval"),
    "val": (["val"], "JPEGImages-trainval"),
    "trainval": (["train", "val"], "JPEGImages-trainval"),
    "test": (["test"], "JPEGImages-test"),
}


def _split_paths(dataset_root: str, split: str, boxes: str) -> Dict[str, Union[str, List[str]]]:
    """image_dir, annotation_dir, split_file of a DIOR (``boxes="horizontal"``) or DIOR-R (``"oriented"``)
    split, from what exists under ``dataset_root`` now."""
    lists, image_folder = _SPLITS[split]
    official = os.path.join(dataset_root, "Annotations", "Horizontal Bounding Boxes")
    plain = os.path.join(dataset_root, "Annotations")
    annotation_dir = plain if not os.path.isdir(official) and os.path.isdir(plain) else official
    if boxes == "oriented":
        annotation_dir = os.path.join(dataset_root, ORIENTED_ANNOTATIONS)
    split_files = [os.path.join(dataset_root, "ImageSets", "Main", f"{name}.txt") for name in lists]
    return {
        "image_dir": os.path.join(dataset_root, image_folder),
        "annotation_dir": annotation_dir,
        "split_file": split_files if len(split_files) > 1 else split_files[0],
    }


def _load_split(
    name: str, root: str, dataset_root: str, split: str, registered: dict, boxes: str
) -> List[dict]:
    """Loader registered for one split: checks the data root and layout, then reads the XMLs."""
    if not os.path.isdir(dataset_root):
        raise FileNotFoundError(
            f"Dataset {name!r}: folder {dataset_root!r} does not exist. The data root {root!r} is taken from "
            "$DETECTRON2_DATASETS (default ./datasets); put DIOR there (or run datasets/make_synthetic.py "
            "--format dior for synthetic_dior)."
        )
    paths = _split_paths(dataset_root, split, boxes)
    if paths != registered:
        raise ValueError(
            f"Dataset {name!r}: the layout of {dataset_root!r} changed since registration "
            f"({registered} -> {paths}); call ds2d2.data.builtin.register_all_dior({root!r}) again."
        )
    annotation_dir = paths["annotation_dir"]
    if not os.path.isdir(annotation_dir) and boxes == "oriented":
        raise FileNotFoundError(
            f"Dataset {name!r}: {annotation_dir!r} does not exist: unpack DIOR-R's oriented annotations "
            f"('Oriented Bounding Boxes') into {os.path.dirname(annotation_dir)!r}"
        )
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(
            f"Dataset {name!r}: neither {annotation_dir!r} nor {os.path.dirname(annotation_dir)!r} exists"
        )
    return load_voc_detection(classes=DIOR_CLASSES, boxes=boxes, **paths)


def register_all_dior(root: str) -> None:
    """Register ``dior_*`` and ``diorr_*`` from ``root/DIOR``, ``synthetic_dior_*`` and ``synthetic_diorr_*``
    from ``root/synthetic_dior``.

    Lazy: nothing needs to exist now; a missing folder is reported by ``DatasetCatalog.get``. Calling it again
    with the same root is a no-op; with another root (or after the layout changed) it re-registers the names.
    All use DIOR_CLASSES and evaluator_type "voc_detection"; metadata box_kind says "horizontal" or
    "oriented".
    """
    for prefix, (folder, boxes) in _FOLDERS.items():
        dataset_root = os.path.join(root, folder)
        for split in _SPLITS:
            name = f"{prefix}_{split}"
            paths = _split_paths(dataset_root, split, boxes)
            metadata = {
                "thing_classes": list(DIOR_CLASSES),
                "evaluator_type": "voc_detection",
                "dirname": dataset_root,
                "split": split,
                "box_kind": boxes,
                **paths,
            }
            loader = partial(_load_split, name, root, dataset_root, split, paths, boxes)
            register_dataset(name, loader, metadata, replace=True)
