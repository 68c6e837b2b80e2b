"""Evaluation on a split and true forecasts past the end of a file."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import pandas as pd
import torch

from core.engine import UserError, atomic_path, atomic_write, ensure_new, load_module

from .alloc import keep_freed_memory
from .csvread import ReadOptions
from .data import SeriesData, future_timestamps, load_series, metrics


def load_checkpoint(path: str | Path):
    """ForecastModule from a checkpoint (one-line UserError if it is not one)."""
    from .train import ForecastModule

    return load_module(path, ForecastModule)


def data_for(module, data_path: str | Path, fill: bool = False, date_col: Optional[str] = None,
             for_forecast: bool = False) -> SeriesData:
    """Load ``data_path`` with the checkpoint's columns/target/mode.

    Evaluation follows the protocol: the scaler is refitted on the file's own train split (the
    training scaler when it is the training file). A forecast scales with the checkpoint's scaler,
    the one the model was trained with, and needs only the last seq_len rows.
    """
    hp, info = module.hparams, module.hparams.data_info
    return load_series(data_path, hp.seq_len, hp.pred_len, info["features"], info["target"], date_col, fill,
                       scaler_state=info["scaler"] if for_forecast else None,
                       columns=info["columns"], forecast_only=for_forecast,
                       read=ReadOptions.from_dict(info.get("read")), categories=info.get("categories"),
                       n_cov=info.get("n_cov", 0))


# Windows per forward pass in scoring: at most this many input values (windows x seq_len x variates).
# Bigger batches make activations of tens of MB, which the allocator maps and unmaps on every call:
# the page faults then cost more system time than the model costs user time (21 variates, batch 256).
SCORE_VALUES = 2 ** 17


@torch.no_grad()
def predict_split(module, data: SeriesData, split: str, batch_size: Optional[int] = None):
    """(pred, true) on a split, every window (the last partial batch included): (N, H, C_out) each.

    ``batch_size`` defaults to as many windows as fit :data:`SCORE_VALUES` input values."""
    keep_freed_memory()
    module.eval()
    if batch_size is None:
        batch_size = max(1, min(256, SCORE_VALUES // (data.seq_len * len(data.in_cols))))
    ds = data.dataset(split)
    n = len(ds)
    pred = torch.empty(n, data.pred_len, len(data.out_cols))
    true = torch.empty_like(pred)
    for i, (x, y, t) in enumerate(data.loader(split, batch_size)):
        s = i * batch_size
        pred[s:s + len(x)] = module(x, t)
        true[s:s + len(x)] = y
    return pred, true


def evaluate_split(module, data: SeriesData, split: str = "test") -> Dict[str, float]:
    """MSE/MAE normalised and on the original scale, plus the number of windows."""
    pred, true = predict_split(module, data, split)
    out = metrics(pred, true, data.scaler, data.out_cols)
    out["windows"] = int(pred.shape[0])
    return out


@torch.no_grad()
def forecast(module, data: SeriesData) -> pd.DataFrame:
    """The next pred_len steps after the file's last row, original scale, with continued timestamps."""
    module.eval()
    y = module(*data.last_window())[0].double()                    # (H, C_out) scaled
    y = data.scaler.inverse(y, data.out_cols).numpy()
    ts = future_timestamps(data.timestamps, y.shape[0])
    df = pd.DataFrame(y, columns=data.out_names)
    df.insert(0, "date", ts.strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, pd.DatetimeIndex) else ts)
    return df


def write_forecast(df: pd.DataFrame, data: SeriesData, out_csv: str | Path, plot: Optional[str | Path] = None,
                   overwrite: bool = False, history: int = 0) -> None:
    """Write the forecast CSV (and optionally a PNG of history + forecast), atomically."""
    ensure_new([p for p in (out_csv, plot) if p], overwrite)
    with atomic_write(out_csv, overwrite=overwrite, newline="") as f:
        df.to_csv(f, index=False)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hist = history or 4 * len(df)
        names = data.out_names[-4:]  # at most 4 panels
        fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.2 * len(names)), squeeze=False)
        fut = pd.to_datetime(df["date"]) if isinstance(data.timestamps, pd.DatetimeIndex) else df["date"]
        for ax, name in zip(axes[:, 0], names):
            j = data.columns.index(name)
            ax.plot(data.timestamps[-hist:], data.raw[-hist:, j], lw=0.9, label="history")
            ax.plot(fut, df[name].to_numpy(), lw=1.2, label="forecast")
            ax.set_ylabel(name)
        axes[0, 0].legend(loc="upper left")
        fig.tight_layout()
        with atomic_path(plot, overwrite=overwrite, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def check_outputs(paths, overwrite: bool) -> None:
    """UserError before any work if an output exists without --overwrite."""
    ensure_new([p for p in paths if p], overwrite)
    for p in paths:
        if p and not Path(p).parent.exists():
            raise UserError(p, "output folder does not exist")
