#!/usr/bin/env python
"""Install detectron2 into the current Python environment, the one place that knows how.

Order of preference:
  1. ``$DETECTRON2_SOURCE`` set: ``pip install --no-build-isolation $DETECTRON2_SOURCE`` as given
     (a local checkout, a wheel, or ``git+https://github.com/facebookresearch/detectron2.git``), untouched.
  2. An importable detectron2 already present (e.g. a user's official build with compiled ops): left alone,
     unless this script installed it (its ``_C`` is the stub below) with an older ``PATCH_LEVEL``: then it is
     re-installed as in 3, so ``make setup`` brings an existing .venv up to date.
  3. Otherwise the PyPI sdist ``pb1-detectron2==0.6`` (detectron2 v0.6 sources without ``layers/csrc``),
     installed as pure Python after the patches listed in ``PATCHES`` below. torchvision supplies nms and
     RoIAlign, and ``import ds2d2`` installs its pure-PyTorch rotated IoU, NMS and ROIAlignRotated
     (``ds2d2.rotated``, through ``ds2d2.compat.install_rotated_ops``), so everything DS2D2 uses works;
     deformable convs do not (they raise a clear error naming this script if called).

The patches only ever apply to that sdist, in a temporary folder, before it is installed; an official build is
never modified. They are:
  * ``setup.py`` builds no C++ extension (its sources are not in the sdist);
  * ``detectron2/_C.py``: a stub for the compiled module, so ``from detectron2 import _C`` (at import time of
    ``detectron2.layers`` and ``detectron2.evaluation``) works; any compiled op raises
    ``NotImplementedError``. COCOEvaluator therefore needs ``use_fast_impl=False``, which ds2d2's trainer sets
    when ``_C`` is this stub;
  * numpy >= 1.24 removed ``np.int`` / ``np.bool`` / ``np.float``: replaced by the builtins they aliased;
  * Pillow >= 10 removed ``Image.LINEAR``: replaced by ``Image.BILINEAR`` (the same filter);
  * ``detectron2/export/__init__.py`` imports its Caffe2 exporter (``export/api.py``: ``from caffe2.proto
    import caffe2_pb2``) unconditionally, and torch 2.x ships no Caffe2, so ``import detectron2.export`` (and
    ``detectron2.utils.analysis``, which imports it) failed. The Caffe2 part is now imported only where
    ``caffe2`` exists, as detectron2's main branch does; ``TracingAdapter``, ``scripting_with_instances`` and
    ``dump_torchscript_IR`` import as before. ds2d2's own ONNX export (``ds2d2.deploy``) does not use
    ``detectron2.export``; an official v0.6 build still has the unconditional import;
  * ``pkg_resources`` (used by ``model_zoo``) needs setuptools < 81: tools/setup_env.sh pins it.

Usage: python tools/install_detectron2.py   (idempotent; run by ``make setup``)
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
# Raised whenever PATCHES or the stub change: an install made by an older version of this script is replaced.
PATCH_LEVEL = 2

STUB_C = '''"""Stub for detectron2's compiled ops, written by ds2d2's tools/install_detectron2.py.

This detectron2 was installed as pure Python from the PyPI sdist pb1-detectron2 (no C++/CUDA sources).
torchvision provides nms and RoIAlign; deformable convolution, rotated boxes and the fast COCO evaluator
are unavailable. Install an official detectron2 build for those.
"""
IS_DS2D2_STUB = True


def get_compiler_version():
    return "none (pure-Python install, see detectron2/_C.py)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{name} is a compiled op, and this detectron2 was installed without compiled ops "
            "by ds2d2's tools/install_detectron2.py. Install an official detectron2 build to use it."
        )

    return _missing
'''

CAFFE2_OPTIONAL = """# torch 2.x has no Caffe2: its exporter is imported where caffe2 exists only (ds2d2)
try:
    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401
except ImportError:
    pass
else:
    from .api import *
"""

# (relative path glob, regex, replacement): each must match at least once, so a changed sdist fails loudly.
PATCHES = [
    ("setup.py", r"ext_modules=get_extensions\(\),", "ext_modules=[],"),
    # formatter for LazyConfig.save only; its pin breaks with click>=8.1
    ("setup.py", r'"black==21.4b2",', ""),
    ("detectron2/**/*.py", r"\bnp\.int\b(?!\d|_)", "int"),
    ("detectron2/**/*.py", r"\bnp\.bool\b(?!_)", "bool"),
    ("detectron2/**/*.py", r"\bnp\.float\b(?!\d|_)", "float"),
    ("detectron2/**/*.py", r"\bImage\.LINEAR\b", "Image.BILINEAR"),
    ("detectron2/export/__init__.py", r"\nfrom \.api import \*\n", "\n" + CAFFE2_OPTIONAL),
]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def detectron2_importable() -> bool:
    code = "import detectron2, detectron2.layers, detectron2.evaluation"
    return subprocess.call([sys.executable, "-c", code], stderr=subprocess.DEVNULL) == 0


def installed_patch_level() -> int:
    """PATCH_LEVEL of a detectron2 installed by this script (1 for the first version, which had none);
    0 for one that imports but was not (an official build: never modified)."""
    # vars(): the stub's module __getattr__ answers every other name
    code = "from detectron2 import _C\nv = vars(_C)\n"
    code += "print(v.get('PATCH_LEVEL', 1) if v.get('IS_DS2D2_STUB') else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def patch_sdist(src: Path) -> None:
    for pattern, regex, repl in PATCHES:
        hits = 0
        for path in sorted(src.glob(pattern)):
            text = path.read_text()
            new, n = re.subn(regex, repl, text)
            if n:
                path.write_text(new)
                hits += n
        if hits == 0:
            raise SystemExit(
                f"install_detectron2: patch {regex!r} on {pattern} matched nothing; sdist changed?"
            )
    (src / "detectron2" / "_C.py").write_text(STUB_C + f"\n\nPATCH_LEVEL = {PATCH_LEVEL}\n")


def install_from_sdist(replace: bool = False) -> None:
    """Download, patch and install the sdist; ``replace``: over an existing install (dependencies kept)."""
    with tempfile.TemporaryDirectory() as tmp:
        # The sdist's setup.py imports torch, so metadata generation needs the current env (no isolation).
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", tmp, SDIST)
        archive = next(Path(tmp).glob("pb1*detectron2-0.6.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        src = next(p for p in Path(tmp).iterdir() if p.is_dir())
        patch_sdist(src)
        replacing = ["--force-reinstall", "--no-deps"] if replace else []
        pip("install", "--no-build-isolation", *replacing, str(src))


def main() -> None:
    source = os.environ.get("DETECTRON2_SOURCE")
    if source:
        pip("install", "--no-build-isolation", source)
    elif detectron2_importable():
        level = installed_patch_level()
        if level == 0 or level >= PATCH_LEVEL:
            print("install_detectron2: an importable detectron2 is present; leaving it alone")
            return
        print(f"install_detectron2: replacing the detectron2 this script installed (patch level {level} < "
              f"{PATCH_LEVEL})")
        install_from_sdist(replace=True)
    else:
        install_from_sdist()
    if not detectron2_importable():
        raise SystemExit("install_detectron2: detectron2 still does not import; see the pip output above")


if __name__ == "__main__":
    main()
