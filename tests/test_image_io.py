"""ds2d2_onnx.image_io, the project's one image reader: OpenCV's pixels for ordinary files, and a named
ImageReadError for a missing, foreign, truncated or oversized file (the oversized one refused from its
header)."""
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from ds2d2_onnx import image_io
from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS, ImageReadError, image_size, read_image


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A smooth 120 x 160 BGR picture with a bright corner (so orientations are told apart)."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (7, 7), 2)
    image[:20, :40] = (250, 20, 20)
    return image


def write_cv2(folder: Path, name: str, image: np.ndarray, params=()) -> Path:
    path = folder / name
    assert cv2.imwrite(str(path), image, list(params))
    return path


def png_declaring(width: int, height: int, payload_bytes: int = 48_000) -> bytes:
    """A valid-looking RGB PNG whose IHDR declares ``width`` x ``height`` pixels, with ``payload_bytes`` of
    compressed zeros as its only pixel data (far too little for that size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = np.random.default_rng(1).integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, params", [
    ("scene.jpg", (cv2.IMWRITE_JPEG_QUALITY, 90)),
    ("progressive.jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    ("scene.png", ()),
    ("scene.tif", ()),
    ("scene.bmp", ()),
])
def test_pixels_equal_cv2_imread(tmp_path, scene, name, params):
    path = write_cv2(tmp_path, name, scene, params)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (120, 160, 3)
    assert np.array_equal(image, expected)
    assert image_size(path) == (160, 120)


@pytest.mark.parametrize("name, options", [
    ("lossy.webp", {"quality": 80}), ("lossless.webp", {"lossless": True}),
])
def test_webp_pixels_equal_cv2_imread(tmp_path, scene, name, options):
    path = tmp_path / name
    Image.fromarray(scene[:, :, ::-1][:, :159]).save(path, **options)  # an odd width
    image = read_image(path)
    assert image.shape == (120, 159, 3) and np.array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert image_size(path) == (159, 120)


def test_grey_16_bit_png_becomes_bgr_as_cv2_reads_it(tmp_path, scene):
    grey = cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    path = write_cv2(tmp_path, "grey16.png", grey)
    image = read_image(path)
    assert image.shape == (120, 160, 3) and np.array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_equals_cv2(tmp_path, scene, orientation):
    exif = Image.Exif()
    exif[image_io.ORIENTATION_TAG] = orientation
    path = tmp_path / f"rotated{orientation}.jpg"
    Image.fromarray(scene[:, :, ::-1]).save(path, exif=exif.tobytes(), quality=95)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    stored = np.asarray(Image.open(path))[:, :, ::-1]  # the pixels as stored, not turned
    turned = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}[orientation]
    assert np.abs(expected.astype(int) - cv2.rotate(stored, turned)).max() <= 1  # cv2 turns it
    image = read_image(path)
    assert np.array_equal(image, expected)
    assert image_size(path) == (image.shape[1], image.shape[0]) == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("name, options", [
    ("rotated.png", {}), ("rotated.webp", {"lossless": True}),
])
def test_exif_rotated_png_webp_equal_cv2(tmp_path, scene, name, options):
    exif = Image.Exif()
    exif[image_io.ORIENTATION_TAG] = 6
    path = tmp_path / name
    Image.fromarray(scene[:, :, ::-1]).save(path, exif=exif.tobytes(), **options)
    image = read_image(path)
    assert image.shape == (160, 120, 3) and np.array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert image_size(path) == (120, 160)


def test_exif_rotated_tiff_turned_and_sized_consistently(tmp_path, scene):
    """OpenCV 5.1's imread fails on a TIFF with a quarter-turn orientation (its decoding of the same bytes
    does not): the image comes back turned, as image_size says."""
    exif = Image.Exif()
    exif[image_io.ORIENTATION_TAG] = 6
    path = tmp_path / "rotated.tif"
    Image.fromarray(scene[:, :, ::-1]).save(path, exif=exif.tobytes())
    image = read_image(path)
    assert np.array_equal(image, cv2.rotate(scene, cv2.ROTATE_90_CLOCKWISE))
    assert image_size(path) == (120, 160)


def test_truncated_jpeg_refused_naming_the_file(tmp_path, scene):
    data = write_cv2(tmp_path, "whole.jpg", scene).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert cv2.imread(str(path), cv2.IMREAD_COLOR) is not None  # OpenCV fills the missing half grey
    with pytest.raises(ImageReadError, match=r"cut\.jpg' is a truncated JPEG"):
        read_image(path)


def test_truncated_progressive_jpeg_refused(tmp_path, scene):
    data = write_cv2(tmp_path, "whole.jpg", scene, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)).read_bytes()
    path = tmp_path / "cut_progressive.jpg"
    path.write_bytes(data[: len(data) * 3 // 4])  # some scans whole, the last ones missing
    with pytest.raises(ImageReadError, match=r"cut_progressive\.jpg' is a truncated JPEG"):
        read_image(path)


def test_truncated_jpeg_with_an_end_marker_in_its_metadata_refused(tmp_path, scene):
    """The end-of-image bytes FF D9 inside a comment segment (as in an embedded EXIF thumbnail) do not make a
    cut file whole: the segments are walked, not searched."""
    data = write_cv2(tmp_path, "whole.jpg", scene).read_bytes()
    comment = b"thumbnail \xff\xd8\xff\xd9 end"
    data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    path = tmp_path / "cut_with_comment.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(path)
    whole = tmp_path / "with_comment.jpg"
    whole.write_bytes(data)
    assert np.array_equal(read_image(whole), cv2.imread(str(whole), cv2.IMREAD_COLOR))


def test_jpeg_with_bytes_after_its_end_accepted(tmp_path, scene):
    path = tmp_path / "trailer.jpg"
    path.write_bytes(write_cv2(tmp_path, "whole.jpg", scene).read_bytes() + b"\x00camera trailer\xff")
    assert np.array_equal(read_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("name", ["cut.png", "cut.bmp", "cut.tif", "cut.webp"])
def test_truncated_png_bmp_tiff_webp_refused_naming_the_file(tmp_path, scene, name):
    data = write_cv2(tmp_path, "whole" + Path(name).suffix, scene).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
        read_image(path)


def test_random_bytes_refused(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=r"noise\.jpg' is not a JPEG, PNG, TIFF, BMP or WebP image"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"noise\.jpg"):
        image_size(path)


def test_random_bytes_after_a_png_signature_refused(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).bytes(4096))
    with pytest.raises(ImageReadError, match=r"noise\.png': unreadable PNG header"):
        read_image(path)


def test_huge_declared_png_refused_from_its_header(tmp_path, monkeypatch):
    """A 48 KB PNG declaring 30000 x 30000 pixels (2.7 GB decoded): refused before OpenCV decodes anything,
    Python allocating almost nothing."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(30000, 30000))
    assert path.stat().st_size < 50_000 and 30000 * 30000 > DEFAULT_MAX_PIXELS

    def no_decoding(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(image_io.cv2, "imdecode", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as refused:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    message = str(refused.value)
    assert "bomb.png' is 30000 x 30000 = 900000000 pixels, more than the limit of 625000000" in message
    assert "--max-pixels" in message and "INPUT.MAX_PIXELS" in message
    with pytest.raises(ImageReadError, match="more than the limit"):
        image_size(path)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_small_png_declaring_a_dota_sized_image_costs_little(tmp_path):
    """20000 x 20000 is within the default limit (real DOTA scenes are that large), so such a 48 KB file
    reaches the decoder: it is refused by name there, and the process's peak memory stays far below the
    1.2 GB that image would take (measured in a fresh process)."""
    path = tmp_path / "dota_sized.png"
    path.write_bytes(png_declaring(20000, 20000))
    # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, kept across exec)
    code = ("import re\nfrom ds2d2_onnx.image_io import ImageReadError, read_image\n"
            f"try:\n    read_image({str(path)!r})\nexcept ImageReadError as e:\n    print('refused', e)\n"
            "print(int(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())[1]) // 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO / "projects" / "DS2D2")
    refusal, peak_mib = done.stdout.splitlines()
    assert refusal.startswith(f"refused OpenCV cannot decode '{path}' (PNG, 20000 x 20000)"), done.stderr
    assert int(peak_mib) < 400


def jpeg_declaring(scene: np.ndarray, width: int, height: int) -> bytes:
    """A JPEG of ``scene`` whose frame header (SOF0) says ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", scene)[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("name", ["large.png", "large.jpg"])
def test_header_reading_ignores_pillows_own_limit(tmp_path, scene, name):
    """15000 x 15000 is above Pillow's decompression-bomb error (2 x MAX_IMAGE_PIXELS) but within ours: the
    header is read, and Pillow's process-wide limit is left as it was."""
    limit = Image.MAX_IMAGE_PIXELS
    assert 15000 * 15000 > 2 * limit
    path = tmp_path / name
    data = png_declaring(15000, 15000, 100) if name.endswith("png") else jpeg_declaring(scene, 15000, 15000)
    path.write_bytes(data)
    assert image_size(path) == (15000, 15000)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_opencv_own_limit_refusal_names_the_file(tmp_path, scene):
    """Above OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30 by default; 100 here), OpenCV 5 raises and
    4.x returns None: either way an ImageReadError naming the file."""
    path = write_cv2(tmp_path, "scene.png", scene)
    code = ("from ds2d2_onnx.image_io import ImageReadError, read_image\n"
            f"try:\n    read_image({str(path)!r})\nexcept ImageReadError as e:\n    print('refused', e)")
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "100"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO / "projects" / "DS2D2")
    expected = f"refused OpenCV cannot decode '{path}' (PNG, 160 x 120)"
    assert done.stdout.startswith(expected), done.stdout + done.stderr[-2000:]
    if not cv2.__version__.startswith("4."):  # OpenCV 5's error says which limit: the message tells the fix
        assert "set the environment variable OPENCV_IO_MAX_IMAGE_PIXELS too" in done.stdout


def test_raised_limit_accepts_a_larger_image(tmp_path, scene):
    path = write_cv2(tmp_path, "scene.png", scene)
    with pytest.raises(ImageReadError, match=r"scene\.png' is 160 x 120 = 19200 pixels, more than the limit"):
        read_image(path, max_pixels=19199)
    assert read_image(path, max_pixels=19200).shape == (120, 160, 3)
    assert image_size(path, max_pixels=19200) == (160, 120)


def test_missing_file_refused_naming_it(tmp_path):
    with pytest.raises(ImageReadError, match=r"image '.*absent\.png' does not exist"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(ImageReadError, match=r"absent\.png' does not exist"):
        image_size(tmp_path / "absent.png")


def test_image_io_imports_without_onnxruntime_or_torch():
    """ds2d2 reads its images through ds2d2_onnx.image_io: that import must not need onnxruntime."""
    block = "import sys; sys.modules.update(onnxruntime=None, torch=None, detectron2=None)"
    code = f"{block}; from ds2d2_onnx.image_io import read_image; import ds2d2_onnx; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO / "projects" / "DS2D2")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
