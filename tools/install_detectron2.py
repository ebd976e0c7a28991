#!/usr/bin/env python
"""Install detectron2 into the current Python environment, the one place that knows how.

Order of preference:
  1. ``$DETECTRON2_SOURCE`` set: ``pip install --no-build-isolation $DETECTRON2_SOURCE`` as given
     (a local checkout, a wheel, or ``git+https://github.com/facebookresearch/detectron2.git``), untouched.
  2. An importable detectron2 already present (e.g. a user's official build with compiled ops): left alone.
  3. Otherwise the PyPI sdist ``pb1-detectron2==0.6`` (detectron2 v0.6 sources without ``layers/csrc``),
     installed as pure Python after the patches listed in ``PATCHES`` below. torchvision supplies nms and
     RoIAlign, so everything DS2D2 uses works; deformable convs and rotated-box ops do not (they raise a clear
     error naming this script if called).

The patches only ever apply to that sdist, in a temporary folder, before it is installed; an official build is
never modified. They are:
  * ``setup.py`` builds no C++ extension (its sources are not in the sdist);
  * ``detectron2/_C.py``: a stub for the compiled module, so ``from detectron2 import _C`` (at import time of
    ``detectron2.layers`` and ``detectron2.evaluation``) works; any compiled op raises
    ``NotImplementedError``. COCOEvaluator therefore needs ``use_fast_impl=False``, which ds2d2's trainer sets
    when ``_C`` is this stub;
  * numpy >= 1.24 removed ``np.int`` / ``np.bool`` / ``np.float``: replaced by the builtins they aliased;
  * Pillow >= 10 removed ``Image.LINEAR``: replaced by ``Image.BILINEAR`` (the same filter);
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

# (relative path glob, regex, replacement): each must match at least once, so a changed sdist fails loudly.
PATCHES = [
    ("setup.py", r"ext_modules=get_extensions\(\),", "ext_modules=[],"),
    # formatter for LazyConfig.save only; its pin breaks with click>=8.1
    ("setup.py", r'"black==21.4b2",', ""),
    ("detectron2/**/*.py", r"\bnp\.int\b(?!\d|_)", "int"),
    ("detectron2/**/*.py", r"\bnp\.bool\b(?!_)", "bool"),
    ("detectron2/**/*.py", r"\bnp\.float\b(?!\d|_)", "float"),
    ("detectron2/**/*.py", r"\bImage\.LINEAR\b", "Image.BILINEAR"),
]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def detectron2_importable() -> bool:
    code = "import detectron2, detectron2.layers, detectron2.evaluation"
    return subprocess.call([sys.executable, "-c", code], stderr=subprocess.DEVNULL) == 0


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
    (src / "detectron2" / "_C.py").write_text(STUB_C)


def install_from_sdist() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # The sdist's setup.py imports torch, so metadata generation needs the current env (no isolation).
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", tmp, SDIST)
        archive = next(Path(tmp).glob("pb1*detectron2-0.6.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        src = next(p for p in Path(tmp).iterdir() if p.is_dir())
        patch_sdist(src)
        pip("install", "--no-build-isolation", str(src))


def main() -> None:
    source = os.environ.get("DETECTRON2_SOURCE")
    if source:
        pip("install", "--no-build-isolation", source)
    elif detectron2_importable():
        print("install_detectron2: an importable detectron2 is present; leaving it alone")
        return
    else:
        install_from_sdist()
    if not detectron2_importable():
        raise SystemExit("install_detectron2: detectron2 still does not import; see the pip output above")


if __name__ == "__main__":
    main()
