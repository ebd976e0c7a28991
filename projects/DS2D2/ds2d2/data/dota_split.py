"""Cut DOTA images into overlapping square patches as the DOTA devkit's ImgSplit does, with a full record.

Rules (the devkit's, ``dotadevkit/ops/ImgSplit.py``):

- at rate r the image is resized by r; windows of ``patch_size`` start every ``patch_size - gap`` pixels and
  the last window of a row/column is moved back to end at the image border; an image smaller than a patch
  gives one window, zero-padded at the bottom/right (every patch is ``patch_size`` x ``patch_size``);
- an object is kept in a patch when more than ``min_inside`` (default 0.7) of its polygon's area is inside;
  there it keeps its polygon clipped to the patch (``polygon``), its horizontal box is the clipped polygon's
  bounds (``bbox``) and its oriented box (``rbox``: cx, cy, w, h, angle in degrees CCW, the convention of
  ``ds2d2.rotated.boxes``) the minimum-area rectangle around the clipped polygon (for an object wholly
  inside, around its 4 labelled corners). The devkit also writes the rest of the cut objects with
  difficult=2; here they are left out of the patch, and an object kept in no patch at some rate is listed in
  the image's record (``lost_objects``) and counted in the report, never dropped unseen.

Differences from the devkit, and why: polygons are clipped with our own Sutherland-Hodgman code (no shapely,
and clipped polygons with more than 5 corners are kept, where the devkit drops them); a clipped polygon is
kept whole (the devkit merges the shortest edge of a 5-corner one into its midpoint to write 4 corners, so
its oriented box would miss part of the visible object); patch coordinates are not truncated to integers nor
clamped to [1, patch size]; downscaling uses area interpolation (the devkit always uses bicubic). Patches are
named as the devkit names them: ``NAME__RATE__LEFT___UP.png``.

Output, next to the patches: ``dota_split.json`` (settings, class list, image names) and one
``annotations/NAME.json`` per image, written last and atomically, so an interrupted run resumes where it
stopped.
"""

import json
import os
from dataclasses import asdict, dataclass, field
import multiprocessing
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS

from ..checkpoint import atomic_write
from ..rotated.boxes import min_area_rotated_boxes, polygons_to_rotated_boxes
from .dota import (
    DOTA_V1_5_CLASSES,
    DOTA_V1_CLASSES,
    PATCHES_DIR,
    RECORDS_DIR,
    SPLIT_FORMAT,
    SPLIT_INFO_FILE,
    DotaFormatError,
    DotaObject,
    read_image_size,
    pair_dota_files,
    parse_dota_labels,
    read_image,
)

__all__ = [
    "SplitSettings",
    "SplitReport",
    "patch_starts",
    "resize_by_rate",
    "cut_patches",
    "inside_fraction",
    "split_dota",
]


@dataclass(frozen=True)
class SplitSettings:
    """patch_size, gap: pixels of the resized image; rates: resize factors; min_inside: kept-area fraction."""

    patch_size: int = 1024
    gap: int = 200
    rates: Tuple[float, ...] = (1.0,)
    min_inside: float = 0.7

    def __post_init__(self):
        if self.patch_size <= 0 or not 0 <= self.gap < self.patch_size:
            raise ValueError(
                f"need patch_size > 0 and 0 <= gap < patch_size, got {self.patch_size}, {self.gap}"
            )
        if not self.rates or any(r <= 0 for r in self.rates) or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates must be distinct and positive, got {self.rates}")
        if not 0.0 <= self.min_inside < 1.0:
            raise ValueError(f"min_inside must be in [0, 1), got {self.min_inside}")


@dataclass
class SplitReport:
    """What a run did: images (all), split_now (the rest were done before), patches, objects (all images),
    lost (rate -> objects in no patch), invalid_lines (messages of skipped label lines, --skip-invalid)."""

    images: int = 0
    split_now: int = 0
    patches: int = 0
    objects: int = 0
    lost: Dict[str, int] = field(default_factory=dict)
    invalid_lines: List[str] = field(default_factory=list)


def patch_starts(length: int, patch_size: int, gap: int) -> List[int]:
    """Window starts along one axis of ``length`` pixels: every ``patch_size - gap``, the last ending at the
    border."""
    last = max(length - patch_size, 0)
    return list(range(0, last, patch_size - gap)) + [last]


def _polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon, points (N, 2)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _clip_polygon(points: np.ndarray, window: Tuple[float, float, float, float]) -> np.ndarray:
    """Sutherland-Hodgman clip of polygon points (N, 2) to the box window (x0, y0, x1, y1); returns (M, 2)."""
    x0, y0, x1, y1 = window
    pts = [tuple(p) for p in points]
    for axis, bound, low_side in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        inside = (lambda p: p[axis] >= bound) if low_side else (lambda p: p[axis] <= bound)
        out = []
        for i, q in enumerate(pts):
            p = pts[i - 1]
            if inside(q) != inside(p):
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
            if inside(q):
                out.append(q)
        pts = out
        if not pts:
            break
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def inside_fraction(
    polygon: np.ndarray, window: Tuple[float, float, float, float]
) -> Tuple[float, np.ndarray]:
    """(area of polygon inside window / area of polygon, clipped points (M, 2)) for polygon points (N, 2).

    A zero-area polygon (collinear corners) uses its bounds' area instead.
    """
    clipped = _clip_polygon(polygon, window)
    area = _polygon_area(polygon)
    if len(clipped) == 0:
        return 0.0, clipped
    if area > 0:
        return _polygon_area(clipped) / area, clipped
    lo, hi = polygon.min(0), polygon.max(0)
    clo, chi = clipped.min(0), clipped.max(0)
    return float(np.prod(chi - clo) / np.prod(hi - lo)), clipped


@dataclass(frozen=True)
class KeptObject:
    """An object kept in a patch, in the patch's pixels: index (into the image's objects), bbox (x0, y0, x1,
    y1), polygon (x1, y1, ..., xM, yM: the labelled corners, or the part inside the patch of a cut object)
    and rbox (cx, cy, w, h, angle in degrees CCW: minimum-area rectangle around the polygon)."""

    index: int
    bbox: List[float]
    polygon: List[float]
    rbox: List[float]


def _patch_annotations(
    polygons: np.ndarray,
    boxes: np.ndarray,
    rboxes: np.ndarray,
    window: Tuple[int, int, int, int],
    min_inside: float,
) -> List[KeptObject]:
    """The objects kept in one window, with their boxes relative to the window's top-left.

    polygons (N, 4, 2), boxes (N, 4) xyxy and rboxes (N, 5) (minimum-area rectangles of the polygons) in the
    resized image's pixels; window (x0, y0, x1, y1) within the image.
    """
    x0, y0, x1, y1 = window
    overlaps = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    contained = (boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1)
    kept = []
    shift = np.array([x0, y0], dtype=np.float64)
    for i in np.flatnonzero(overlaps):
        if contained[i]:
            box, points, rbox = boxes[i], polygons[i], rboxes[i].copy()
        else:
            fraction, points = inside_fraction(polygons[i], window)
            if fraction <= min_inside:
                continue
            box = np.concatenate([points.min(0), points.max(0)])
            rbox = min_area_rotated_boxes(torch.from_numpy(points[None])).numpy()[0]
        rbox[:2] -= shift
        kept.append(KeptObject(
            index=int(i),
            bbox=[float(box[0] - x0), float(box[1] - y0), float(box[2] - x0), float(box[3] - y0)],
            polygon=[float(v) for v in (points - shift).reshape(-1)],
            rbox=[float(v) for v in rbox],
        ))
    return kept


def _write_cache_file(path: Path, data: bytes) -> None:
    """Atomically, without syncing to disk: the patch cache can be rebuilt."""
    atomic_write(str(path), lambda f: f.write(data), durable=False)


def _dump_json(obj, indent: Optional[int] = None) -> bytes:
    return (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode()


def resize_by_rate(image: np.ndarray, rate: float) -> np.ndarray:
    """Image (H, W, C) resized by ``rate`` (cv2 with fx=fy=rate: size round(H * rate) x round(W * rate), and
    pixel coordinates scale by exactly ``rate``); area interpolation to shrink, bicubic to enlarge."""
    if rate == 1.0:
        return image
    interpolation = cv2.INTER_AREA if rate < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=rate, fy=rate, interpolation=interpolation)


def cut_patches(image: np.ndarray, patch_size: int, gap: int) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(left, up, patch) for every window of an image (H, W, 3); patches are (patch_size, patch_size, 3), the
    part outside the image zero-padded. Row by row, left to right."""
    height, width = image.shape[:2]
    for up in patch_starts(height, patch_size, gap):
        for left in patch_starts(width, patch_size, gap):
            crop = image[up : up + patch_size, left : left + patch_size]
            patch = np.zeros((patch_size, patch_size) + image.shape[2:], dtype=image.dtype)
            patch[: crop.shape[0], : crop.shape[1]] = crop
            yield left, up, patch


def _split_image(task: Tuple[str, str, Optional[List[DotaObject]], str, SplitSettings, int]) -> None:
    """Worker: write the patches of one image, then its record (last, atomically)."""
    stem, image_path, objects, dst, settings, max_pixels = task
    dst = Path(dst)
    image = read_image(image_path, max_pixels)
    height, width = image.shape[:2]
    size = settings.patch_size
    record = {"image": stem, "source_file": Path(image_path).name, "width": width, "height": height}
    record["patches"] = []
    if objects is not None:
        record["lost_objects"] = {}
        record["objects"] = [
            {"bbox": list(o.bbox), "polygon": list(o.polygon), "category": o.category,
             "difficult": o.difficult, "line": o.line}
            for o in objects
        ]
    polygons = np.array([o.polygon for o in objects or []], dtype=np.float64).reshape(-1, 4, 2)
    for rate in settings.rates:
        scaled = resize_by_rate(image, rate)
        sh, sw = scaled.shape[:2]
        polys = polygons * rate
        boxes = np.concatenate([polys.min(1), polys.max(1)], axis=1)
        rboxes = polygons_to_rotated_boxes(torch.from_numpy(polys.reshape(-1, 8))).numpy()
        seen = np.zeros(len(polys), dtype=bool)
        for left, up, patch in cut_patches(scaled, size, settings.gap):
            name = f"{stem}__{float(rate)}__{left}___{up}.png"
            _write_cache_file(dst / PATCHES_DIR / name, cv2.imencode(".png", patch)[1].tobytes())
            entry = {"file": name, "origin": [left / rate, up / rate], "scale": rate, "offset": [left, up]}
            if objects is not None:
                window = (left, up, min(left + size, sw), min(up + size, sh))
                kept = _patch_annotations(polys, boxes, rboxes, window, settings.min_inside)
                entry["annotations"] = [
                    {
                        "bbox": k.bbox,
                        "polygon": k.polygon,
                        "rbox": k.rbox,
                        "category": objects[k.index].category,
                        "difficult": objects[k.index].difficult,
                        "object": k.index,
                    }
                    for k in kept
                ]
                seen[[k.index for k in kept]] = True
            record["patches"].append(entry)
        if objects is not None:
            record["lost_objects"][str(float(rate))] = np.flatnonzero(~seen).tolist()
    _write_cache_file(dst / RECORDS_DIR / f"{stem}.json", _dump_json(record))


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fresh interpreter (forkserver, or spawn where there is none): a plain fork would
    copy OpenCV's thread pool in whatever state the caller left it, and a child touching it can hang
    forever."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # imported once by the server, not by every worker
        return ctx
    return multiprocessing.get_context("spawn")


def _choose_classes(objects: Dict[str, List[DotaObject]], label_files: Dict[str, Path]) -> List[str]:
    """DOTA v1.0's classes if they cover every category, else v1.5's; otherwise an error naming an example."""
    categories = {o.category for objs in objects.values() for o in objs}
    for classes in (DOTA_V1_CLASSES, DOTA_V1_5_CLASSES):
        if categories <= set(classes):
            return list(classes)
    unknown = sorted(categories - set(DOTA_V1_5_CLASSES))
    stem, obj = next((s, o) for s, objs in objects.items() for o in objs if o.category == unknown[0])
    raise DotaFormatError(
        f"{label_files[stem]}:{obj.line}: category {unknown[0]!r} is not a DOTA v1.0/v1.5 class (unknown: "
        f"{', '.join(unknown)}); give the dataset's class list with --classes"
    )


def _write_or_check_info(dst: Path, info: dict) -> None:
    """Write dst/dota_split.json, or check that an earlier run used the same settings, classes and images."""
    path = dst / SPLIT_INFO_FILE
    if path.is_file():
        with open(path) as f:
            old = json.load(f)
        changed = [k for k in info if k != "source" and old.get(k) != info[k]]
        if changed:
            raise ValueError(
                f"{path}: {dst} was split with other {', '.join(changed)} "
                f"(e.g. {changed[0]}: {old.get(changed[0])!r} "
                f"then, {info[changed[0]]!r} now); use another destination or delete it"
            )
    _write_cache_file(path, _dump_json(info, indent=1))


def split_dota(
    src: Union[str, Path],
    dst: Union[str, Path],
    classes: Optional[Sequence[str]] = None,
    settings: SplitSettings = SplitSettings(),
    num_workers: Optional[int] = None,
    skip_invalid: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    boxes: str = "horizontal",
) -> SplitReport:
    """Split the release-layout folder ``src`` (images/, optional labelTxt/) into a patch set in ``dst``.

    classes: the label categories (None: DOTA v1.0's, or v1.5's if needed). All label files, and every
    image's header (format, and at most ``max_pixels`` pixels), are checked before any image is cut; labels
    are checked for ``boxes`` (``parse_dota_labels``: "oriented" refuses collinear and self-intersecting
    polygons), and the patch set serves both box kinds. Images
    whose record already exists in ``dst`` are skipped (resume after an interruption); ``num_workers``
    processes (default: all cores) cut the rest. Bad input is a DotaFormatError naming the file (and line).
    """
    src, dst = Path(src), Path(dst)
    files = pair_dota_files(src)
    if not files:
        raise FileNotFoundError(f"No images in {src / 'images'}")
    has_labels = files[0][2] is not None
    report = SplitReport(images=len(files))
    skipped = report.invalid_lines if skip_invalid else None
    objects = {s: parse_dota_labels(lab, classes, skipped, boxes) for s, _, lab in files if lab is not None}
    label_files = {s: lab for s, _, lab in files if lab is not None}
    class_list = list(classes) if classes is not None else _choose_classes(objects, label_files)
    for _, image_path, _ in files:
        read_image_size(image_path, max_pixels)
    (dst / PATCHES_DIR).mkdir(parents=True, exist_ok=True)
    (dst / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    info = {
        "format": SPLIT_FORMAT,
        "classes": class_list,
        "has_labels": has_labels,
        "source": str(src.resolve()),
    }
    info.update(asdict(settings), rates=list(settings.rates), images=[s for s, _, _ in files])
    _write_or_check_info(dst, info)

    todo = [
        (s, str(img), objects.get(s) if has_labels else None, str(dst), settings, max_pixels)
        for s, img, _ in files
        if not (dst / RECORDS_DIR / f"{s}.json").is_file()
    ]
    report.split_now = len(todo)
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(todo)))
    bar = tqdm(total=len(todo), desc=f"splitting {src.name}", unit="img", disable=not progress)
    if workers == 1:
        for task in todo:
            _split_image(task)
            bar.update()
    else:
        with _worker_context().Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for _ in pool.imap_unordered(_split_image, todo):
                bar.update()
    bar.close()

    for stem, _, _ in files:
        with open(dst / RECORDS_DIR / f"{stem}.json") as f:
            record = json.load(f)
        report.patches += len(record["patches"])
        report.objects += len(record.get("objects", []))
        for rate, lost in record.get("lost_objects", {}).items():
            report.lost[rate] = report.lost.get(rate, 0) + len(lost)
    return report
