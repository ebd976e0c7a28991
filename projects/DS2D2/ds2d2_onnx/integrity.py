"""Refusing a corrupt model file that onnxruntime loads without complaint: bytes overwritten inside its
weights (a bad copy, a bad disk) give NaN or infinite weights, every output NaN, and zero detections that
look like an empty scene.

- ``check_finite_weights``: at load, every floating-point weight (the graph's initializers and Constant
  nodes) must be finite. Reading them needs the ``onnx`` package (``pip install -e .[deploy]``); on a
  deployment machine with onnxruntime only, this check is skipped and the next one guards alone.
- ``check_finite_outputs``: the raw outputs of the graph on the first image must be finite (a healthy
  detector's are: scores come from sigmoid/softmax, boxes from clamped deltas).
"""
from typing import Dict, Iterator, List, Tuple

import numpy as np

from .metadata import DeployFileError

try:
    import onnx
    from onnx import numpy_helper
except ImportError:  # a deployment with onnxruntime only
    onnx = None

# onnx.TensorProto data types holding floating-point values: FLOAT, FLOAT16, DOUBLE, BFLOAT16
FLOAT_DATA_TYPES = (1, 10, 11, 16)


def _weights(graph) -> Iterator:
    """The TensorProtos of ``graph``'s initializers and of its Constant nodes' values."""
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant":
            yield from (a.t for a in node.attribute if a.name == "value")


def _non_finite_count(values: np.ndarray) -> int:
    if values.dtype.kind != "f":  # bfloat16 (an ml_dtypes type): widened exactly to float32
        values = values.astype(np.float32)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def check_finite_weights(path: str) -> None:
    """DeployFileError naming ``path`` and the first weight tensor holding a NaN or an infinity; does
    nothing when the ``onnx`` package is not installed."""
    if onnx is None:
        return
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf's DecodeError and others: onnxruntime read it, onnx cannot
        raise DeployFileError(f"onnx cannot read the weights of '{path}': {type(e).__name__}: {e}") from e
    bad: List[Tuple[str, int, int]] = []
    for tensor in _weights(model.graph):
        if tensor.data_type in FLOAT_DATA_TYPES:
            values = numpy_helper.to_array(tensor)
            count = _non_finite_count(values)
            if count:
                bad.append((tensor.name, count, values.size))
    if bad:
        name, count, size = bad[0]
        raise DeployFileError(
            f"'{path}' is corrupt: its weight tensor '{name}' holds {count} NaN or infinite values (of "
            f"{size}; {len(bad)} tensor(s) affected). Copy the file again or re-export it "
            "(tools/export_student.py --format onnx)."
        )


def check_finite_outputs(path: str, outputs: Dict[str, np.ndarray]) -> None:
    """DeployFileError naming ``path`` and the first of the graph's ``outputs`` (name -> array) holding a
    NaN or an infinity."""
    for name, values in outputs.items():
        count = _non_finite_count(np.asarray(values))
        if count:
            raise DeployFileError(
                f"'{path}' gives NaN or infinite values in its output '{name}' ({count} of {values.size}) on "
                "its first image: its weights are corrupt, or the model diverged in training. Copy the file "
                "again or re-export it from a healthy checkpoint (tools/export_student.py --format onnx)."
            )
