"""What every verb checks and writes around its work: checkpoint and input paths before the heavy
imports, outputs that never replace a user's file, per-item failures, DDP ranks, optional
dependencies and the --max-time budget. Importable without torch."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Union

from .errors import EXIT_BAD_INPUT, EXIT_OK, UserError

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


def resolve_checkpoint(path: Union[str, os.PathLike], flag: str = "--checkpoint") -> Path:
    """A checkpoint file as given, or a run folder's ``checkpoints/best.ckpt``, else ``last.ckpt``
    (the folder may also be the ``checkpoints/`` folder itself). One-line :class:`UserError` otherwise."""
    if path is None:
        raise UserError(flag, "no checkpoint given")
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for folder in (p / "checkpoints", p):
            for name in CHECKPOINT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise UserError(p, "run folder has no checkpoints/best.ckpt or checkpoints/last.ckpt")
    raise UserError(p, "checkpoint not found")


def require_paths(paths: Union[None, str, os.PathLike, Iterable[Union[str, os.PathLike]]], flag: str,
                  kind: str = "any") -> List[Path]:
    """Each of ``paths`` must exist (``kind``: "any", "file" or "dir"); one line naming the first
    missing one otherwise. Call it before the heavy imports."""
    if paths is None:
        raise UserError(flag, "no path given")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(p, f"not found ({flag})")
        if kind == "file" and not p.is_file():
            raise UserError(p, f"is a folder; {flag} expects a file")
        if kind == "dir" and not p.is_dir():
            raise UserError(p, f"is not a folder ({flag} expects one)")
        out.append(p)
    return out


def check_new_output(path: Union[str, os.PathLike, None], overwrite: bool, folder: bool = False) -> Optional[Path]:
    """Refuse an output that would replace what the user has, unless ``overwrite``.

    A file must not exist; a folder (``folder=True``) may exist if empty. Returns the path.
    """
    if path is None:
        return None
    p = Path(path)
    if not is_rank_zero():  # a DDP rank Lightning relaunched: rank 0 checked (and made) it already
        return p
    if folder:
        if p.exists() and not p.is_dir():
            raise UserError(p, "exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not overwrite:
            raise UserError(p, "folder is not empty (pass --overwrite to replace its outputs)")
    else:
        if p.is_dir():
            raise UserError(p, "is a folder; expected a file name")
        if p.exists() and not overwrite:
            raise UserError(p, "already exists (pass --overwrite to replace it)")
    return p


DEMO_MARKER = ".ssm-demo"


def prepare_demo_dir(out: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """The demo's folder, re-runnable as written: a folder an earlier demo made (it holds the
    ``.ssm-demo`` marker) is emptied and reused; any other non-empty folder needs ``overwrite``.
    Rank 0 only prepares it (see :func:`is_rank_zero`)."""
    import shutil

    p = Path(out)
    if not is_rank_zero():
        p.mkdir(parents=True, exist_ok=True)
        return p
    if p.exists() and not p.is_dir():
        raise UserError(p, "exists and is not a folder")
    if p.is_dir() and any(p.iterdir()):
        if not (p / DEMO_MARKER).is_file() and not overwrite:
            raise UserError(p, "folder is not empty and was not made by the demo (pass --overwrite to use it)")
        for child in p.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    p.mkdir(parents=True, exist_ok=True)
    (p / DEMO_MARKER).write_text("made by an ssm-pipelines demo; re-running the demo replaces this folder\n")
    return p


class OutputFolder:
    """``with OutputFolder(path):`` creates the folder if needed and removes it again on the way
    out if it created it and nothing was written into it (no empty folders left behind)."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._created = False

    def __enter__(self) -> Path:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True
        return self.path

    def __exit__(self, *exc) -> bool:
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        return False


class ItemFailures:
    """Per-item failures of a batch command: one line per failed item, one summary line, exit 2.

    ``fail(item, problem)`` prints ``error: ITEM: PROBLEM`` on stderr at once (so logs show it
    where it happened) and counts it; ``finish(total, where)`` prints the summary and returns
    the exit code (0 if nothing failed, 2 otherwise).
    """

    def __init__(self, what: str = "item", stream=None):
        self.what = what
        self.stream = stream
        self.items: List[str] = []

    def fail(self, item: object, problem: Optional[str] = None) -> None:
        """Count and print one failure: ``fail(item, problem)``, or ``fail(line)`` for a ready line
        (a :class:`UserError` message already names its file)."""
        line = " ".join((str(item) if problem is None else f"{item}: {problem}").split())
        self.items.append(line)
        print(f"error: {line}", file=self.stream or sys.stderr, flush=True)

    def __len__(self) -> int:
        return len(self.items)

    def finish(self, total: int, where: Optional[object] = None) -> int:
        ok = total - len(self.items)
        dest = f" to {where}" if where is not None else ""
        plural = "" if total == 1 else "s"
        if not self.items:
            print(f"{total} {self.what}{plural} done{dest}", flush=True)
            return EXIT_OK
        print(f"{len(self.items)} of {total} {self.what}{plural} failed; the other {ok} written{dest}"
              if ok else f"all {total} {self.what}{plural} failed; nothing written", file=self.stream or sys.stderr,
              flush=True)
        return EXIT_BAD_INPUT


def describe_error(e: BaseException, what: str = "file") -> str:
    """An exception raised while reading a user's file, in the user's terms (no Python internals)."""
    import zlib

    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"{what} not found"
    if isinstance(e, PermissionError):
        return f"permission denied reading the {what}"
    if isinstance(e, IsADirectoryError):
        return f"expected a {what}, found a folder"
    if isinstance(e, (EOFError, zlib.error)):
        return f"{what} is truncated or corrupt"
    if isinstance(e, UnicodeDecodeError):
        return f"{what} is not text in the expected format"
    if isinstance(e, MemoryError):
        return f"{what} is too large to load into memory"
    return f"unreadable {what} (malformed or not in the expected format)"


# --------------------------------------------------------------------------------------------------
# Several processes (DDP)


def global_rank() -> int:
    """This process's rank in a multi-process (DDP) run, from the launcher's environment
    (torchrun's RANK; Lightning's NODE_RANK/LOCAL_RANK/WORLD_SIZE; SLURM_PROCID); 0 when alone.

    Readable before the Trainer exists, so a relaunched rank knows at argument-parsing time."""
    env = os.environ
    if env.get("RANK", "").isdigit():
        return int(env["RANK"])
    local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else 0
    node = int(env["NODE_RANK"]) if env.get("NODE_RANK", "").isdigit() else 0
    if node or "LOCAL_RANK" in env:
        per_node = int(env["LOCAL_WORLD_SIZE"]) if env.get("LOCAL_WORLD_SIZE", "").isdigit() else 1
        return node * max(per_node, local + 1) + local  # nonzero on every node but the first
    if env.get("SLURM_PROCID", "").isdigit() and env.get("SLURM_NTASKS", "1") != "1":
        return int(env["SLURM_PROCID"])
    return 0


def is_rank_zero() -> bool:
    """True in the process that prepares run folders and writes outputs (always, without DDP)."""
    return global_rank() == 0


def rank_zero_print(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_rank_zero():
        print(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Optional dependencies and timing


def require_extra(app: str, modules: Iterable[str]) -> None:
    """Exit 2 with ``ssm-APP needs the APP extra: pip install "ssm-pipelines[APP]"`` when any of
    ``modules`` (third-party import names) is not installed. Does not import them."""
    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name.split(".")[0]) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            return False

    missing = [m for m in modules if not importable(m)]
    if missing:
        raise UserError(f'ssm-{app} needs the {app} extra: pip install "ssm-pipelines[{app}]" '
                        f"(missing: {', '.join(missing)})")


class Deadline:
    """Seconds left of a ``--max-time`` budget counted from the start of the command."""

    def __init__(self, max_time: Optional[str]):
        from .config import max_time_seconds

        self.start = time.monotonic()
        self.total = max_time_seconds(max_time)

    def left(self) -> Optional[float]:
        return None if self.total is None else max(0.0, self.total - (time.monotonic() - self.start))

    def as_max_time(self, reserve: float = 0.0) -> Optional[str]:
        """What is left (minus ``reserve`` seconds) as Lightning's ``DD:HH:MM:SS``."""
        left = self.left()
        if left is None:
            return None
        s = max(1, int(left - reserve))
        return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
