"""Atomic writes: output appears whole or not at all, and never clobbers without consent."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Union

from .errors import UserError

PathLike = Union[str, os.PathLike]


def ensure_new(paths: Union[PathLike, Iterable[PathLike]], overwrite: bool = False) -> None:
    """Raise :class:`UserError` if any of ``paths`` exists and ``overwrite`` is False."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise UserError(p, "already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_path(path: PathLike, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    For writers that want a file name (nibabel, wfdb, torch.save). On error
    the temporary file is removed and ``path`` is untouched. ``suffix`` keeps
    an extension some writers need (``.nii.gz``).
    """
    path = Path(path)
    ensure_new(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", overwrite: bool = False,
                 encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it onto ``path`` on success."""
    binary = "b" in mode
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding,
                  newline=None if binary else newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_save(obj, path: PathLike, overwrite: bool = False) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch

    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(obj, tmp)


def write_json(path: PathLike, obj, overwrite: bool = True) -> None:
    """Write ``obj`` as indented JSON atomically (overwrites by default: run-owned files)."""
    with atomic_write(path, overwrite=overwrite) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
