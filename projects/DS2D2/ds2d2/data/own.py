"""Datasets declared in the config: ``DATASETS.OWN.<name>`` entries in Pascal-VOC, COCO or DOTA format.

Each entry gives a format and its paths; ``register_own_datasets(cfg)`` registers the entries that
``DATASETS.TRAIN/TEST`` name with Detectron2 and records what they resolved to into the config (absolute
paths, the class list, the DOTA patch cache): the ``config.yaml`` a run writes then says exactly what it
trained on. Registering is idempotent (the same entry again is a no-op); a name taken by another dataset is
an error naming both. ``ds2d2.config.load_config`` is how ds2d2's scripts build a config: the file, the
command-line overrides (which may also add entries, completed by ``complete_own_entries``), then the
registration, in every process.

Keys per format (defaults in brackets; relative paths are taken from ROOT, ROOT from the current directory):

- ``voc``: ROOT, IMAGES ["JPEGImages"], ANNOTATIONS ["Annotations"], SPLIT_FILE ["": every XML], CLASSES
  [[]: every object name in the XMLs of ANNOTATIONS, sorted], BOXES ["horizontal": ``<bndbox>``; "oriented":
  DIOR-R's ``<robndbox>`` corners, XYWHA boxes]. Evaluated with COCO AP + VOC per-class AP50.
- ``coco``: ROOT, JSON, IMAGES ["": ROOT], CLASSES [[]: the JSON's categories in id order; if given, they must
  be equal], ALLOW_OUTSIDE_IMAGES [False: an image file_name leading outside IMAGES (``../``, an absolute
  path, a symbolic link to elsewhere) is an error naming the JSON entry; True accepts it]. Evaluated with
  COCO AP.
- ``dota``: ROOT (a DOTA-format split folder: images/, labelTxt/), CLASSES [[]: DOTA v1.0's, or v1.5's, if
  they hold every label category, else the categories sorted], CACHE ["": $DETECTRON2_DATASETS/ds2d2_cache/
  <name>-<hash of ROOT and settings>], PATCH_SIZE [1024], GAP [200], RATES [[1.0]], MIN_INSIDE [0.7], BOXES
  ["horizontal"; "oriented": XYWHA boxes, the minimum-area rectangles of the label polygons, which must then
  be neither collinear nor self-intersecting; one CACHE serves both]. Split
  into patches in CACHE on first use (``split_dota``, resumable; every image's header is checked first, and
  one of more than the config's ``INPUT.MAX_PIXELS`` pixels is refused naming the file), registered as a patch
  set, evaluated with COCO AP on patches + DOTA Task 2 on full images (Task 1 with ``BOXES: oriented``).
"""

import copy
import hashlib
import json
import logging
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ds2d2_onnx.image_io import check_max_pixels

from ..compat import decode_cfg_value
from .coco import register_coco_detection
from .dota import (
    DOTA_V1_5_CLASSES,
    DOTA_V1_CLASSES,
    SPLIT_FORMAT,
    SPLIT_INFO_FILE,
    pair_dota_files,
    parse_dota_labels,
    register_dota,
)
from .dota_split import SplitSettings, split_dota
from .voc import check_box_kind, collect_voc_classes, register_voc_detection

__all__ = [
    "FORMATS",
    "check_own_yaml",
    "complete_own_entries",
    "dataset_classes",
    "merge_config",
    "merge_yaml_safely",
    "register_own_datasets",
]

logger = logging.getLogger(__name__)

# format -> its keys besides FORMAT, with their defaults
FORMATS: Dict[str, Dict[str, object]] = {
    "voc": {
        "ROOT": "", "IMAGES": "JPEGImages", "ANNOTATIONS": "Annotations", "SPLIT_FILE": "", "CLASSES": [],
        "BOXES": "horizontal",
    },
    "coco": {"ROOT": "", "JSON": "", "IMAGES": "", "CLASSES": [], "ALLOW_OUTSIDE_IMAGES": False},
    "dota": {
        "ROOT": "", "CLASSES": [], "CACHE": "", "PATCH_SIZE": 1024, "GAP": 200, "RATES": [1.0],
        "MIN_INSIDE": 0.7, "BOXES": "horizontal",
    },
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PREFIX = "DATASETS.OWN"


# ------------------------------------------------------------------------------------------------------------
# The config entries
# ------------------------------------------------------------------------------------------------------------


def _keys(fmt: str) -> str:
    return f"(its keys: FORMAT, {', '.join(FORMATS[fmt])})"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{_PREFIX}.{name}: dataset names declared in the config may hold letters, digits, '_' and '-' "
            "only (the name is part of config keys such as DATASETS.OWN.<name>.ROOT)"
        )


def complete_own_entries(cfg: CfgNode) -> None:
    """Check every ``DATASETS.OWN`` entry's FORMAT and keys, and add the keys it leaves out with their
    defaults, so that each of them can be overridden on the command line. ValueError names the key."""
    for name, entry in cfg.DATASETS.OWN.items():
        _check_name(name)
        key = f"{_PREFIX}.{name}"
        if not isinstance(entry, CfgNode):
            raise ValueError(f"{key} must be a mapping with FORMAT and the format's keys, got {entry!r}")
        fmt = entry.get("FORMAT", None)
        if fmt not in FORMATS:
            raise ValueError(f"{key}.FORMAT must be one of {sorted(FORMATS)}, got {fmt!r}")
        unknown = sorted(set(entry) - set(FORMATS[fmt]) - {"FORMAT"})
        if unknown:
            raise ValueError(f"{key}.{unknown[0]} is not a key of format {fmt!r} {_keys(fmt)}")
        for k, default in FORMATS[fmt].items():
            if k not in entry:
                entry[k] = copy.deepcopy(default)


def _add_entries_from_opts(cfg: CfgNode, opts: Sequence) -> None:
    """Create the entries that command-line overrides (``DATASETS.OWN.<name>.<KEY> value``) name but the
    config does not declare (such an entry needs its FORMAT among the overrides); check the keys
    overridden."""
    own = cfg.DATASETS.OWN
    pairs = list(zip(opts[0::2], opts[1::2]))
    formats: Dict[str, object] = {}
    named: Dict[str, str] = {}
    for full_key, value in pairs:
        parts = str(full_key).split(".")
        if parts[:2] != ["DATASETS", "OWN"] or len(parts) == 2:
            continue
        if len(parts) != 4:
            raise ValueError(f"{full_key}: overrides of declared datasets are DATASETS.OWN.<name>.<KEY>")
        name, sub = parts[2], parts[3]
        _check_name(name)
        if name not in own:
            named.setdefault(name, full_key)
            if sub == "FORMAT":
                formats[name] = decode_cfg_value(value)
    for name, full_key in named.items():
        if name not in formats:
            raise ValueError(
                f"{full_key}: no dataset {name!r} is declared under DATASETS.OWN; declare it in the config, "
                f"or give DATASETS.OWN.{name}.FORMAT (voc, coco or dota) on the command line too"
            )
        own[name] = type(cfg)({"FORMAT": formats[name]})
    complete_own_entries(cfg)
    for full_key, _ in pairs:
        parts = str(full_key).split(".")
        if parts[:2] == ["DATASETS", "OWN"] and len(parts) == 4 and parts[3] != "FORMAT":
            fmt = own[parts[2]].FORMAT
            if parts[3] not in FORMATS[fmt]:
                raise ValueError(f"{full_key} is not a key of format {fmt!r} {_keys(fmt)}")


def _duplicate_keys(node: yaml.MappingNode, path: str, where: str) -> None:
    first: Dict[str, int] = {}
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if key_node.value in first:
            raise ValueError(
                f"{where}:{line}: {path}.{key_node.value} is given twice (first at line "
                f"{first[key_node.value]}); YAML would silently keep only the last one"
            )
        first[key_node.value] = line


def _yaml_chain(config_file: str) -> Iterator[Tuple[str, yaml.Node]]:
    """(path, composed YAML root) of ``config_file`` and then of each file of its local ``_BASE_`` chain."""
    seen = set()
    path: Optional[str] = config_file
    while path and path not in seen and os.path.isfile(path):
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as f:
                root = yaml.compose(f)
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}: byte {e.start} is not UTF-8 ({e.reason}); config files are read as UTF-8: save it "
                "in UTF-8."
            ) from None
        yield path, root
        top = {k.value: v for k, v in root.value} if isinstance(root, yaml.MappingNode) else {}
        base_node = top.get("_BASE_")
        base = base_node.value if isinstance(base_node, yaml.ScalarNode) else None
        if base is None or base.startswith(("https://", "http://")):
            break
        base = os.path.expanduser(base)
        path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)


def check_own_yaml(config_file: str) -> None:
    """Refuse a config file (or one of its ``_BASE_`` files) that declares a ``DATASETS.OWN`` name, or a key
    of one entry, twice: YAML itself keeps the last one without a word."""
    for path, root in _yaml_chain(config_file):
        if not isinstance(root, yaml.MappingNode):
            continue
        datasets = {k.value: v for k, v in root.value}.get("DATASETS")
        own = None
        if isinstance(datasets, yaml.MappingNode):
            own = {k.value: v for k, v in datasets.value}.get("OWN")
        if isinstance(own, yaml.MappingNode):
            _duplicate_keys(own, _PREFIX, path)
            for key_node, entry in own.value:
                if isinstance(entry, yaml.MappingNode):
                    _duplicate_keys(entry, f"{_PREFIX}.{key_node.value}", path)


def _key_location(config_file: str, full_key: str) -> str:
    """'file:line' of the first file in ``config_file``'s ``_BASE_`` chain that sets ``full_key``
    (e.g. 'TEST.DOTA_TASK2'; of a key given twice, the last, which YAML keeps), else ``config_file``."""

    def line_of(node: yaml.Node, parts: List[str]) -> Optional[int]:
        if not isinstance(node, yaml.MappingNode):
            return None
        for key_node, child in reversed(node.value):
            if key_node.value == parts[0]:
                found = key_node.start_mark.line + 1 if len(parts) == 1 else line_of(child, parts[1:])
                if found is not None:
                    return found
        return None

    for path, root in _yaml_chain(config_file):
        line = line_of(root, full_key.split("."))
        if line is not None:
            return f"{path}:{line}"
    return config_file


_YACS_KEY = re.compile(r"(?:Non-existent config key|for config key): (\S+)$")


def merge_yaml_safely(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)`` with every file of the ``_BASE_`` chain parsed by
    ``yaml.safe_load`` only: a tag that would build a Python object (``!!python/...``) is a ValueError naming
    the file and line, and nothing of it is constructed or run. (Detectron2's default falls back to
    ``yaml.unsafe_load`` on such a tag; ``allow_unsafe=False`` reaches every ``_BASE_`` file.) A key this
    version does not know (KeyError) or a value of the wrong type (ValueError) names the file and line that
    set it."""
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{mark.name}:{mark.line + 1}" if mark is not None else config_file
        raise ValueError(
            f"{where}: {e.problem}: config files are read with yaml.safe_load, which builds plain values "
            "(numbers, strings, lists, mappings) and never Python objects, so no code in a config can run. "
            f"Remove the tag (config file {config_file!r})."
        ) from None
    except KeyError as e:
        found = _YACS_KEY.search(str(e.args[0]) if e.args else "")
        if found is None:
            raise
        key = found.group(1)
        raise KeyError(
            f"{_key_location(config_file, key)}: {key} is not a config key of this Detectron2 + DS2D2 "
            f"(config file {config_file!r}). A config written by another version (e.g. a teacher's recorded "
            "config.yaml) can hold keys this one lacks: remove the key, or rename it to the current one "
            "(README, config keys)."
        ) from None
    except ValueError as e:
        found = _YACS_KEY.search(str(e))
        if found is None:
            raise
        where = _key_location(config_file, found.group(1))
        raise ValueError(f"{where}: {e} (config file {config_file!r})") from None


def merge_config(cfg: CfgNode, config_file: str, opts: Sequence = ()) -> None:
    """Merge ``config_file`` (safely: ``merge_yaml_safely``) then the ``KEY VALUE`` overrides ``opts`` into
    ``cfg``, in place, checking and completing its ``DATASETS.OWN`` entries (overrides may add entries);
    nothing is registered."""
    check_own_yaml(config_file)
    merge_yaml_safely(cfg, config_file)
    complete_own_entries(cfg)
    opts = list(opts)
    _add_entries_from_opts(cfg, opts)
    cfg.merge_from_list(opts)
    complete_own_entries(cfg)


# ------------------------------------------------------------------------------------------------------------
# Resolving and registering one entry
# ------------------------------------------------------------------------------------------------------------


def _string(entry: CfgNode, key: str, sub: str) -> str:
    value = entry[sub]
    if not isinstance(value, str):
        raise ValueError(f"{key}.{sub} must be a string (a path), got {value!r}")
    return os.path.expanduser(value)


def _root(entry: CfgNode, key: str) -> str:
    root = _string(entry, key, "ROOT")
    if not root:
        return ""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{key}.ROOT: folder {root!r} does not exist (relative to {os.getcwd()!r})")
    return root


def _path(entry: CfgNode, key: str, sub: str, root: str, kind: str) -> str:
    """Absolute path of ``entry[sub]`` (relative to ``root``, or the current directory), which must exist as a
    ``kind`` ("folder" or "file"); "" stays ""."""
    value = _string(entry, key, sub)
    if not value:
        return ""
    path = os.path.abspath(os.path.join(root or os.getcwd(), value))
    if not (os.path.isdir(path) if kind == "folder" else os.path.isfile(path)):
        base = f"ROOT {root!r}" if root else f"the current directory {os.getcwd()!r}"
        raise FileNotFoundError(f"{key}.{sub}: {kind} {path!r} does not exist ({value!r} taken from {base})")
    return path


def _classes(entry: CfgNode, key: str) -> List[str]:
    classes = entry["CLASSES"]
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{key}.CLASSES must be a list of non-empty names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{key}.CLASSES names a class twice: {list(classes)}")
    return list(classes)


def _resolve_voc(entry: CfgNode, key: str) -> Tuple[dict, Callable[[str, List[str]], List[str]]]:
    root = _root(entry, key)
    spec = {
        "FORMAT": "voc",
        "ROOT": root,
        "IMAGES": _path(entry, key, "IMAGES", root, "folder"),
        "ANNOTATIONS": _path(entry, key, "ANNOTATIONS", root, "folder"),
        "SPLIT_FILE": _path(entry, key, "SPLIT_FILE", root, "file"),
        "BOXES": check_box_kind(entry["BOXES"], f"{key}.BOXES"),
    }
    for sub in ("IMAGES", "ANNOTATIONS"):
        if not spec[sub]:
            default = FORMATS["voc"][sub]
            raise ValueError(f"{key}.{sub} is empty: set it (or ROOT, for the default {default!r})")

    def register(name: str, classes: List[str]) -> List[str]:
        if not classes:
            classes = collect_voc_classes(spec["ANNOTATIONS"])
            logger.info(
                f"{key}: classes collected from the XMLs of {spec['ANNOTATIONS']} (recorded in the config as "
                f"{key}.CLASSES): {classes}"
            )
        register_voc_detection(
            name,
            image_dir=spec["IMAGES"],
            annotation_dir=spec["ANNOTATIONS"],
            classes=classes,
            split_file=spec["SPLIT_FILE"] or None,
            boxes=spec["BOXES"],
        )
        return classes

    return spec, register


def _resolve_coco(entry: CfgNode, key: str) -> Tuple[dict, Callable[[str, List[str]], List[str]]]:
    root = _root(entry, key)
    spec = {
        "FORMAT": "coco",
        "ROOT": root,
        "JSON": _path(entry, key, "JSON", root, "file"),
        "IMAGES": _path(entry, key, "IMAGES", root, "folder") or root,
        "ALLOW_OUTSIDE_IMAGES": entry["ALLOW_OUTSIDE_IMAGES"],
    }
    if not isinstance(spec["ALLOW_OUTSIDE_IMAGES"], bool):
        raise ValueError(
            f"{key}.ALLOW_OUTSIDE_IMAGES must be True or False, got {spec['ALLOW_OUTSIDE_IMAGES']!r}"
        )
    if not spec["JSON"]:
        raise ValueError(f"{key}.JSON is empty: set it to the COCO annotation file")
    if not spec["IMAGES"]:
        raise ValueError(f"{key}.IMAGES is empty: set it (or ROOT) to the folder of the images")

    def register(name: str, classes: List[str]) -> List[str]:
        return register_coco_detection(
            name, spec["JSON"], spec["IMAGES"], classes or None,
            allow_outside_images=spec["ALLOW_OUTSIDE_IMAGES"],
        )

    return spec, register


def _dota_settings(entry: CfgNode, key: str) -> SplitSettings:
    values = {sub: entry[sub] for sub in ("PATCH_SIZE", "GAP", "RATES", "MIN_INSIDE")}
    for sub in ("PATCH_SIZE", "GAP"):
        if not isinstance(values[sub], int) or isinstance(values[sub], bool):
            raise ValueError(f"{key}.{sub} must be an integer, got {values[sub]!r}")
    if not isinstance(values["RATES"], (list, tuple)) or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) for r in values["RATES"]
    ):
        raise ValueError(f"{key}.RATES must be a list of numbers, got {values['RATES']!r}")
    if not isinstance(values["MIN_INSIDE"], (int, float)) or isinstance(values["MIN_INSIDE"], bool):
        raise ValueError(f"{key}.MIN_INSIDE must be a number, got {values['MIN_INSIDE']!r}")
    try:
        rates = tuple(float(r) for r in values["RATES"])
        return SplitSettings(values["PATCH_SIZE"], values["GAP"], rates, float(values["MIN_INSIDE"]))
    except ValueError as e:
        raise ValueError(f"{key}.PATCH_SIZE/GAP/RATES/MIN_INSIDE: {e}") from None


def _default_cache(name: str, spec: dict) -> str:
    """``$DETECTRON2_DATASETS/ds2d2_cache/<name>-<hash>``: one folder per source folder, split settings and
    patch-set format (both box kinds read one patch set)."""
    settings = {k: spec[k] for k in ("ROOT", "PATCH_SIZE", "GAP", "RATES", "MIN_INSIDE")}
    settings["format"] = SPLIT_FORMAT
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    data_root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return os.path.abspath(os.path.join(data_root, "ds2d2_cache", f"{name}-{digest}"))


def _dota_classes(root: str) -> List[str]:
    """DOTA v1.0's classes if they hold every category of the labels, else v1.5's, else the categories,
    sorted."""
    files = pair_dota_files(root)
    categories = {o.category for _, _, label in files if label is not None for o in parse_dota_labels(label)}
    if not categories:
        raise ValueError(
            f"CLASSES is empty and {root} has no labelled objects to collect classes from: give CLASSES (the "
            "training set's list)"
        )
    for known in (DOTA_V1_CLASSES, DOTA_V1_5_CLASSES):
        if categories <= set(known):
            return list(known)
    return sorted(categories)


def _resolve_dota(
    entry: CfgNode, key: str, name: str, max_pixels: int
) -> Tuple[dict, Callable[[str, List[str]], List[str]]]:
    """The entry's spec and its register function, which splits ROOT into CACHE refusing images of more than
    ``max_pixels`` pixels (``INPUT.MAX_PIXELS``)."""
    root = _root(entry, key)
    if not root:
        raise ValueError(f"{key}.ROOT is empty: set it to a DOTA-format folder (images/, labelTxt/)")
    settings = _dota_settings(entry, key)
    spec = {
        "FORMAT": "dota",
        "ROOT": root,
        "PATCH_SIZE": settings.patch_size,
        "GAP": settings.gap,
        "RATES": list(settings.rates),
        "MIN_INSIDE": settings.min_inside,
        "BOXES": check_box_kind(entry["BOXES"], f"{key}.BOXES"),
    }
    cache = _string(entry, key, "CACHE")
    spec["CACHE"] = os.path.abspath(cache) if cache else _default_cache(name, spec)

    def register(name: str, classes: List[str]) -> List[str]:
        if not classes:
            classes = _dota_classes(root)
            logger.info(f"{key}: classes of the labels in {root} (recorded as {key}.CLASSES): {classes}")
        info_file = os.path.join(spec["CACHE"], SPLIT_INFO_FILE)
        if os.path.isfile(info_file):
            with open(info_file) as f:
                source = json.load(f).get("source")
            if source != root:
                raise ValueError(
                    f"CACHE {spec['CACHE']} holds the patches of {source!r}, not of ROOT {root!r}; choose "
                    "another CACHE or delete that folder"
                )
        report = split_dota(
            root, spec["CACHE"], classes, settings, progress=False, max_pixels=max_pixels, boxes=spec["BOXES"]
        )
        lost = sum(report.lost.values())
        logger.info(
            f"{key}: {root} -> {spec['CACHE']}: {report.images} images ({report.split_now} split now), "
            f"{report.patches} patches, {report.objects} objects, {lost} of them in no patch (lost_objects)"
        )
        register_dota(name, spec["CACHE"], classes, boxes=spec["BOXES"])
        return classes

    return spec, register


def _describe(name: str) -> str:
    meta = MetadataCatalog.get(name)
    own = meta.get("ds2d2_own", None)
    if own is not None:
        return f"by a DATASETS.OWN entry {own}"
    shown = {k: v for k, v in meta.as_dict().items() if k not in ("name", "thing_classes")}
    return f"elsewhere (a builtin ds2d2 dataset, or registered in Python) with metadata {shown}"


def _with_key(error: Exception, key: str) -> Exception:
    """A new error whose message is ``key: <error's message>``: of ``error``'s type when that type takes one
    message (FileNotFoundError, ValueError, ...), else a ValueError (e.g. for a UnicodeDecodeError or a
    json.JSONDecodeError, whose constructors take other arguments)."""
    message = f"{key}: {error}"
    try:
        keyed = type(error)(message)
    except (TypeError, ValueError):
        return ValueError(message)
    return keyed if str(keyed) == message else ValueError(message)


def _max_pixels(cfg: CfgNode) -> int:
    """``INPUT.MAX_PIXELS``, the image size limit (pixels) DOTA entries are split under; ValueError naming the
    key unless it is an integer >= 1."""
    return check_max_pixels(cfg.INPUT.MAX_PIXELS)


def _register_entry(name: str, entry: CfgNode, max_pixels: int) -> None:
    """Register one entry (or check that the same one is registered) and record what it resolved into it;
    ``max_pixels``: ``INPUT.MAX_PIXELS``, which a DOTA entry's images must not exceed."""
    key = f"{_PREFIX}.{name}"
    fmt = entry["FORMAT"]
    if fmt == "voc":
        spec, register = _resolve_voc(entry, key)
    elif fmt == "coco":
        spec, register = _resolve_coco(entry, key)
    else:
        spec, register = _resolve_dota(entry, key, name, max_pixels)
    declared = _classes(entry, key)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        same = meta.get("ds2d2_own", None) == spec
        if not same or (declared and declared != list(meta.thing_classes)):
            what = dict(spec, CLASSES=declared or "(collected)")
            raise ValueError(
                f"{key}: dataset name {name!r} is already registered {_describe(name)}, classes "
                f"{meta.get('thing_classes', None)}; this entry is {what}. Give one of them another name."
            )
        classes = list(meta.thing_classes)
    else:
        try:
            classes = register(name, declared)
        except (OSError, ValueError) as e:
            if str(e).startswith(key):
                raise
            raise _with_key(e, key) from e
        MetadataCatalog.get(name).set(ds2d2_own=spec)
    for sub, value in spec.items():
        entry[sub] = value
    entry["CLASSES"] = classes


def register_own_datasets(cfg: CfgNode, names: Optional[Sequence[str]] = None) -> List[str]:
    """Register the ``DATASETS.OWN`` entries ``names`` (default: those DATASETS.TRAIN or TEST use; see the
    module docstring) and record into ``cfg`` the absolute paths, the class list and the DOTA cache each one
    resolved to; returns the names registered. DOTA images are checked against ``INPUT.MAX_PIXELS``.

    Errors (FileNotFoundError / ValueError) name the entry's key and the file, line or JSON entry at fault.
    """
    own = cfg.DATASETS.OWN
    if names is None:
        used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
        names = [name for name in own if name in used]
        unused = [name for name in own if name not in used]
        if unused:
            logger.info(f"{_PREFIX} entries {unused} are in neither DATASETS.TRAIN nor TEST: not registered.")
    unknown = [name for name in names if name not in own]
    if unknown:
        raise KeyError(f"{_PREFIX} has no entry {unknown[0]!r} (entries: {sorted(own)})")
    registered = set(DatasetCatalog.list())
    for name in own:  # used or not, an entry may not shadow a dataset registered some other way
        if name in registered and MetadataCatalog.get(name).get("ds2d2_own", None) is None:
            raise ValueError(
                f"{_PREFIX}.{name}: dataset name {name!r} is already registered {_describe(name)}; give the "
                "entry another name"
            )
    max_pixels = _max_pixels(cfg)
    frozen = cfg.is_frozen()
    cfg.defrost()
    try:
        complete_own_entries(cfg)
        for name in names:
            _register_entry(name, own[name], max_pixels)
    finally:
        if frozen:
            cfg.freeze()
    return list(names)


def dataset_classes(cfg: CfgNode, name: str) -> Optional[List[str]]:
    """Class list of dataset ``name`` as ``cfg`` knows it: its ``DATASETS.OWN`` entry's CLASSES when they are
    recorded there, else its metadata's thing_classes (None if neither is known)."""
    entry = cfg.DATASETS.OWN.get(name, None)
    if entry is not None and entry.get("CLASSES", None):
        return list(entry.CLASSES)
    if name not in MetadataCatalog.list():
        return None  # (MetadataCatalog.get would create an empty entry)
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    return list(classes) if classes is not None else None
