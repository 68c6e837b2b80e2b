"""CSV series and the Time-Series-Library (TSLib) long-horizon forecasting protocol.

Protocol (Informer / Time-Series-Library, reproduced exactly):
- ETTh*: train/val/test = 12/4/4 months of hours = 8,640 / 2,880 / 2,880 rows; ETTm* the same
  in 15-minute steps (x4); any other CSV 70% / 10% / 20% (val gets the remainder).
- The val and test parts start ``seq_len`` rows before their border, so their first window
  forecasts the first row after the border.
- ``StandardScaler`` (population std) fitted on the train rows only.
- Windows: x = rows [s, s+L), y = rows [s+L, s+L+H); every start s, stride 1.
- The test loader keeps its last partial batch (several published repos drop it).
- Modes: M (all -> all), S (target -> target), MS (all -> target). The target column is
  moved last, so in MS the model's output channel is the last input channel.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from core.engine import UserError

DATE_NAMES = ("date", "datetime", "timestamp", "time", "ds")
FEATURES = ("M", "S", "MS")


# ----------------------------------------------------------------------------- reading
def read_series(path: str | Path, date_col: Optional[str] = None, fill: bool = False
                ) -> Tuple[pd.DatetimeIndex, pd.DataFrame]:
    """Read a CSV with one date column and numeric columns.

    Returns ``(timestamps, values)`` with ``values`` a float64 DataFrame (rows = time).
    Raises :class:`UserError` (one line naming the file) on: missing file, no date column,
    unparsable/duplicate/unsorted timestamps, non-numeric columns (named), missing values
    (unless ``fill``: linear interpolation in time, then nearest value at the ends).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "file not found")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(p, f"cannot read as CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    if df.shape[1] < 2:
        raise UserError(p, "needs a date column and at least one numeric column")
    col = _find_date_column(p, df, date_col)
    with warnings.catch_warnings():  # mixed formats fall back to dateutil: fine, failures are caught below
        warnings.simplefilter("ignore")
        ts = pd.to_datetime(df[col], errors="coerce")
    bad = ts.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(p, f"unparsable or missing timestamp in column {col!r} at data row {i + 1}: "
                           f"{df[col].iloc[i]!r}")
    values = df.drop(columns=[col])
    non_num = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_num:
        raise UserError(p, f"non-numeric column(s) {non_num}: keep only the date and numeric columns")
    dup = ts.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise UserError(p, f"duplicate timestamp {ts.iloc[i]} at data row {i + 1}")
    if not ts.is_monotonic_increasing:
        i = int(np.flatnonzero(np.diff(ts.to_numpy().astype("datetime64[ns]").astype(np.int64)) < 0)[0]) + 1
        raise UserError(p, f"timestamps not sorted: {ts.iloc[i]} at data row {i + 1} comes after "
                           f"{ts.iloc[i - 1]} (sort the file by time)")
    values = values.astype(np.float64)
    n_missing = int(values.isna().to_numpy().sum())
    if n_missing:
        if not fill:
            cols = [c for c in values.columns if values[c].isna().any()]
            raise UserError(p, f"{n_missing} missing value(s) in column(s) {cols} "
                               "(pass --fill to interpolate them)")
        values = values.set_axis(pd.DatetimeIndex(ts), axis=0).interpolate(method="time", limit_direction="both")
        values = values.ffill().bfill().reset_index(drop=True)
        if values.isna().to_numpy().any():
            raise UserError(p, "a column has no values at all; cannot --fill it")
    return pd.DatetimeIndex(ts), values.reset_index(drop=True)


def _find_date_column(p: Path, df: pd.DataFrame, date_col: Optional[str]) -> str:
    if date_col is not None:
        if date_col not in df.columns:
            raise UserError(p, f"date column {date_col!r} not found; columns: {list(df.columns)}")
        return date_col
    for c in df.columns:
        if str(c).strip().lower() in DATE_NAMES:
            return c
    first = df.columns[0]
    if not pd.api.types.is_numeric_dtype(df[first]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(df[first].head(20), errors="coerce")
        if parsed.notna().all():
            return first
    raise UserError(p, f"no date column found (name one with --date-col); columns: {list(df.columns)}")


def infer_freq(ts: pd.DatetimeIndex) -> pd.Timedelta | pd.DateOffset:
    """Sampling step of the series: pandas' inferred frequency, else the most common difference."""
    with warnings.catch_warnings():  # pandas is changing infer_freq's return type; to_offset takes both
        warnings.simplefilter("ignore")
        f = pd.infer_freq(ts[-min(len(ts), 200):]) if len(ts) >= 3 else None
    if f is not None:
        return pd.tseries.frequencies.to_offset(f)
    d = pd.Series(ts[1:] - ts[:-1]).mode()
    return pd.Timedelta(d.iloc[0]) if len(d) else pd.Timedelta(hours=1)


# Calendar positions count from a Monday midnight, so a phase "mod steps-per-day" is the time of
# day and "mod steps-per-week" the time of week, the same in every file of the series.
EPOCH = pd.Timestamp("1970-01-05")


def _fixed_step(f) -> Optional[pd.Timedelta]:
    try:
        d = pd.Timedelta(f)
    except (ValueError, TypeError):
        return None
    return d if d > pd.Timedelta(0) else None


def step_index(ts: pd.DatetimeIndex) -> np.ndarray:
    """(rows,) int64: each timestamp's position in sampling steps since :data:`EPOCH`.

    Fixed steps (minutes, hours, days) count whole steps; calendar steps (months, business days)
    use pandas period ordinals. Only differences and residues modulo a cycle length are used.
    """
    if ts.tz is not None:
        ts = ts.tz_localize(None)
    f = infer_freq(ts)
    d = _fixed_step(f)
    if d is not None:
        return np.asarray((ts - EPOCH) // d, dtype=np.int64)
    return np.asarray(pd.PeriodIndex(ts, freq=f).asi8, dtype=np.int64)


def auto_cycle_len(ts: pd.DatetimeIndex) -> int:
    """The natural cycle in steps: one day for sub-daily data (24 hourly, 96 at 15 min), a week
    for daily data, a year for monthly (12) and quarterly (4) data; 0 (none) otherwise."""
    f = infer_freq(ts)
    d = _fixed_step(f)
    day = pd.Timedelta(days=1)
    if d is not None:
        if d < day and day % d == pd.Timedelta(0):
            return int(day // d)
        return 7 if d == day else 0
    if isinstance(f, (pd.offsets.MonthEnd, pd.offsets.MonthBegin)):
        return 12
    if isinstance(f, (pd.offsets.QuarterEnd, pd.offsets.QuarterBegin)):
        return 4
    if isinstance(f, pd.offsets.BusinessDay):
        return 5
    return 0


def future_timestamps(ts: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
    """The ``steps`` timestamps after ``ts[-1]`` at the series' inferred frequency."""
    f = infer_freq(ts)
    return pd.DatetimeIndex([ts[-1] + f * (k + 1) for k in range(steps)])


# ----------------------------------------------------------------------------- protocol
def split_kind(path: str | Path) -> str:
    """'ETTh', 'ETTm' (fixed month borders) or 'custom' (70/10/20) from the file name."""
    name = Path(path).name
    if name.startswith("ETTh"):
        return "ETTh"
    if name.startswith("ETTm"):
        return "ETTm"
    return "custom"


def split_borders(n_rows: int, seq_len: int, kind: str) -> Tuple[List[int], List[int]]:
    """TSLib borders: ``(starts, ends)`` of train/val/test row ranges (val/test start seq_len early)."""
    if kind in ("ETTh", "ETTm"):
        per = 24 * 30 * (4 if kind == "ETTm" else 1)  # rows per "month"
        b2 = [12 * per, 16 * per, 20 * per]
        b1 = [0, 12 * per - seq_len, 16 * per - seq_len]
    else:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        b1 = [0, n_train - seq_len, n_rows - n_test - seq_len]
        b2 = [n_train, n_train + n_val, n_rows]
    return b1, b2


@dataclasses.dataclass
class Scaler:
    """Per-column standardisation (population std, like sklearn's StandardScaler)."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, x):
        return (x - self.mean) / self.std

    def inverse(self, x, cols: Optional[Sequence[int]] = None):
        """Undo :meth:`transform` on ``(..., len(cols))`` arrays/tensors (cols = column indices)."""
        m, s = (self.mean, self.std) if cols is None else (self.mean[list(cols)], self.std[list(cols)])
        if isinstance(x, torch.Tensor):
            m, s = torch.as_tensor(m, dtype=x.dtype), torch.as_tensor(s, dtype=x.dtype)
        return x * s + m

    def state(self) -> Dict[str, list]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, d) -> "Scaler":
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


class WindowDataset(Dataset):
    """Sliding windows over a (rows, C) float array.

    item -> ``(x (L, C_in), y (H, C_out), t)`` with ``t`` the step index (:func:`step_index`) of
    the window's first row, an int64 scalar (0 when ``steps`` is not given).
    """

    def __init__(self, data: np.ndarray, seq_len: int, pred_len: int, in_cols: Sequence[int],
                 out_cols: Sequence[int], steps: Optional[np.ndarray] = None):
        self.data = torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32)
        self.steps = torch.as_tensor(steps if steps is not None else np.zeros(len(data), np.int64))
        self.seq_len, self.pred_len = seq_len, pred_len
        self.in_cols, self.out_cols = list(in_cols), list(out_cols)
        self._all_in = self.in_cols == list(range(self.data.shape[1]))

    def __len__(self) -> int:
        return max(0, self.data.shape[0] - self.seq_len - self.pred_len + 1)

    def __getitem__(self, i: int):
        s, m = i, i + self.seq_len
        x = self.data[s:m]
        x = x if self._all_in else x[:, self.in_cols]
        y = self.data[m:m + self.pred_len][:, self.out_cols]
        return x, y, self.steps[s]


@dataclasses.dataclass
class SeriesData:
    """A CSV prepared by the protocol: scaled array, splits, column roles."""
    path: str
    timestamps: pd.DatetimeIndex
    columns: List[str]            # all value columns, target last
    target: str
    features: str
    scaler: Scaler                # fitted on the train rows, all columns
    scaled: np.ndarray            # (rows, C) standardised
    raw: np.ndarray               # (rows, C) original
    borders: Tuple[List[int], List[int]]
    seq_len: int
    pred_len: int
    steps: np.ndarray             # (rows,) int64 calendar position, see step_index

    @property
    def in_cols(self) -> List[int]:
        return [len(self.columns) - 1] if self.features == "S" else list(range(len(self.columns)))

    @property
    def out_cols(self) -> List[int]:
        return list(range(len(self.columns))) if self.features == "M" else [len(self.columns) - 1]

    @property
    def in_names(self) -> List[str]:
        return [self.columns[i] for i in self.in_cols]

    @property
    def out_names(self) -> List[str]:
        return [self.columns[i] for i in self.out_cols]

    def dataset(self, split: str) -> WindowDataset:
        """'train' | 'val' | 'test' windows (val/test begin seq_len rows before their border)."""
        k = {"train": 0, "val": 1, "test": 2}[split]
        b1, b2 = self.borders
        return WindowDataset(self.scaled[b1[k]:b2[k]], self.seq_len, self.pred_len, self.in_cols, self.out_cols,
                             self.steps[b1[k]:b2[k]])

    def loader(self, split: str, batch_size: int, num_workers: int = 0) -> DataLoader:
        """Train: shuffled, drops its last partial batch (as TSLib) unless that would leave no batch at
        all (fewer windows than ``batch_size``); val/test: in order, keep it."""
        train = split == "train"
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) >= batch_size,
                          num_workers=num_workers)

    def last_window(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The input of a true forecast: the final ``seq_len`` rows scaled, (1, L, C_in), and the
        step index of its first row, (1,) int64."""
        x = torch.as_tensor(self.scaled[-self.seq_len:][:, self.in_cols], dtype=torch.float32)
        return x[None], torch.as_tensor(self.steps[-self.seq_len:][:1])


def load_series(path: str | Path, seq_len: int, pred_len: int, features: str = "M",
                target: Optional[str] = "OT", date_col: Optional[str] = None, fill: bool = False,
                split: Optional[str] = None, scaler_state: Optional[dict] = None,
                columns: Optional[Sequence[str]] = None, forecast_only: bool = False) -> SeriesData:
    """Read ``path`` and apply the protocol.

    ``target=None`` picks the last column. ``split`` overrides the file-name rule ('ETTh',
    'ETTm', 'custom'). ``scaler_state``/``columns`` come from a checkpoint when evaluating or
    forecasting, so a new file is scaled exactly like the training file and must have its columns.
    ``forecast_only`` (needs ``scaler_state``) only asks for ``seq_len`` rows: no splits are made.
    """
    p = Path(path)
    if features not in FEATURES:
        raise UserError("--features", f"must be one of {FEATURES}, got {features!r}")
    ts, df = read_series(p, date_col=date_col, fill=fill)
    cols = [str(c) for c in df.columns]
    df.columns = cols
    if target is None:
        target = cols[-1]
    if target not in cols:
        raise UserError(p, f"target column {target!r} not found; numeric columns: {cols}")
    if columns is not None:
        missing = [c for c in columns if c not in cols]
        if missing:
            raise UserError(p, f"column(s) {missing} used in training are missing")
        order = list(columns)
    else:
        order = [c for c in cols if c != target] + [target]
    raw = df[order].to_numpy(dtype=np.float64)
    n = raw.shape[0]
    kind = split or split_kind(p)
    if seq_len < 1 or pred_len < 1:
        raise UserError("--seq-len/--pred-len", "must be positive")
    if forecast_only:
        if n < seq_len:
            raise UserError(p, f"series too short: {n} rows; the model needs the last seq_len = {seq_len} rows")
        scaler = Scaler.from_state(scaler_state)
        return SeriesData(path=str(p), timestamps=ts, columns=order, target=target, features=features,
                          scaler=scaler, scaled=scaler.transform(raw), raw=raw, borders=([0] * 3, [n] * 3),
                          seq_len=seq_len, pred_len=pred_len, steps=step_index(ts))
    b1, b2 = split_borders(n, seq_len, kind)
    if kind != "custom" and n < b2[2]:
        raise UserError(p, f"{kind} protocol needs {b2[2]} rows, file has {n} (use a 70/10/20 split: rename "
                           "the file or pass split='custom')")
    need = seq_len + pred_len
    short = [s for k, s in enumerate(("train", "val", "test")) if b2[k] - b1[k] < need]
    if n < need or short or min(b1) < 0:
        raise UserError(p, f"series too short: {n} rows; each of train/val/test needs at least "
                           f"seq_len + pred_len = {need} rows ({', '.join(short) or 'all'} too short)")
    scaler = Scaler.from_state(scaler_state) if scaler_state else Scaler.fit(raw[b1[0]:b2[0]])
    return SeriesData(path=str(p), timestamps=ts, columns=order, target=target, features=features,
                      scaler=scaler, scaled=scaler.transform(raw), raw=raw, borders=(b1, b2),
                      seq_len=seq_len, pred_len=pred_len, steps=step_index(ts))


# ----------------------------------------------------------------------------- metrics
def metrics(pred: torch.Tensor, true: torch.Tensor, scaler: Optional[Scaler] = None,
            cols: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """MSE/MAE over every element of (N, H, C) tensors (normalised), plus ``*_orig`` on the original scale."""
    pred, true = pred.double(), true.double()
    out = {"mse": float(((pred - true) ** 2).mean()), "mae": float((pred - true).abs().mean())}
    if scaler is not None:
        p, t = scaler.inverse(pred, cols), scaler.inverse(true, cols)
        out["mse_orig"] = float(((p - t) ** 2).mean())
        out["mae_orig"] = float((p - t).abs().mean())
    return out
