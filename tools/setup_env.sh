#!/usr/bin/env bash
# Create ./.venv with everything ds2d2 needs, from PyPI only. Idempotent: `make setup` skips it when the
# stamp .venv/.ds2d2-setup is newer than this script, setup.cfg and tools/install_detectron2.py.
#
# torch/torchvision: 2.14.1/0.29.1 (a CPU torch 2.13 breaks torchvision), unless the venv already imports torch.
# detectron2: see tools/install_detectron2.py ($DETECTRON2_SOURCE overrides it).
# If the system python already imports detectron2 (a user's official build), the venv is created with
# --system-site-packages so that build (and its torch) is used as is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import detectron2, torch" 2>/dev/null; then
    echo "setup: $PY already imports detectron2 and torch; the venv will see them (--system-site-packages)"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
VPY=.venv/bin/python
pip() { "$VPY" -m pip "$@"; }

# setuptools: torch 2.14 requires >= 77.0.3; pkg_resources (imported by pytorch_wavelets and detectron2.model_zoo)
# is gone from 81 on. Every install below repeats the pin, or pip would upgrade it to satisfy torch's bare range.
SETUPTOOLS="setuptools>=77.0.3,<81"
pip install -q "$SETUPTOOLS" wheel
"$VPY" -c "import torch, torchvision" 2>/dev/null || pip install torch==2.14.1 torchvision==0.29.1 "$SETUPTOOLS"
"$VPY" tools/install_detectron2.py
# pytorch-wavelets does not declare PyWavelets. dotadevkit's own requirements name the GUI build of
# opencv-contrib; the headless build provides the same cv2 without libGL, so its deps are installed by hand.
# defusedxml: XML annotations are parsed with entity expansion and external entities refused.
pip install -q PyWavelets pytorch-wavelets "fvcore>=0.1.5,<0.1.6" pycocotools opencv-contrib-python-headless \
  shapely click Cython matplotlib pytest "defusedxml==0.7.1" "$SETUPTOOLS"
# ONNX export and inference (tools/export_student.py --format onnx, ds2d2_onnx): torch 2.14's exporter
# (torch.onnx.export(dynamo=True)) translates through onnxscript; onnxruntime runs the files.
pip install -q onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 "$SETUPTOOLS"
pip install -q --no-deps --no-build-isolation dotadevkit==1.3.0
pip install -q --no-build-isolation -e .
"$VPY" -c "import pkg_resources, detectron2, detectron2.layers, detectron2.evaluation, pytorch_wavelets, dotadevkit, cv2, ds2d2"
"$VPY" -c "import onnx, onnxscript, onnxruntime, ds2d2.deploy, ds2d2_onnx"
touch .venv/.ds2d2-setup
echo "setup: .venv ready"
