"""Interrupted training: SIGTERM/SIGINT stop the run with a non-zero exit and a checkpoint to resume.

Lightning turns SIGTERM into ``SystemExit()`` (exit status 0) and Ctrl-C into ``sys.exit(1)``, so a
script could not tell a killed run from a finished one. :func:`fit_interruptible` turns both into
:class:`TrainingInterrupted`, whose ``exit_code`` is the shell convention 128 + signal number:
**143 for SIGTERM, 130 for SIGINT**. ``checkpoints/last.ckpt`` is kept (Lightning writes it after
every validation; if the first epoch did not finish, the state at the interruption is saved), and
``RUN/interrupted.json`` says what happened. ``train --resume RUN`` continues from ``last.ckpt``.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Iterator

from lightning.pytorch.callbacks import Callback


class TrainingInterrupted(Exception):
    """Training stopped by a signal; ``exit_code`` = 128 + signum, ``checkpoint`` = last.ckpt."""

    def __init__(self, signum: int, run_dir: Path, checkpoint: Path):
        self.signum, self.run_dir, self.checkpoint = int(signum), Path(run_dir), Path(checkpoint)
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(f"training interrupted by {name}; last checkpoint {checkpoint}")


class SaveOnInterrupt(Callback):
    """On an exception inside ``fit``: write ``last.ckpt`` if no epoch has written one yet."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = Path(ckpt_dir)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        last = self.ckpt_dir / "last.ckpt"
        if not last.is_file() and isinstance(exception, (KeyboardInterrupt, SystemExit)):
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(last))


@contextlib.contextmanager
def record_signals() -> Iterator[Dict[str, int]]:
    """Record SIGTERM/SIGINT in the yielded dict (``{"signum": n}``). SIGINT still raises
    KeyboardInterrupt; SIGTERM only records (Lightning's own handler, which it chains to this one,
    stops the loop). Handlers are restored on exit; outside the main thread nothing is installed."""
    got: Dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def on_term(signum, frame):
        got.setdefault("signum", signum)

    def on_int(signum, frame):
        got.setdefault("signum", signum)
        raise KeyboardInterrupt

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit_interruptible(trainer, run_dir: Path, *fit_args: Any, **fit_kwargs: Any) -> None:
    """``trainer.fit(*fit_args, **fit_kwargs)``; a SIGTERM/SIGINT raises :class:`TrainingInterrupted`
    (after ``last.ckpt`` is on disk, see :class:`SaveOnInterrupt`, which the trainer must have)."""
    with record_signals() as got:
        try:
            trainer.fit(*fit_args, **fit_kwargs)
        except (SystemExit, KeyboardInterrupt):
            if "signum" not in got and not getattr(trainer, "received_sigterm", False):
                raise
            got.setdefault("signum", int(signal.SIGTERM))
        if "signum" in got or getattr(trainer, "received_sigterm", False):
            raise TrainingInterrupted(got.get("signum", int(signal.SIGTERM)), run_dir,
                                      Path(run_dir) / "checkpoints" / "last.ckpt")
