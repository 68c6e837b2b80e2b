"""Lightning Trainer factory and checkpoint loading shared by every app."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Type, TypeVar

import torch

from .config import parse_max_time
from .errors import UserError
from .optim import budget_fraction, poly_lr_scheduler  # noqa: F401  (moved to optim; old import path kept)

M = TypeVar("M")


def seed_everything(seed: Optional[int]) -> Optional[int]:
    """Seed Python, NumPy and torch (and data-loader workers); ``None`` does nothing."""
    if seed is None:
        return None
    import lightning

    return lightning.seed_everything(int(seed), workers=True, verbose=False)


def _quiet_lightning() -> None:
    # Lightning's tips about workers and tensor cores are noise for our users.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")


def make_trainer(out_dir: str | Path, max_epochs: Optional[int] = None, max_time: Optional[str] = None,
                 accelerator: str = "auto", devices: Any = "auto", num_nodes: int = 1,
                 strategy: Any = "auto", precision: Any = "32-true", monitor: Optional[str] = None,
                 mode: str = "min", progress: bool = True, loggers: Sequence[str] = ("csv", "tensorboard"),
                 callbacks: Iterable[Any] = (), save_last: bool = True, resume: bool = False, **trainer_kwargs):
    """A ``lightning.Trainer`` writing everything under ``out_dir``.

    - logs: ``out_dir/logs/`` (CSV ``metrics.csv`` and TensorBoard events)
    - checkpoints: ``out_dir/checkpoints/best.ckpt`` (by ``monitor``, if given) and ``last.ckpt``
    - progress: Rich progress bar on a terminal, Lightning's plain bar otherwise
    - ``max_time`` in Lightning's ``DD:HH:MM:SS``; CPU, one or many GPUs and nodes
      through ``accelerator``/``devices``/``num_nodes``/``strategy`` (e.g. "ddp").
    - ``resume=True`` (a run continued from its ``last.ckpt``): the CSV rows logged before the
      interruption move to ``logs/metrics.partN.csv``; Lightning's CSV logger would rewrite them.
    Extra keywords go to ``lightning.Trainer``.
    """
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.plugins.io import CheckpointIO

    from .checkpoint import safe_checkpoint_io

    _quiet_lightning()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cbs = list(callbacks)
    ckpt_dir = out / "checkpoints"
    if trainer_kwargs.get("enable_checkpointing", True):
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                   save_top_k=1, save_last=save_last, auto_insert_metric_name=False,
                                   enable_version_counter=False))  # a reused run dir keeps best.ckpt, not best-v1
    if progress:
        import sys

        from .progress_log import make_log_progress_bar

        # a bar on a terminal; in a log, a line every few seconds (SSM_PROGRESS_EVERY)
        cbs.append(RichProgressBar(leave=True) if sys.stderr.isatty() else make_log_progress_bar())
    logs = []
    old = out / "logs" / "metrics.csv"
    if resume and old.is_file():
        from .cli import is_rank_zero

        if is_rank_zero():
            k = 1
            while (out / "logs" / f"metrics.part{k}.csv").exists():
                k += 1
            old.rename(out / "logs" / f"metrics.part{k}.csv")
    if "csv" in loggers:
        logs.append(CSVLogger(out, name="logs", version=""))
    if "tensorboard" in loggers:
        try:
            logs.append(TensorBoardLogger(out, name="logs", version="", default_hp_metric=False))
        except ModuleNotFoundError:  # tensorboard is optional at run time
            pass
    trainer_kwargs.setdefault("log_every_n_steps", 10)
    if max_epochs is None and max_time is None:
        max_epochs = 10
    if accelerator == "auto" and not torch.cuda.is_available():
        accelerator = "cpu"
    plugins = trainer_kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(pl, CheckpointIO) for pl in plugins):
        # resuming (fit/validate/test with ckpt_path=...) reads checkpoints through safe_load too
        trainer_kwargs["plugins"] = plugins + [safe_checkpoint_io()]
    return lightning.Trainer(
        default_root_dir=str(out), max_epochs=max_epochs if max_epochs is not None else -1,
        max_time=parse_max_time(max_time), accelerator=accelerator, devices=devices,
        num_nodes=num_nodes, strategy=strategy, precision=precision, callbacks=cbs,
        logger=logs or False, enable_progress_bar=progress, enable_model_summary=False,
        **trainer_kwargs)


def best_or_last_checkpoint(out_dir: str | Path) -> Path:
    """``out_dir/checkpoints/best.ckpt`` if present, else ``last.ckpt``."""
    ck = Path(out_dir) / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        if (ck / name).is_file():
            return ck / name
    raise UserError(ck, "no checkpoint was written")


def load_module(ckpt_path: str | Path, module_cls: Type[M], map_location: Any = "cpu", **kwargs) -> M:
    """Load a LightningModule whose config travels in the checkpoint (``save_hyperparameters``).

    The file is read with ``weights_only=True`` and the allow-list of :mod:`core.engine.checkpoint`,
    so a checkpoint carrying other Python objects is refused, never executed. Any failure becomes a
    one-line :class:`UserError` naming the file.
    """
    import pickle

    from .checkpoint import precheck, refusal, safe_globals

    p = precheck(ckpt_path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            module = module_cls.load_from_checkpoint(str(p), map_location=map_location, weights_only=True,
                                                     **kwargs)
    except UserError:
        raise
    except pickle.UnpicklingError as e:  # a pickled object outside the allow-list: never executed
        raise refusal(p, str(e)) from None
    except Exception as e:  # corrupt zip, wrong app, missing keys...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(p, f"not a valid {module_cls.__name__} checkpoint ({first})") from None
    module.eval()
    return module


def resolve_device(device: str = "cpu") -> torch.device:
    """``--device`` as a ``torch.device``; one-line :class:`UserError` when it is not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError("--device", f"expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device", f"{device} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError("--device", f"{device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("--device", "mps requested but not available")
    return dev


def progress(iterable: Iterable, description: str = "working", total: Optional[int] = None):
    """Iterate with a Rich progress bar on stderr; in a log (stderr not a terminal) a line every few
    seconds instead (hidden when ``SSM_NO_PROGRESS=1``)."""
    if os.environ.get("SSM_NO_PROGRESS") == "1":
        yield from iterable
        return
    import sys

    if not sys.stderr.isatty():
        from .progress_log import log_progress

        yield from log_progress(iterable, description, total)
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(iterable, description=description, total=total, console=Console(stderr=True),
                     transient=False)

