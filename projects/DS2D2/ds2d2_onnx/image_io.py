"""The one image reader of the project (training data, DOTA splitting, the inference tools), torch-free so the
deployment copy of ``ds2d2_onnx`` has it too; ``ds2d2`` imports it from here.

    image = read_image("scene.png")                   # (H, W, 3) uint8 BGR, as cv2.imread(path, IMREAD_COLOR)
    width, height = image_size("scene.png")           # the same shape, from the file's header only
    read_image("huge.png", max_pixels=30000 ** 2)     # a larger limit for a genuine larger image

The API (stable, for ds2d2's data code and the tools): ``read_image(path, max_pixels=DEFAULT_MAX_PIXELS)``,
``image_size(path, max_pixels=DEFAULT_MAX_PIXELS) -> (width, height)``, ``ImageReadError(ValueError)``,
``DEFAULT_MAX_PIXELS``; ``path`` a str or ``os.PathLike``.

Formats: JPEG, PNG, TIFF, BMP and WebP (told apart by their first bytes, not by the file name). The pixels are
OpenCV's (``cv2.imdecode`` of the file's bytes: exactly what ``cv2.imread(path, cv2.IMREAD_COLOR)`` gives,
EXIF orientation applied). Every refusal is one ``ImageReadError`` naming the file:

- a missing or unopenable file, a file that is none of these formats, an unreadable header;
- an image of more than ``max_pixels`` pixels (width x height), refused from the header before any pixel
  buffer exists, so a small file declaring a huge image costs nothing. The default, ``DEFAULT_MAX_PIXELS``
  (25000 x 25000), fits the largest DOTA scenes (about 20000 x 20000); raise it with ``--max-pixels`` of the
  tools or ``INPUT.MAX_PIXELS`` in a training config. Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``)
  plays no part and is left as it is: headers are read by Pillow's format plugins, not ``Image.open``
  (WebP's by this module);
- a truncated JPEG: OpenCV fills the missing part grey without an error, so the JPEG's marker structure is
  walked first and must reach its end-of-image marker. Truncated PNG, TIFF, BMP and WebP files make
  OpenCV's decoders fail, which is refused as undecodable;
- anything OpenCV refuses to decode (including its own size cap, ``OPENCV_IO_MAX_IMAGE_PIXELS``).
"""
import os
import struct
from typing import Callable, Dict, Optional, Tuple, Type, Union

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

__all__ = ["DEFAULT_MAX_PIXELS", "ImageReadError", "check_max_pixels", "image_size", "read_image"]

DEFAULT_MAX_PIXELS = 25000 * 25000
PathLike = Union[str, "os.PathLike[str]"]

ORIENTATION_TAG = 0x0112  # EXIF Orientation; 5 to 8 turn the image a quarter: width and height swap
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# JPEG markers that have no length field (TEM and the restart markers RST0-RST7)
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
JPEG_EOI, JPEG_SOS = 0xD9, 0xDA


def check_max_pixels(value: object, name: str = "INPUT.MAX_PIXELS") -> int:
    """``value`` as a pixel limit (width x height): an integer >= 1, else a ValueError naming ``name`` (the
    config key or flag that gave it)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (pixels: width x height), got {value!r}")
    return value


class ImageReadError(ValueError):
    """An image file that is missing, not a supported image, truncated, corrupt or over the pixel limit."""


def _exif_orientation(exif: bytes) -> int:
    """The Orientation (1 to 8) of an EXIF block (a TIFF structure, with "Exif" first or not); 1 if none."""
    tags = Image.Exif()
    tags.load(exif)
    return int(tags.get(ORIENTATION_TAG, 1))


def _pillow_header(plugin: Type[Image.Image]) -> Callable:
    """A header reader (stream -> stored width, stored height, orientation) by a Pillow format plugin, which
    reads the header only (no pixels, and not ``Image.open``'s decompression-bomb check)."""
    def read(stream) -> Tuple[int, int, int]:
        header = plugin(stream)
        if isinstance(header, TiffImagePlugin.TiffImageFile):  # Pillow swaps .size by the orientation
            tags = header.tag_v2
            orientation = tags.get(ORIENTATION_TAG, 1)
            return tags[TiffImagePlugin.IMAGEWIDTH], tags[TiffImagePlugin.IMAGELENGTH], orientation
        exif = header.info.get("exif")  # JPEG's APP1, PNG's eXIf chunk (when it comes before the pixels)
        return header.size[0], header.size[1], _exif_orientation(exif) if exif else 1

    return read


def _webp_header(stream) -> Tuple[int, int, int]:
    """(stored width, stored height, orientation) from a WebP file's RIFF chunks: the first one (VP8, VP8L or
    VP8X) gives the size, an EXIF chunk of an extended (VP8X) file the orientation."""
    kind, size = struct.unpack("<4sI", stream.read(20)[12:])
    data = stream.read(10)
    if kind == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        width, height = struct.unpack("<HH", data[6:10])
        return width & 0x3FFF, height & 0x3FFF, 1
    if kind == b"VP8L" and data[0] == 0x2F:  # lossless: 14-bit sizes minus one, packed
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
    if kind != b"VP8X" or len(data) < 10:
        raise ValueError(f"first chunk {kind!r} is not VP8, VP8L or VP8X")
    width, height = (int.from_bytes(data[i:i + 3], "little") + 1 for i in (4, 7))
    exif = _riff_chunk(stream, 20 + size + size % 2, b"EXIF") if data[0] & 0x08 else None  # the EXIF flag
    return width, height, _exif_orientation(exif) if exif else 1


def _riff_chunk(stream, offset: int, wanted: bytes) -> Optional[bytes]:
    """The payload of the first chunk of kind ``wanted`` from ``offset`` on in a RIFF file; None if none."""
    while True:
        stream.seek(offset)
        head = stream.read(8)
        if len(head) < 8:
            return None
        kind, size = struct.unpack("<4sI", head)
        if kind == wanted:
            return stream.read(size)
        offset += 8 + size + size % 2  # chunks are padded to even sizes


HEADER_READERS: Dict[str, Callable] = {
    "JPEG": _pillow_header(JpegImagePlugin.JpegImageFile),
    "PNG": _pillow_header(PngImagePlugin.PngImageFile),
    "TIFF": _pillow_header(TiffImagePlugin.TiffImageFile),
    "BMP": _pillow_header(BmpImagePlugin.BmpImageFile),
    "WebP": _webp_header,
}
FORMAT_NAMES = "JPEG, PNG, TIFF, BMP or WebP"


def _format_of(head: bytes) -> str:
    """The format (a key of HEADER_READERS) of a file from its first 16 bytes; KeyError if none fits."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    raise KeyError(head)


def _header(stream, path: PathLike, max_pixels: int) -> Tuple[str, int, int]:
    """(format, width, height) of the image in ``stream`` as OpenCV returns it (EXIF orientation applied),
    read from its header; ImageReadError unless it is a supported image of at most ``max_pixels`` pixels."""
    head = stream.read(16)
    try:
        fmt = _format_of(head)
    except KeyError:
        raise ImageReadError(
            f"'{path}' is not a {FORMAT_NAMES} image (it starts with {head[:8]!r}): convert it to PNG or "
            "JPEG."
        ) from None
    stream.seek(0)
    try:
        stored_width, stored_height, orientation = HEADER_READERS[fmt](stream)
    except Exception as e:  # Pillow's plugins raise SyntaxError, OSError, ValueError, KeyError... on bad data
        raise ImageReadError(f"'{path}': unreadable {fmt} header ({type(e).__name__}: {e}).") from e
    pixels = int(stored_width) * int(stored_height)
    if pixels > max_pixels:
        raise ImageReadError(
            f"'{path}' is {stored_width} x {stored_height} = {pixels} pixels, more than the limit of "
            f"{max_pixels} pixels. If the image is genuine, raise the limit: --max-pixels of the tools, "
            "INPUT.MAX_PIXELS in a training config (max_pixels= of ds2d2_onnx.image_io.read_image)."
        )
    if orientation in TRANSPOSING_ORIENTATIONS:
        return fmt, int(stored_height), int(stored_width)
    return fmt, int(stored_width), int(stored_height)


def _open(path: PathLike):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(f"image '{path}' does not exist.") from None
    except OSError as e:
        raise ImageReadError(f"cannot open image '{path}': {e}") from e


def image_size(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """(width, height) in pixels of the array ``read_image(path)`` returns (EXIF orientation applied), from
    the file's header only: the pixels are not decoded, so a truncated file is not noticed here.
    ImageReadError naming the file for a missing, unsupported or unreadable file, or one over
    ``max_pixels``."""
    with _open(path) as stream:
        _, width, height = _header(stream, path, max_pixels)
    return width, height


def _jpeg_reaches_end(data: bytes) -> bool:
    """True when the marker structure of the JPEG ``data`` (segments, entropy-coded scans) reaches the
    end-of-image marker within ``data``; False for a file cut short."""
    array = np.frombuffer(data, dtype=np.uint8)
    follower = array[1:]
    # a marker: 0xFF followed by a code that is not a stuffed zero, a fill byte or a restart marker
    starts = np.flatnonzero((array[:-1] == 0xFF) & (follower != 0x00) & (follower != 0xFF)
                            & ((follower < 0xD0) | (follower > 0xD7)))

    def next_marker(pos: int) -> int:
        i = np.searchsorted(starts, pos)
        return int(starts[i]) if i < len(starts) else len(data)

    pos = 2  # after SOI
    while pos < len(data):
        if data[pos] != 0xFF:  # garbage between segments, which libjpeg skips with a warning
            pos = next_marker(pos)
            continue
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            return False
        code = data[pos]
        pos += 1
        if code == JPEG_EOI:
            return True
        if code in JPEG_STANDALONE_MARKERS:
            continue
        if pos + 2 > len(data):
            return False
        pos += int.from_bytes(data[pos:pos + 2], "big")  # the length counts its own two bytes
        if code == JPEG_SOS:  # the scan's entropy-coded data runs up to the next marker
            pos = next_marker(pos)
    return False


def read_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as a (H, W, 3) uint8 BGR array, the pixels of ``cv2.imread(path,
    cv2.IMREAD_COLOR)`` (EXIF orientation applied). ImageReadError naming the file for a missing,
    unsupported, truncated or undecodable file, or one of more than ``max_pixels`` pixels (refused from its
    header, before any pixel buffer is allocated)."""
    with _open(path) as stream:
        fmt, width, height = _header(stream, path, max_pixels)
        stream.seek(0)
        data = stream.read()
    if fmt == "JPEG" and not _jpeg_reaches_end(data):
        raise ImageReadError(
            f"'{path}' is a truncated JPEG (its data ends before the end-of-image marker): copy or download "
            "it again."
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV 5 raises where 4.x returned None (e.g. above OPENCV_IO_MAX_IMAGE_PIXELS)
        hint = ("; above OpenCV's own limit (2^30 pixels by default) set the environment variable "
                "OPENCV_IO_MAX_IMAGE_PIXELS too") if "MAX_IMAGE" in str(e) else ""
        raise ImageReadError(
            f"OpenCV cannot decode '{path}' ({fmt}, {width} x {height}): {str(e).strip()}{hint}"
        ) from e
    if image is None:
        raise ImageReadError(
            f"OpenCV cannot decode '{path}' ({fmt}, {width} x {height}): the file is truncated or corrupt."
        )
    return image
