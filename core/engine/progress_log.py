"""Progress that also reads well in a log file: a line every few seconds when stderr is not a terminal.

``SSM_PROGRESS_EVERY`` (seconds, default 5) sets the interval; ``SSM_NO_PROGRESS=1`` silences it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("SSM_PROGRESS_EVERY", "5")))
    except ValueError:
        return 5.0


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def log_progress(iterable: Iterable, description: str = "working", total: Optional[int] = None,
                 stream=None, interval: Optional[float] = None):
    """Yield from ``iterable``, printing ``description: i/total (elapsed)`` on ``stream`` (stderr) at
    the first item, at most every ``interval`` seconds, and at the end."""
    stream = stream or sys.stderr
    interval = every_s() if interval is None else interval
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    t0 = last = time.monotonic()
    of = f"/{total}" if total is not None else ""
    print(f"{description}: 0{of}", file=stream, flush=True)
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= interval:
            last = now
            print(f"{description}: {i}{of} ({_fmt_s(now - t0)})", file=stream, flush=True)
    print(f"{description}: {i}{of} done ({_fmt_s(time.monotonic() - t0)})", file=stream, flush=True)


def make_log_progress_bar(interval: Optional[float] = None):
    """A Lightning progress bar for logs: one line per ``interval`` seconds of training (epoch, step,
    the progress-bar metrics) and one at the end of each epoch with its validation metrics."""
    from lightning.pytorch.callbacks import ProgressBar

    class LogProgressBar(ProgressBar):
        def __init__(self):
            super().__init__()
            self._enabled = True
            self.interval = every_s() if interval is None else interval
            self._t0 = self._last = time.monotonic()
            self._step = 0

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def _line(self, trainer, pl_module, what: str) -> None:
            if not self._enabled or not trainer.is_global_zero:
                return
            metrics = self.get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            max_ep = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
            total = self.total_train_batches
            steps = f"/{total}" if isinstance(total, int) else ""
            print(f"{what} epoch {trainer.current_epoch + 1}{max_ep} step {self._step}{steps}  {shown}  "
                  f"({_fmt_s(time.monotonic() - self._t0)})", file=sys.stderr, flush=True)

        def on_train_start(self, trainer, pl_module):
            self._t0 = self._last = time.monotonic()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._step = batch_idx + 1
            now = time.monotonic()
            if now - self._last >= self.interval or batch_idx == 0 and trainer.current_epoch == 0:
                self._last = now
                self._line(trainer, pl_module, "train")

        def on_train_epoch_end(self, trainer, pl_module):
            self._last = time.monotonic()
            self._line(trainer, pl_module, "done ")

    return LogProgressBar()
