"""Reading real-world CSVs into (time, targets, covariates): the options and what was done to the file.

A published file is rarely ``date,x1,x2,...``. This module handles, and reports:
- time in one column (dates, or integer steps) or split over several (``year,month,day,hour``);
- row-number columns (``No``, ``index``, ``Unnamed: 0``, or any first column counting 0/1, 2, 3...);
- categorical (text) columns: one-hot covariates by default, or dropped;
- ``NA``/empty values (an error unless ``fill``), duplicate timestamps (``duplicates`` policy),
  gaps in the time grid (an error unless ``fill``, which inserts the missing rows);
- any line endings, a byte-order mark, and column names that are not UTF-8 (read as cp1252/latin-1).

:class:`ReadOptions` travels in the checkpoint, so ``evaluate``/``forecast`` read a file exactly as
training did; the one-hot categories travel with it, so a new file gets the same columns.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from core.engine import UserError

DATE_NAMES = ("date", "datetime", "timestamp", "time", "ds")
INDEX_NAMES = ("no", "no.", "index", "idx", "unnamed: 0", "row", "rownum", "row_id", "id", "")
TIME_UNITS = {"year": "year", "yr": "year", "month": "month", "mon": "month", "day": "day", "hour": "hour",
              "hr": "hour", "minute": "minute", "min": "minute", "second": "second", "sec": "second"}
DUPLICATES = ("error", "first", "mean")
CATEGORICAL = ("onehot", "drop")
MAX_LEVELS = 50  # more distinct values than this is a free-text column, not a category


@dataclasses.dataclass
class ReadOptions:
    """How to read a CSV (all optional; the defaults detect what they can).

    date_col: the time column (dates, or integers = step numbers). time_cols: several columns that
    together give the time (year, month, day, hour, minute, second; names as in the file).
    drop: columns to ignore. columns: the variables to forecast (default: every numeric column;
    the numeric columns not listed become covariates). categorical: 'onehot' (covariates) or 'drop'.
    duplicates: 'error', 'first' (keep the first row) or 'mean' (average the rows).
    fill: interpolate missing values in time and insert rows for gaps in the time grid.
    """
    date_col: Optional[str] = None
    time_cols: Optional[List[str]] = None
    drop: List[str] = dataclasses.field(default_factory=list)
    columns: Optional[List[str]] = None
    categorical: str = "onehot"
    duplicates: str = "error"
    fill: bool = False

    def __post_init__(self):
        if self.duplicates not in DUPLICATES:
            raise UserError("--duplicates", f"must be one of {DUPLICATES}, got {self.duplicates!r}")
        if self.categorical not in CATEGORICAL:
            raise UserError("--categorical", f"must be one of {CATEGORICAL}, got {self.categorical!r}")
        for f in ("time_cols", "drop", "columns"):
            v = getattr(self, f)
            if isinstance(v, str):
                setattr(self, f, [c.strip() for c in v.split(",") if c.strip()])

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "ReadOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


@dataclasses.dataclass
class Table:
    """A CSV read by :func:`read_table`.

    time: DatetimeIndex, or an int64 Index of step numbers. values: float64 DataFrame, rows = time,
    covariates first, then targets. categories: the one-hot levels per categorical column.
    report: what was detected, dropped, merged or filled (counts), for the log and metrics.json.
    """
    time: pd.Index
    values: pd.DataFrame
    targets: List[str]
    covariates: List[str]
    categories: Dict[str, List[str]]
    report: Dict[str, Any]


def read_text(p: Path) -> Tuple[str, str]:
    """The file's text with every line ending made ``\\n``, and the encoding that decoded it."""
    if not p.is_file():
        raise UserError(p, "file not found")
    raw = p.read_bytes()
    for enc in ("utf-8-sig", "cp1252", "latin-1"):  # latin-1 decodes any byte: the last resort
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    if "\x00" in text:
        raise UserError(p, "binary file, not a CSV")
    return text.replace("\r\n", "\n").replace("\r", "\n"), enc


def _norm(name: str) -> str:
    return str(name).strip().lower()


def _find(p: Path, df: pd.DataFrame, name: str, what: str) -> str:
    if name in df.columns:
        return name
    by_norm = {_norm(c): c for c in df.columns}
    if _norm(name) in by_norm:
        return by_norm[_norm(name)]
    raise UserError(p, f"{what} {name!r} not found; columns: {list(df.columns)}")


def _is_int_series(s: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(s) or (
        pd.api.types.is_float_dtype(s) and s.notna().all() and bool((s == np.round(s)).all()))


def _time_from_columns(p: Path, df: pd.DataFrame, cols: List[str]) -> pd.Index:
    units = {}
    for c in cols:
        u = TIME_UNITS.get(_norm(c))
        if u is None:
            raise UserError(p, f"time column {c!r} is not one of year, month, day, hour, minute, second")
        units[u] = pd.to_numeric(df[c], errors="coerce")
    if not {"year", "month", "day"} <= set(units):
        raise UserError(p, f"--time-cols needs at least year, month and day; got {cols}")
    parts = pd.DataFrame(units)
    bad = parts.isna().any(axis=1).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(p, f"missing or non-numeric time value in {cols} at data row {i + 1}")
    ts = pd.to_datetime(parts, errors="coerce")
    if ts.isna().any():
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise UserError(p, f"invalid date in {cols} at data row {i + 1}: {parts.iloc[i].to_dict()}")
    return pd.DatetimeIndex(ts)


def _time_from_column(p: Path, df: pd.DataFrame, col: str) -> pd.Index:
    s = df[col]
    if _is_int_series(s) and not s.isna().any():  # integer steps, no calendar
        return pd.Index(s.to_numpy(dtype=np.int64))
    with warnings.catch_warnings():  # mixed formats fall back to dateutil: failures are caught below
        warnings.simplefilter("ignore")
        ts = pd.to_datetime(s, errors="coerce")
    bad = ts.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(p, f"unparsable or missing timestamp in column {col!r} at data row {i + 1}: {s.iloc[i]!r}")
    ts = pd.DatetimeIndex(ts)
    return ts.tz_localize(None) if ts.tz is not None else ts


def _detect_time(p: Path, df: pd.DataFrame, opts: ReadOptions) -> Tuple[pd.Index, List[str]]:
    if opts.time_cols:
        cols = [_find(p, df, c, "time column") for c in opts.time_cols]
        if len(cols) == 1:
            return _time_from_column(p, df, cols[0]), cols
        return _time_from_columns(p, df, cols), cols
    if opts.date_col is not None:
        c = _find(p, df, opts.date_col, "date column")
        return _time_from_column(p, df, c), [c]
    for c in df.columns:
        if _norm(c) in DATE_NAMES:
            return _time_from_column(p, df, c), [c]
    by_norm = {_norm(c): c for c in df.columns}
    if {"year", "month", "day"} <= set(by_norm):  # time split over columns, as many published files are
        cols = [by_norm[u] for u in ("year", "month", "day", "hour", "minute", "second") if u in by_norm]
        return _time_from_columns(p, df, cols), cols
    first = df.columns[0]
    if not pd.api.types.is_numeric_dtype(df[first]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(df[first].head(20), errors="coerce")
        if parsed.notna().all():
            return _time_from_column(p, df, first), [first]
    raise UserError(p, "no date column found (name one with --date-col, or several with --time-cols "
                       f"year,month,day,hour); columns: {list(df.columns)}")


def _index_columns(df: pd.DataFrame) -> List[str]:
    """Row-number columns: a known name, or the first column counting up by one from 0 or 1."""
    out = []
    for j, c in enumerate(df.columns):
        s = df[c]
        counts = _is_int_series(s) and len(s) > 1 and s.iloc[0] in (0, 1) and bool((np.diff(s.to_numpy()) == 1).all())
        if (_norm(c) in INDEX_NAMES and (counts or not pd.api.types.is_numeric_dtype(s) or _norm(c) != "id")) \
                or (j == 0 and counts):
            out.append(c)
    return out


def _split_text_columns(p: Path, df: pd.DataFrame) -> Tuple[List[str], List[str]]:
    """(categorical, numeric) among the non-time columns; a mostly numeric column with stray text,
    or free text with too many distinct values, is an error naming it."""
    cats, nums = [], []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s):
            nums.append(c)
            continue
        as_num = pd.to_numeric(s, errors="coerce")
        present = s.notna()
        bad = present & as_num.isna()
        if present.any() and as_num[present].notna().mean() > 0.5:
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(p, f"non-numeric value {s.iloc[i]!r} in numeric column {c!r} at data row {i + 1}")
        levels = s.dropna().nunique()
        if levels > MAX_LEVELS:
            raise UserError(p, f"non-numeric column(s) [{c!r}] with {levels} distinct values is free text, "
                               "not a category: --drop it")
        cats.append(c)
    return cats, nums


def read_table(path: str | Path, opts: Optional[ReadOptions] = None,
               categories: Optional[Dict[str, List[str]]] = None) -> Table:
    """Read ``path`` by ``opts``; see the module docstring. ``categories`` (from a checkpoint) fixes
    the one-hot levels, so a new file gets exactly the training columns (unseen levels: all zero).

    Raises :class:`UserError` (one line naming the file) on anything it cannot resolve.
    """
    p = Path(path)
    opts = opts or ReadOptions()
    text, enc = read_text(p)
    try:
        df = pd.read_csv(io.StringIO(text), skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(p, f"cannot read as CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    df.columns = [str(c).strip() for c in df.columns]
    if df.shape[1] < 2 or len(df) == 0:
        raise UserError(p, "needs a date column and at least one numeric column, and data rows")
    report: Dict[str, Any] = {"rows_read": int(len(df))}
    if enc != "utf-8-sig":
        report["encoding"] = enc
    dropped = [_find(p, df, c, "--drop column") for c in opts.drop]
    df = df.drop(columns=dropped)
    time, tcols = _detect_time(p, df, opts)
    report["time_columns"] = tcols
    df = df.drop(columns=tcols)
    idx = _index_columns(df)
    if idx:
        report["index_columns_dropped"] = idx
        df = df.drop(columns=idx)
    if dropped:
        report["dropped"] = dropped
    cats, nums = _split_text_columns(p, df)
    if categories is not None:  # a checkpoint's file: the training categories, nothing else
        missing = [c for c in categories if c not in df.columns]
        if missing:
            raise UserError(p, f"categorical column(s) {missing} used in training are missing")
        cats = list(categories)
    elif opts.categorical == "drop":
        if cats:
            report["categorical_dropped"] = cats
        cats = []
    if opts.columns:
        targets = [_find(p, df, c, "--columns variable") for c in opts.columns]
        bad = [c for c in targets if c not in nums]
        if bad:
            raise UserError(p, f"--columns variable(s) {bad} are not numeric")
    else:
        targets = list(nums)
    if not targets:
        raise UserError(p, "no numeric column to forecast")
    num_cov = [c for c in nums if c not in targets]

    # duplicates, order, gaps: on the rows, before any value is touched
    frame = df[num_cov + targets].astype(np.float64)
    frame.index = time
    cat_frame = df[cats].astype(object) if cats else None
    if cat_frame is not None:
        cat_frame.index = time
    dup = time.duplicated()
    if dup.any():
        n_dup = int(dup.sum())
        if opts.duplicates == "error":
            i = int(np.flatnonzero(dup)[0])
            raise UserError(p, f"{n_dup} duplicate timestamp(s), the first {time[i]} at data row {i + 1} "
                               "(pass --duplicates first or --duplicates mean)")
        if opts.duplicates == "first":
            frame = frame[~dup]
        else:
            frame = frame.groupby(level=0, sort=False).mean()
        if cat_frame is not None:
            cat_frame = cat_frame[~dup]
        report["duplicates"] = {"rows": n_dup, "policy": opts.duplicates}
    tv = np.asarray(frame.index.asi8 if isinstance(frame.index, pd.DatetimeIndex) else frame.index, np.int64)
    if len(tv) > 1 and (np.diff(tv) < 0).any():
        i = int(np.flatnonzero(np.diff(tv) < 0)[0]) + 1
        raise UserError(p, f"timestamps not sorted: {frame.index[i]} at row {i + 1} comes after "
                           f"{frame.index[i - 1]} (sort the file by time)")
    frame, cat_frame = _regularise(p, frame, cat_frame, opts.fill, report)

    # categorical -> one-hot (NA and unseen levels: all zero)
    cov_names = list(num_cov)
    levels_out: Dict[str, List[str]] = {}
    blocks = [frame[num_cov]]
    for c in cats:
        s = cat_frame[c]
        lv = categories[c] if categories is not None else sorted(str(v) for v in s.dropna().unique())
        if categories is None and len(lv) < 2:
            report.setdefault("categorical_dropped", []).append(c)  # one level: nothing to learn
            continue
        levels_out[c] = lv
        sv = s.astype(str).where(s.notna(), None)
        oh = pd.DataFrame({f"{c}={v}": (sv == v).astype(np.float64).to_numpy() for v in lv}, index=frame.index)
        blocks.append(oh)
        cov_names += list(oh.columns)
    if levels_out:
        report["one_hot"] = {c: len(v) for c, v in levels_out.items()}
    values = pd.concat(blocks + [frame[targets]], axis=1)

    n_missing = int(values[targets + num_cov].isna().to_numpy().sum())
    if n_missing:
        miss_cols = [c for c in targets + num_cov if values[c].isna().any()]
        if not opts.fill:
            raise UserError(p, f"{n_missing} missing value(s) (NA or empty) in column(s) {miss_cols} "
                               "(pass --fill to interpolate them)")
        if values[miss_cols].isna().all().any():
            raise UserError(p, "a column has no values at all; cannot --fill it (--drop it)")
        report["missing_filled"] = {c: int(values[c].isna().sum()) for c in miss_cols}
        idx = values.index
        interp = values.set_axis(pd.RangeIndex(len(idx)) if not isinstance(idx, pd.DatetimeIndex) else idx, axis=0)
        interp = interp.interpolate(method="time" if isinstance(idx, pd.DatetimeIndex) else "linear",
                                    limit_direction="both")
        values = interp.ffill().bfill().set_axis(idx, axis=0)
    return Table(time=values.index, values=values.reset_index(drop=True), targets=targets, covariates=cov_names,
                 categories=levels_out, report=report)


def grid_step(time: pd.Index):
    """The sampling step: a Timedelta / DateOffset for dates, an int for integer steps.

    The most common difference, or pandas' inferred calendar frequency (months, business days)."""
    if not isinstance(time, pd.DatetimeIndex):
        d = np.diff(np.asarray(time, dtype=np.int64))
        d = d[d > 0]
        return int(pd.Series(d).mode().iloc[0]) if len(d) else 1
    with warnings.catch_warnings():  # pandas is changing infer_freq's return type; to_offset takes both
        warnings.simplefilter("ignore")
        f = pd.infer_freq(time[-min(len(time), 200):]) if len(time) >= 3 else None
    if f is not None:
        return pd.tseries.frequencies.to_offset(f)
    d = pd.Series(time[1:] - time[:-1])
    d = d[d > pd.Timedelta(0)].mode()
    return pd.Timedelta(d.iloc[0]) if len(d) else pd.Timedelta(hours=1)


def _fixed(step) -> Optional[pd.Timedelta]:
    try:
        d = pd.Timedelta(step)
    except (ValueError, TypeError):
        return None
    return d if d > pd.Timedelta(0) else None


def _regularise(p: Path, frame: pd.DataFrame, cat_frame: Optional[pd.DataFrame], fill: bool,
                report: Dict[str, Any]):
    """Find gaps in the time grid; an error unless ``fill``, which inserts the missing rows (as NA)."""
    t = frame.index
    if len(t) < 3:
        return frame, cat_frame
    step = grid_step(t)
    if isinstance(t, pd.DatetimeIndex):
        d = _fixed(step)
        if d is None:  # calendar steps (months...): a gap is a missing period
            grid = pd.date_range(t[0], t[-1], freq=step)
            if len(grid) == len(t) and (grid == t).all():
                return frame, cat_frame
            if not t.isin(grid).all():
                i = int(np.flatnonzero(~t.isin(grid))[0])
                raise UserError(p, f"timestamp {t[i]} at row {i + 1} is off the {step.freqstr} grid")
            pos = np.flatnonzero(grid.isin(t))
        else:
            off = (t - t[0]) / d
            if not np.allclose(off, np.round(off)):
                i = int(np.flatnonzero(~np.isclose(off, np.round(off)))[0])
                raise UserError(p, f"timestamp {t[i]} at row {i + 1} is off the {d} grid that starts at {t[0]}")
            pos = np.round(off).astype(np.int64)
            grid = t[0] + d * np.arange(pos[-1] + 1)
        unit = f"{step}"
    else:
        v = np.asarray(t, np.int64) - int(t[0])
        if (v % step).any():
            i = int(np.flatnonzero(v % step)[0])
            raise UserError(p, f"step {t[i]} at row {i + 1} is off the grid of step {step}")
        pos = v // step
        grid = pd.Index(int(t[0]) + step * np.arange(pos[-1] + 1))
        unit = f"{step} step(s)"
    missing = np.diff(pos) - 1
    if not (missing > 0).any():
        return frame, cat_frame
    n_gaps, longest = int((missing > 0).sum()), int(missing.max())
    i = int(np.argmax(missing))
    where = f"{t[i]} .. {t[i + 1]}"
    info = {"gaps": n_gaps, "rows_missing": int(missing.sum()), "longest_missing_steps": longest,
            "longest_at": where, "step": unit}
    if not fill:
        raise UserError(p, f"{n_gaps} gap(s) in the time grid (step {unit}): {int(missing.sum())} missing "
                           f"row(s), the longest {longest} step(s) between {where} (pass --fill to insert "
                           "and interpolate them)")
    report["gaps_filled"] = info
    frame = frame.reindex(grid)
    if cat_frame is not None:
        cat_frame = cat_frame.reindex(grid).ffill()
    return frame, cat_frame
