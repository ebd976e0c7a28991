"""Every checkpoint and output file of ds2d2 is read, written and fitted to a model here.

- Writing (``atomic_write``, ``atomic_path``): to a temporary file in the same folder, flushed to disk and
  renamed over the target (``os.replace``), so a crash while saving leaves the previous file intact (at worst
  a stale hidden ``.*.tmp`` file). Training checkpoints and their ``last_checkpoint`` tag, exported students,
  ONNX files and the DOTA patch cache all go through it.
- Reading (``read_checkpoint``): every weights file, whatever its name, goes through it: ``MODEL.WEIGHTS`` and
  ``--resume`` (``AtomicCheckpointer``), ``--eval-only`` (``load_for_evaluation``), teacher and amplifier
  weights, the tools. Detectron2 ``.pkl`` files (model zoo, Caffe2 conversions) are plain pickles; they are
  read with an unpickler that only builds builtin containers and NumPy arrays. Every other file (``.pth``,
  ``.pt``, pycls ``.pyth``, no extension) is read with ``torch.load(weights_only=True)``, passed explicitly,
  which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` does not override: tensors and plain containers only. So a
  crafted file cannot run code; it, or a truncated or corrupt one, is an error naming it.
- Fitting (``load_state_strictly``): Detectron2's checkpointer loads non-strictly and only logs what did not
  match, which silently leaves a random teacher when a path or a depth is wrong. Everything ds2d2 loads into a
  frozen or exported model is loaded strictly instead: an error names the config key (or command-line flag),
  the file and the offending tensors. ``load_for_evaluation`` likewise refuses weights that leave any of the
  model's tensors at its initialisation.
"""
import contextlib
import logging
import os
import pickle
import tempfile
from typing import IO, Any, Callable, Dict, Iterator

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

from .compat import load_state_with_report, with_file_reader

__all__ = [
    "AtomicCheckpointer",
    "CheckpointError",
    "MissingCheckpointError",
    "atomic_path",
    "atomic_write",
    "load_for_evaluation",
    "load_state_strictly",
    "read_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, corrupt or not loadable without running pickled code."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file (also a FileNotFoundError)."""


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, durable: bool = True) -> Iterator[str]:
    """A temporary path next to ``path`` for the caller to write; renamed to ``path`` when the block ends
    without error, removed otherwise. The parent folder is created. With ``durable`` (the default) the file
    and the rename are synced to disk first; ``durable=False`` skips the syncs, for caches that can be
    rebuilt (the rename is still atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename durable where the platform allows it
            _fsync(folder)


def atomic_write(path: str, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path, durable) as tmp:
        with open(tmp, "wb") as f:
            write(f)


# The globals that pickles of NumPy arrays and builtin containers refer to (NumPy 1 and 2 module names,
# pickle protocols 2 to 5); anything else in a .pkl is refused before it is called.
_PKL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", f) for core in ("core", "_core") for f in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PKL_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _read_weights_only(path: str) -> Any:
    try:
        # weights_only passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides an unset argument
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler refused something
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read with weights_only=True: it is corrupt, or it holds "
            "objects other than tensors and plain containers, which ds2d2 does not unpickle (it reads every "
            f"weights file but Detectron2 .pkl ones weights-only) because that can run code ({reason})."
        ) from e


def _pycls_weights(path: str, data: Any) -> Dict:
    """A pycls ``.pyth`` checkpoint (``model_state``) as Detectron2 reads it: names matched heuristically."""
    if not isinstance(data, dict) or "model_state" not in data:
        raise CheckpointError(
            f"Checkpoint '{path}' has no 'model_state': .pyth files are read as pycls checkpoints; rename "
            "it to .pth if it is a PyTorch state dict."
        )
    weights = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": weights, "__author__": "pycls", "matching_heuristics": True}


def _read_pkl(path: str) -> Dict:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise CheckpointError(
            f"Checkpoint '{path}' refers to '{e}'; ds2d2 reads .pkl files with an unpickler that only builds "
            "NumPy arrays and builtin containers, and does not run code stored in them."
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(data).__name__}, not a dict of arrays.")
    if "model" in data and "__author__" in data:  # Detectron2 model zoo format
        return data
    blobs = data.get("blobs", data)  # Caffe2 / Detectron1 models: names are matched heuristically
    weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def _read_file(path: str) -> Dict:
    if not os.path.isfile(path):
        raise MissingCheckpointError(f"checkpoint '{path}' does not exist.")
    try:
        if path.endswith(".pkl"):
            data = _read_pkl(path)
        elif path.endswith(".pyth"):
            data = _pycls_weights(path, _read_weights_only(path))
        else:
            data = _read_weights_only(path)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, bad pickle stream, ...
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read; it is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'})."
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(data).__name__}, not a dict.")
    return data if "model" in data else {"model": data}


def read_checkpoint(path: str, key: str = "") -> Dict:
    """The dict in a weights file, with ``"model"`` set: a Detectron2 ``.pkl`` read arrays-only, any other
    file (``.pth``, ``.pt``, pycls ``.pyth``, no extension) weights-only.

    ``key`` (a config key or flag) starts every error message. Raises ValueError if ``path`` is empty,
    MissingCheckpointError (a FileNotFoundError) if it names no file, CheckpointError if the file is
    truncated, corrupt or holds code.
    """
    if not path:
        raise ValueError(f"{key or 'checkpoint path'} is empty: set it to a checkpoint file.")
    try:
        return _read_file(path)
    except CheckpointError as e:
        if not key:
            raise
        raise type(e)(f"{key}: {e}") from e


def load_state_strictly(model: nn.Module, checkpoint: Dict, key: str, path: str, prefix: str = "") -> None:
    """Load the tensors of ``checkpoint['model']`` whose names start with ``prefix`` (prefix removed) into
    ``model``; every model tensor must be present with its shape and every loaded tensor used, else a
    ValueError naming ``key``, ``path`` and the tensors. Tensors outside ``prefix`` are ignored."""
    state = checkpoint.get("model", checkpoint)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    incompatible = load_state_with_report(model, dict(checkpoint, model=state))
    problems = []
    if incompatible.incorrect_shapes:
        problems.append(
            "shape mismatch: "
            + ", ".join(
                f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes[:8]
            )
        )
    mis_shaped = {s[0] for s in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in mis_shaped]
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file, e.g. {missing[:6]}")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected tensors, e.g. {incompatible.unexpected_keys[:6]}"
        )
    if problems:
        where = f" (under prefix '{prefix}')" if prefix else ""
        raise ValueError(
            f"{key}: weights in '{path}'{where} do not fit the {type(model).__name__} built from its config: "
            + "; ".join(problems)
            + ". Check that the config (depth, number of classes, head) is the one the weights were "
            "trained with."
        )


class _AtomicSaves(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and a named way out when ``last_checkpoint`` is stale."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Detectron2's ``resume_or_load``; an unreadable file is named with what chose it (``--resume``:
        OUTPUT_DIR/last_checkpoint, else ``MODEL.WEIGHTS``, which is what the trainer passes as ``path``)."""
        key = "--resume" if resume and self.has_checkpoint() else "MODEL.WEIGHTS"
        try:
            return super().resume_or_load(path, resume=resume)
        except CheckpointError as e:
            raise type(e)(f"{key}: {e}") from e

    def get_checkpoint_file(self) -> str:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        with open(tag) as f:
            name = f.read().strip()
        path = os.path.join(self.save_dir, name)
        if not name or not os.path.isfile(path):
            hint = self._other_checkpoints(path)
            raise CheckpointError(f"'{tag}' names '{name}', which does not exist. {hint}")
        return path

    def _other_checkpoints(self, bad: str) -> str:
        others = sorted(os.path.basename(p) for p in self.get_all_checkpoint_files() if p != bad)
        if not others:
            return "There is no other checkpoint in this folder: start without --resume."
        return (
            f"Write the name of an earlier checkpoint (one of {others}) into last_checkpoint and resume "
            "again, or start without --resume."
        )


def _read_safely(checkpointer: _AtomicSaves, filename: str) -> Dict:
    """Every file through ``read_checkpoint``; a bad file in the run's own folder names the other checkpoints
    to resume from. It replaces Detectron2's reader, which unpickles ``.pkl`` and ``.pyth`` files with code,
    and other files with ``torch.load`` defaults that an environment variable can turn to full unpickling."""
    try:
        return read_checkpoint(filename)
    except CheckpointError as e:
        if os.path.dirname(os.path.abspath(filename)) != os.path.abspath(checkpointer.save_dir or "."):
            raise
        raise CheckpointError(f"{e} {checkpointer._other_checkpoints(filename)}") from e


AtomicCheckpointer = with_file_reader(_AtomicSaves, _read_safely, "AtomicCheckpointer")
AtomicCheckpointer.__doc__ = "DetectionCheckpointer: atomic saves, safe loading, errors naming bad files."


def load_for_evaluation(model: nn.Module, path: str, key: str) -> None:
    """Load the weights file ``path`` (local, or a Detectron2 URL such as ``detectron2://...``, downloaded
    first) into ``model`` as Detectron2's checkpointer does (``.pkl`` / ``.pyth`` names matched
    heuristically, mis-shaped tensors skipped), read by ``read_checkpoint``. Raises ValueError, naming
    ``key``, the file and how many of the model's tensors it filled (e.g. "0 of 312"), unless it fills all:
    an evaluation of a model left partly at its random initialisation means nothing. Tensors of the file
    that the model does not have are only logged (a stage-3 checkpoint evaluated with its own config has
    none; other files may carry extra heads)."""
    checkpoint = read_checkpoint(PathManager.get_local_path(path) if path else path, key)
    file_names = sorted(checkpoint["model"])
    model_names = list(model.state_dict())
    # the names the model is given (after name matching and mis-shaped tensors are dropped); its missing_keys
    # would not do: FrozenBatchNorm2d quietly puts its initial statistics in for a file without them
    given = set()
    hook = model.register_load_state_dict_pre_hook(lambda module, state, *_: given.update(state))
    try:
        report = load_state_with_report(model, checkpoint)
    finally:
        hook.remove()
    missing = [name for name in model_names if name not in given]
    if missing:
        mis_shaped = "".join(
            f"; {name} has shape {tuple(file_shape)} in the file, {tuple(model_shape)} in the model"
            for name, file_shape, model_shape in report.incorrect_shapes[:3]
        )
        filled = len(model_names) - len(missing)
        raise ValueError(
            f"{key}: '{path}' fills {filled} of {len(model_names)} tensors of the {type(model).__name__} "
            "built from the config, so its evaluation would use randomly initialised ones. Missing e.g. "
            f"{missing[:4]}{mis_shaped}; the file holds e.g. {file_names[:4]}. Give the "
            "checkpoint this config trained (same META_ARCHITECTURE, depth, class count); a stage-3 "
            "(DS2D2Distiller) checkpoint is evaluated with its own config, or exported first with "
            "tools/export_student.py."
        )
    if report.unexpected_keys:
        logging.getLogger(__name__).warning(
            f"{key}: {len(report.unexpected_keys)} tensors of '{path}' are not in the model and were not "
            f"loaded, e.g. {report.unexpected_keys[:4]}."
        )
