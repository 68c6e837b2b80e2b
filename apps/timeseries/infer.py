"""Evaluate and forecast: scoring a checkpoint on a split, and true forecasts past the end of a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import pandas as pd
import torch

from core.engine import (UserError, atomic_path, atomic_write, ensure_new, load_module, resolve_checkpoint,
                         resolve_device, write_json)

from .alloc import keep_freed_memory
from .csvread import ReadOptions
from .data import SeriesData, future_timestamps, load_series, metrics
from .module import ForecastModule


def load_checkpoint(path: str | Path, device: str = "cpu") -> ForecastModule:
    """ForecastModule from a checkpoint file or a run folder (its best, else last checkpoint), on
    ``device`` (one-line UserError if it is not one)."""
    return load_module(resolve_checkpoint(path), ForecastModule).to(resolve_device(device))


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
def predict_split(module, data: SeriesData, split: str, batch_size: Optional[int] = None, num_workers: int = 0):
    """(pred, true) on a split, every window (the last partial batch included): (N, H, C_out) each,
    on the CPU whatever the module's device.

    ``batch_size`` defaults to as many windows as fit :data:`SCORE_VALUES` input values."""
    keep_freed_memory()
    module.eval()
    dev = module.device
    if batch_size is None:
        batch_size = max(1, min(256, SCORE_VALUES // (data.seq_len * len(data.in_cols))))
    ds = data.dataset(split)
    n = len(ds)
    pred = torch.empty(n, data.pred_len, len(data.out_cols))
    true = torch.empty_like(pred)
    for i, (x, y, t) in enumerate(data.loader(split, batch_size, num_workers)):
        s = i * batch_size
        pred[s:s + len(x)] = module(x.to(dev), t.to(dev)).cpu()
        true[s:s + len(x)] = y
    return pred, true


def evaluate_split(module, data: SeriesData, split: str = "test", num_workers: int = 0) -> Dict[str, float]:
    """MSE/MAE normalised and on the original scale, plus the number of windows."""
    pred, true = predict_split(module, data, split, num_workers=num_workers)
    out = metrics(pred, true, data.scaler, data.out_cols)
    out["windows"] = int(pred.shape[0])
    return out


@torch.no_grad()
def forecast(module, data: SeriesData) -> pd.DataFrame:
    """The next pred_len steps after the file's last row, original scale, with continued timestamps."""
    module.eval()
    y = module(*(v.to(module.device) for v in data.last_window()))[0].double().cpu()  # (H, C_out) scaled
    y = data.scaler.inverse(y, data.out_cols).numpy()
    ts = future_timestamps(data.timestamps, y.shape[0])
    df = pd.DataFrame(y, columns=data.out_names)
    df.insert(0, "date", ts.strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, pd.DatetimeIndex) else ts)
    return df


def write_forecast(df: pd.DataFrame, data: SeriesData, out_csv: str | Path, plot: Optional[str | Path] = None,
                   overwrite: bool = False, history: int = 0, plot_columns: Optional[Sequence[str]] = None) -> None:
    """Write the forecast CSV (and optionally a PNG of history + forecast), atomically.

    The plot has one panel per forecast column (or per name in ``plot_columns``), ``history`` rows of
    the input before the forecast (default 4 forecast lengths), ticks that do not overlap and a title.
    """
    ensure_new([p for p in (out_csv, plot) if p], overwrite)
    names = list(plot_columns) if plot_columns else list(data.out_names)
    unknown = [n for n in names if n not in data.out_names]
    if unknown:
        raise UserError("--plot-columns", f"not forecast columns: {', '.join(unknown)}; "
                                          f"the forecast has {', '.join(data.out_names)}")
    with atomic_write(out_csv, overwrite=overwrite, newline="") as f:
        df.to_csv(f, index=False)
    if plot:
        _plot(df, data, plot, names, history or 4 * len(df), overwrite)


def _plot(df: pd.DataFrame, data: SeriesData, plot: str | Path, names: Sequence[str], hist: int,
          overwrite: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dated = isinstance(data.timestamps, pd.DatetimeIndex)
    fut = pd.to_datetime(df["date"]) if dated else df["date"]
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.9 * len(names) + 1.0), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        j = data.columns.index(name)
        ax.plot(data.timestamps[-hist:], data.raw[-hist:, j], lw=0.9, label="history")
        ax.plot(fut, df[name].to_numpy(), lw=1.2, label="forecast")
        ax.axvline(fut.iloc[0], color="0.6", lw=0.8, ls="--")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axis = axes[-1, 0].xaxis
    if dated:  # at most 8 ticks, labels that say only what changes (no overlapping full dates)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        axis.set_major_locator(locator)
        axis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        axis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    axes[0, 0].legend(loc="upper left", fontsize="small")
    src = Path(str(data.path)).name if getattr(data, "path", None) else "input"
    fig.suptitle(f"{src}: forecast of the next {len(df)} steps after {data.timestamps[-1]} "
                 f"({len(names)} of {len(data.out_names)} columns)")
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


def evaluate_file(checkpoint: str | Path, data_path: str | Path, split: str = "test", out: Optional[str | Path] = None,
                  overwrite: bool = False, fill: bool = False, date_col: Optional[str] = None,
                  device: str = "cpu", num_workers: int = 0) -> dict:
    """``ssm-timeseries evaluate``: MSE/MAE of a checkpoint (file or run folder) on a split of a CSV;
    prints them as JSON and writes them to ``out`` when given."""
    if out:
        ensure_new(out, overwrite)
    ckpt = resolve_checkpoint(checkpoint)
    module = load_checkpoint(ckpt, device)
    data = data_for(module, data_path, fill=fill, date_col=date_col)
    res = dict(split=split, data=str(data_path), checkpoint=str(ckpt),
               **evaluate_split(module, data, split, num_workers=num_workers))
    print(json.dumps(res, indent=2))
    if out:
        write_json(out, res, overwrite=overwrite)
    return res


def forecast_file(checkpoint: str | Path, input_path: str | Path, out: str | Path, plot: Optional[str | Path] = None,
                  overwrite: bool = False, fill: bool = False, date_col: Optional[str] = None,
                  plot_columns: Optional[Sequence[str]] = None, device: str = "cpu") -> pd.DataFrame:
    """``ssm-timeseries forecast``: the pred_len steps after the end of ``input_path`` into ``out``
    (CSV), and a plot of history + forecast when ``plot`` names a PNG."""
    check_outputs([out, plot], overwrite)
    if plot and not str(plot).lower().endswith(".png"):
        raise UserError(plot, "--plot must name a .png file")
    module = load_checkpoint(checkpoint, device)
    data = data_for(module, input_path, fill=fill, date_col=date_col, for_forecast=True)
    df = forecast(module, data)
    write_forecast(df, data, out, plot, overwrite=overwrite, plot_columns=plot_columns)
    print(f"wrote {len(df)} steps ({df['date'].iloc[0]} .. {df['date'].iloc[-1]}) to {out}"
          + (f" and {plot}" if plot else ""))
    return df
