#!/usr/bin/env python
"""``train_net.py`` with the benchmarks' baseline meta-architecture (FitNetDistiller) registered.

    python benchmarks/train.py --config-file CFG [train_net.py flags] [KEY VALUE ...]
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import benchmarks.fitnet  # noqa: E402,F401  (registers FitNetDistiller)

if __name__ == "__main__":
    sys.argv[0] = os.path.join(ROOT, "train_net.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
