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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from core.engine import UserError

from .csvread import ReadOptions, _fixed, grid_step, read_table

FEATURES = ("M", "S", "MS")


# ----------------------------------------------------------------------------- reading
def read_series(path: str | Path, date_col: Optional[str] = None, fill: bool = False,
                read: Optional[ReadOptions] = None) -> Tuple[pd.Index, pd.DataFrame]:
    """``(time, values)`` of a CSV, read by :func:`csvread.read_table` (see there for the options).

    ``time`` is a DatetimeIndex (or int64 step numbers); ``values`` a float64 DataFrame, rows = time.
    """
    opts = read or ReadOptions(date_col=date_col, fill=fill)
    t = read_table(path, opts)
    return t.time, t.values


def infer_freq(ts: pd.Index):
    """Sampling step of the series: pandas' inferred frequency, else the most common difference
    (an int for integer steps)."""
    return grid_step(ts)


# Calendar positions count from a Monday midnight, so a phase "mod steps-per-day" is the time of
# day and "mod steps-per-week" the time of week, the same in every file of the series.
EPOCH = pd.Timestamp("1970-01-05")


def step_index(ts: pd.Index) -> np.ndarray:
    """(rows,) int64: each timestamp's position in sampling steps since :data:`EPOCH`.

    Fixed steps (minutes, hours, days) count whole steps; calendar steps (months, business days)
    use pandas period ordinals; integer time counts steps from 0. Only differences and residues
    modulo a cycle length are used.
    """
    f = infer_freq(ts)
    if not isinstance(ts, pd.DatetimeIndex):
        return np.asarray(ts, dtype=np.int64) // f
    if ts.tz is not None:
        ts = ts.tz_localize(None)
    d = _fixed(f)
    if d is not None:
        return np.asarray((ts - EPOCH) // d, dtype=np.int64)
    return np.asarray(pd.PeriodIndex(ts, freq=f).asi8, dtype=np.int64)


def calendar_cycles(ts: pd.Index) -> List[int]:
    """Candidate cycle lengths in steps from the sampling step, most likely first: a day and a week
    for sub-daily data (24, 168 hourly), a week and a year for daily data, a year for weekly (52),
    monthly (12) and quarterly (4) data, a week for business days. Integer time has none."""
    if not isinstance(ts, pd.DatetimeIndex):
        return []
    f = infer_freq(ts)
    d = _fixed(f)
    day, week = pd.Timedelta(days=1), pd.Timedelta(days=7)
    if d is not None:
        if d < day and day % d == pd.Timedelta(0):
            return [int(day // d), int(week // d)]
        if d == day:
            return [7, 365]
        if d == week:
            return [52]
        return []
    if isinstance(f, (pd.offsets.MonthEnd, pd.offsets.MonthBegin)):
        return [12]
    if isinstance(f, (pd.offsets.QuarterEnd, pd.offsets.QuarterBegin)):
        return [4]
    if isinstance(f, pd.offsets.BusinessDay):
        return [5]
    if isinstance(f, pd.offsets.Week):
        return [52]
    return []


def auto_cycle_len(ts: pd.Index) -> int:
    """The calendar's natural cycle (the first of :func:`calendar_cycles`), 0 when there is none.
    Training checks it against the data with :func:`detect_cycle`."""
    c = calendar_cycles(ts)
    return c[0] if c else 0


# A cycle is kept when it explains at least this share of the detrended training series' variance
# (its "seasonal strength", as in STL's F_s), after subtracting what phase means of pure noise explain.
# Detrending (a moving average one cycle long) removes trends and random-walk drift, which would
# otherwise make every lag look periodic (daily exchange rates have no weekly cycle).
CYCLE_MIN_STRENGTH = 0.1


def cycle_strength(x: np.ndarray, phase: np.ndarray, c: int) -> float:
    """Share of the variance of ``x`` (rows, C) minus its moving average (length ``c``) explained by
    a per-phase mean (``phase`` (rows,) int, taken mod ``c``), less the c/n that noise explains;
    averaged over columns. About 0 for noise or random walks, near 1 for a clean cycle."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if c < 2 or n < 3 * c:
        return 0.0
    cs = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
    ma = (cs[c:] - cs[:-c]) / c                                  # (n - c + 1, C), window [i, i+c)
    lo = c // 2
    d = x[lo:lo + len(ma)] - ma                                  # detrended, centred windows
    ph = np.asarray(phase[lo:lo + len(ma)]) % c
    cnt = np.bincount(ph, minlength=c).astype(np.float64)
    means = np.stack([np.bincount(ph, weights=d[:, j], minlength=c) for j in range(d.shape[1])], 1)
    means = means / np.maximum(cnt, 1)[:, None]
    resid = d - means[ph]
    var_d, var_r = d.var(0), resid.var(0)
    ok = var_d > 0
    if not ok.any():
        return 0.0
    return float(np.mean(1.0 - var_r[ok] / var_d[ok]) - c / len(d))


def detect_cycle(ts: pd.Index, train_values: np.ndarray, steps: Optional[np.ndarray] = None,
                 max_search: int = 200) -> Tuple[int, Dict[str, float]]:
    """Choose the residual-cycle length from the training rows ``train_values`` (rows, C).

    Calendar candidates (:func:`calendar_cycles`, a day before a week) are tried in order; the first
    whose :func:`cycle_strength` reaches :data:`CYCLE_MIN_STRENGTH` wins (three cycles of training
    data needed). Integer time (no calendar) searches 2..max_search and takes the shortest length
    within 90 % of the strongest (a multiple of a cycle is as strong as the cycle). ``steps``
    (rows,) gives each row's calendar position (default: 0, 1, ...). Returns
    ``(cycle_len or 0, {str(length): strength})`` for the report.
    """
    n = len(train_values)
    phase = np.arange(n) if steps is None else np.asarray(steps, dtype=np.int64)
    if isinstance(ts, pd.DatetimeIndex):
        cands = [c for c in calendar_cycles(ts) if 2 <= c <= n // 3]
    else:
        cands = list(range(2, min(max_search, n // 3) + 1))
    if not cands:
        return 0, {}
    r = [cycle_strength(train_values, phase, c) for c in cands]
    if isinstance(ts, pd.DatetimeIndex):
        scores = {str(c): round(v, 4) for c, v in zip(cands, r)}
        for c, v in zip(cands, r):
            if v >= CYCLE_MIN_STRENGTH:
                return int(c), scores
        return 0, scores
    top = max(r)
    if top < CYCLE_MIN_STRENGTH:
        return 0, {"best": round(top, 4)}
    c = next(c for c, v in zip(cands, r) if v >= 0.9 * top)
    return int(c), {str(c): round(r[cands.index(c)], 4)}


def future_timestamps(ts: pd.Index, steps: int) -> pd.Index:
    """The ``steps`` timestamps (or integer steps) after ``ts[-1]`` at the series' sampling step."""
    f = infer_freq(ts)
    if not isinstance(ts, pd.DatetimeIndex):
        return pd.Index(int(ts[-1]) + f * np.arange(1, steps + 1))
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
    n_cov: int = 0                # the first n_cov columns are covariates: inputs, never forecast
    read: ReadOptions = dataclasses.field(default_factory=ReadOptions)
    categories: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # one-hot levels
    report: Dict[str, Any] = dataclasses.field(default_factory=dict)            # see csvread.Table

    @property
    def in_cols(self) -> List[int]:
        return [len(self.columns) - 1] if self.features == "S" else list(range(len(self.columns)))

    @property
    def out_cols(self) -> List[int]:
        return list(range(self.n_cov, len(self.columns))) if self.features == "M" else [len(self.columns) - 1]

    def train_rows(self) -> np.ndarray:
        """(rows, C_out) scaled training rows of the forecast variables (for :func:`detect_cycle`)."""
        b1, b2 = self.borders
        return self.scaled[b1[0]:b2[0]][:, self.out_cols]

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
                columns: Optional[Sequence[str]] = None, forecast_only: bool = False,
                read: Optional[ReadOptions] = None, categories: Optional[Dict[str, List[str]]] = None,
                n_cov: Optional[int] = None) -> SeriesData:
    """Read ``path`` (:mod:`.csvread`, options ``read``; ``date_col``/``fill`` are shortcuts) and
    apply the protocol.

    Column order: covariates (numeric columns not chosen by ``read.columns``, then one-hot
    categories), the other forecast variables, the target last. ``target=None`` picks the last
    forecast variable. ``split`` overrides the file-name rule ('ETTh', 'ETTm', 'custom').
    ``scaler_state``/``columns``/``categories``/``n_cov`` come from a checkpoint when evaluating or
    forecasting, so a new file is read and scaled exactly like the training file and must have its
    columns. ``forecast_only`` (needs ``scaler_state``) only asks for ``seq_len`` rows: no splits.
    """
    p = Path(path)
    if features not in FEATURES:
        raise UserError("--features", f"must be one of {FEATURES}, got {features!r}")
    read = dataclasses.replace(read or ReadOptions(), **({"date_col": date_col} if date_col else {}))
    if fill:
        read = dataclasses.replace(read, fill=True)
    table = read_table(p, read, categories=categories)
    ts, df = table.time, table.values
    targets = table.targets
    if target is None:
        target = targets[-1]
    if target not in targets:
        where = "a covariate" if target in table.covariates else "not found"
        raise UserError(p, f"target column {target!r} {where}; forecast variables: {targets}")
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(p, f"column(s) {missing} used in training are missing")
        order = list(columns)
        n_cov = int(n_cov or 0)
    else:
        order = table.covariates + [c for c in targets if c != target] + [target]
        n_cov = len(table.covariates)
    raw = df[order].to_numpy(dtype=np.float64)
    n = raw.shape[0]
    kind = split or split_kind(p)
    if seq_len < 1 or pred_len < 1:
        raise UserError("--seq-len/--pred-len", "must be positive")
    extra = dict(n_cov=n_cov, read=read, categories=table.categories, report=table.report)
    if forecast_only:
        if n < seq_len:
            raise UserError(p, f"series too short: {n} rows; the model needs the last seq_len = {seq_len} rows")
        scaler = Scaler.from_state(scaler_state)
        return SeriesData(path=str(p), timestamps=ts, columns=order, target=target, features=features,
                          scaler=scaler, scaled=scaler.transform(raw), raw=raw, borders=([0] * 3, [n] * 3),
                          seq_len=seq_len, pred_len=pred_len, steps=step_index(ts), **extra)
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
                      seq_len=seq_len, pred_len=pred_len, steps=step_index(ts), **extra)


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
