"""argparse types of the command-line tools: each refuses a value outside its range, so argparse's error
names the flag (``--threads``, ``--score-thresh``, ``--max-pixels``...) instead of the tool running on a NaN
or a 0."""
import argparse
import math

__all__ = ["fraction", "non_negative_int", "positive_float", "positive_int"]


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A score or IoU threshold: a finite number in [0, 1]."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A scale factor: a finite number > 0."""
    value = _number(text, float, "a number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count or size (threads, pixels, batch): an integer of at least 1."""
    value = _number(text, int, "an integer of at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An overlap in pixels: an integer of at least 0."""
    value = _number(text, int, "an integer of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 0, got {text!r}")
    return value
