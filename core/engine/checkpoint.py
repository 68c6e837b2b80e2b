"""Checkpoints that can never run code: every load goes through ``torch.load(weights_only=True)``.

A checkpoint may hold tensors, plain containers (dict, list, tuple, str, numbers, None) and the
few config types listed in :func:`safe_globals`; anything else (a pickled class, a function to call
on load) is refused with one line naming the file, before any of it is executed. ``predict`` is
meant for machines that receive checkpoints from elsewhere.
"""
from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, List, Union

from .errors import UserError

PathLike = Union[str, "Path"]
REFUSAL = "it contains Python objects other than weights and plain config"


class UnsafeCheckpointError(UserError):
    """A checkpoint whose pickle names a Python object outside the allow-list."""


def safe_globals() -> List[Any]:
    """The allow-list: the config types our checkpoints may hold besides tensors and plain containers.

    Lightning writes ``hyper_parameters`` as a plain ``dict`` (not its ``AttributeDict``), optimiser
    and scheduler states and callback states as dicts of numbers, strings and tensors. Beyond that a
    config may carry ``pathlib`` paths and NumPy scalars (``np.float32(0.5)`` from a metric or a
    threshold); both are rebuilt from their parts, never by calling arbitrary code.
    """
    import pathlib

    out: List[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import scalar
        out += [scalar, np.dtype] + [type(np.dtype(t)) for t in
                                     ("bool", "int8", "int16", "int32", "int64", "uint8", "float16",
                                      "float32", "float64")]
    except ImportError:  # pragma: no cover
        pass
    return out


def refusal(p: Path, detail: str = "") -> UnsafeCheckpointError:
    """The one-line refusal for ``p``, naming the offending global when ``detail`` (torch's message) does."""
    m = re.search(r"GLOBAL ([\w.]+)|\[([\w.]+)\]", detail)
    what = f" ({m.group(1) or m.group(2)})" if m else ""
    return UnsafeCheckpointError(f"refusing to load {p}: {REFUSAL}{what}")


def _is_pickle(p: Path) -> bool:
    # pickletools only parses opcodes: nothing is imported or called
    try:
        with open(p, "rb") as f:
            for _ in pickletools.genops(f):
                pass
        return True
    except Exception:
        return False


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the project's allow-list.

    Raises :class:`UnsafeCheckpointError` (one line: "refusing to load PATH: it contains Python
    objects other than weights and plain config") when the file pickles anything else, and
    :class:`UserError` when it is missing or not a checkpoint at all.
    """
    import pickle

    import torch

    p = precheck(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(str(p), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise refusal(p, str(e)) from None
    except Exception as e:  # truncated zip, unreadable storage...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(p, f"not a readable checkpoint ({first})") from None


def precheck(path: PathLike) -> Path:
    """``path`` as a Path if it is a file that could be a checkpoint (a zip or a pickle), else a
    one-line :class:`UserError`. Reads the bytes only; nothing is unpickled."""
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "checkpoint not found")
    if not zipfile.is_zipfile(p) and not _is_pickle(p):
        raise UserError(p, "not a checkpoint (not a file written by torch.save or Lightning)")
    return p


def check_checkpoint(path: PathLike) -> Path:
    """Validate ``path`` with :func:`safe_load` (same errors) and return it as a Path."""
    safe_load(path)
    return Path(path)


def _safe_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        """Lightning's checkpoint I/O, but every load (``Trainer.fit/validate/test(ckpt_path=...)``)
        goes through :func:`safe_load`."""

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return safe_load(path, map_location=map_location if map_location is not None else "cpu")

    return SafeCheckpointIO


def safe_checkpoint_io():
    """A ``lightning`` ``CheckpointIO`` plugin whose loads go through :func:`safe_load`."""
    return _safe_checkpoint_io()()
