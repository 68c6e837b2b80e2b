"""Interaction logs in, RecBole's sequential protocol out.

Readers: RecBole atomic ``.inter`` files (typed header, tab-separated), MovieLens ``u.data`` (tab-separated
``user item rating timestamp``) and ``ratings.dat`` (``::``), generic CSV/Parquet with named columns.
Protocol (RecBole's ``SequentialDataset`` with ``eval_args: {split: {LS: valid_and_test}, order: TO, mode: full}``):
iterative k-core filter, ids remapped in order of first appearance (0 is padding), per-user sequences sorted by
time (stable, so ties keep file order), every prefix a sample (data augmentation), last sample test,
second-to-last validation, the rest training, histories cut to the last ``max_len`` items.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from core.engine import UserError

FORMATS = ("auto", "atomic", "udata", "ml1m", "csv", "parquet")


@dataclass
class ReadReport:
    """Counted problems found while reading (warnings, not errors)."""

    duplicates: int = 0
    unsorted_users: int = 0
    notes: List[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".inter"):
        return "atomic"
    if name == "u.data" or name.endswith(".data"):
        return "udata"
    if name.endswith(".dat"):
        return "ml1m"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".csv") or name.endswith(".tsv") or name.endswith(".txt"):
        return "csv"
    raise UserError(path, "cannot tell the format from the name; pass --format atomic|udata|ml1m|csv|parquet")


def _read_text(path: Path, sep: str, names: Optional[Sequence[str]], header, n_fields: Optional[int]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=sep, header=header, names=names, dtype=str, engine="python" if len(sep) > 1
                         else "c", keep_default_na=False, na_values=[""], skip_blank_lines=True,
                         on_bad_lines="error", encoding="utf-8", encoding_errors="replace")
    except pd.errors.EmptyDataError:
        raise UserError(path, "file is empty") from None
    except (pd.errors.ParserError, ValueError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(path, f"malformed line ({msg})") from None
    except OSError as e:
        raise UserError(path, f"cannot read ({e.strerror or e})") from None
    if n_fields is not None and df.shape[1] != n_fields:
        raise UserError(path, f"expected {n_fields} fields per line, found {df.shape[1]}")
    return df


def _atomic(path: Path, user_col: str, item_col: str, time_col: str) -> Tuple[pd.DataFrame, int]:
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.readline().rstrip("\r\n")
    fields = [h.split(":", 1) for h in head.split("\t")]
    if not head or any(len(f) != 2 for f in fields):
        raise UserError(path, "line 1: expected a RecBole header like 'user_id:token\\titem_id:token\\t"
                              "timestamp:float'")
    names = [f[0] for f in fields]
    for col in (user_col, item_col, time_col):
        if col not in names:
            raise UserError(path, f"line 1: no column {col!r} in the header (have {names})")
    df = _read_text(path, "\t", None, 0, len(names))
    df.columns = names
    return df[[user_col, item_col, time_col]].set_axis(["user", "item", "timestamp"], axis=1), 2


def read_interactions(path: str | Path, fmt: str = "auto", user_col: Optional[str] = None,
                      item_col: Optional[str] = None, time_col: Optional[str] = None,
                      sep: Optional[str] = None) -> Tuple[pd.DataFrame, ReadReport]:
    """Read an interaction log into a frame with columns ``user`` (str), ``item`` (str), ``timestamp`` (float64),
    in file order. Column flags name the fields in atomic/CSV/Parquet files (defaults user_id/item_id/timestamp).

    Malformed lines, missing or non-numeric timestamps raise :class:`UserError` naming the file and line.
    Duplicate (user, item, timestamp) rows are kept (RecBole keeps them) and counted in the report.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "file not found")
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UserError("--format", f"unknown format {fmt!r}; choose from {FORMATS}")
    uc, ic, tc = user_col or "user_id", item_col or "item_id", time_col or "timestamp"
    first_line = 1  # file line of row 0
    if fmt == "atomic":
        df, first_line = _atomic(p, uc, ic, tc)
    elif fmt in ("udata", "ml1m"):
        df = _read_text(p, "\t" if fmt == "udata" else "::", ["user", "item", "rating", "timestamp"], None, 4)
        df = df[["user", "item", "timestamp"]]
    elif fmt == "parquet":
        try:
            raw = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises many types for a bad file
            raise UserError(p, f"cannot read Parquet ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
        missing = [c for c in (uc, ic, tc) if c not in raw.columns]
        if missing:
            raise UserError(p, f"no column(s) {missing} (have {list(raw.columns)}); name them with "
                               "--user-col/--item-col/--time-col")
        df = raw[[uc, ic, tc]].set_axis(["user", "item", "timestamp"], axis=1)
        df["user"], df["item"] = df["user"].astype(str), df["item"].astype(str)
        first_line = 0  # row numbers, not lines
    else:
        delim = sep or ("\t" if p.suffix.lower() == ".tsv" else ",")
        raw = _read_text(p, delim, None, 0, None)
        missing = [c for c in (uc, ic, tc) if c not in raw.columns]
        if missing:
            raise UserError(p, f"no column(s) {missing} in the header (have {list(raw.columns)}); name them "
                               "with --user-col/--item-col/--time-col")
        df = raw[[uc, ic, tc]].set_axis(["user", "item", "timestamp"], axis=1)
        first_line = 2
    if len(df) == 0:
        raise UserError(p, "no interactions")
    where = "row" if fmt == "parquet" else "line"
    for col in ("user", "item"):
        bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(p, f"{where} {i + first_line}: missing {col} id ({int(bad.sum())} such rows)")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        val = df["timestamp"].iloc[i]
        what = "missing timestamp" if pd.isna(val) or str(val).strip() == "" else f"non-numeric timestamp {val!r}"
        raise UserError(p, f"{where} {i + first_line}: {what} ({int(bad.sum())} such rows)")
    out = pd.DataFrame({"user": df["user"].astype(str).str.strip().to_numpy(),
                        "item": df["item"].astype(str).str.strip().to_numpy(),
                        "timestamp": ts.astype(np.float64).to_numpy()})
    rep = ReadReport()
    rep.duplicates = int(out.duplicated(["user", "item", "timestamp"]).sum())
    prev = out.groupby("user", sort=False)["timestamp"].diff()
    rep.unsorted_users = int(out.loc[prev < 0, "user"].nunique())
    if rep.duplicates:
        rep.notes.append(f"{p.name}: {rep.duplicates} duplicate (user, item, timestamp) rows kept (as RecBole does)")
    if rep.unsorted_users:
        rep.notes.append(f"{p.name}: {rep.unsorted_users} users' rows were not in time order (sorted, ties keep "
                         "file order)")
    return out, rep


def kcore(df: pd.DataFrame, user_min: int = 5, item_min: int = 5, user_max: float = np.inf,
          item_max: float = np.inf) -> pd.DataFrame:
    """RecBole's ``_filter_by_inter_num``: drop users and items whose interaction counts fall outside
    ``[min, max]`` (both judged on the same pass), repeat until nothing is dropped. Row order kept."""
    while True:
        uc = df["user"].map(df["user"].value_counts())
        ic = df["item"].map(df["item"].value_counts())
        drop = (uc < user_min) | (uc > user_max) | (ic < item_min) | (ic > item_max)
        if not drop.any():
            return df.reset_index(drop=True)
        df = df[~drop.to_numpy()]


@dataclass
class SeqData:
    """Per-user time-ordered sequences in CSR form plus the raw-id maps.

    ``items`` (N,) int64 in 1..n_items (0 is padding), ``times`` (N,) float64, ``offsets`` (n_users+1,):
    user u's sequence is ``items[offsets[u]:offsets[u+1]]``. ``user_ids[u]`` / ``item_ids[i-1]`` are raw ids.
    """

    items: np.ndarray
    times: np.ndarray
    offsets: np.ndarray
    user_ids: List[str]
    item_ids: List[str]
    max_len: int = 50
    report: Optional[ReadReport] = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def gaps(self) -> np.ndarray:
        """(N,) seconds since the user's previous interaction (0 for each user's first)."""
        g = np.diff(self.times, prepend=self.times[:1])
        g[self.offsets[:-1]] = 0.0
        return g

    def samples(self, split: str) -> np.ndarray:
        """(S, 2) rows (user, target position within the user's sequence) of a split (RecBole's leave-one-out
        over the augmented prefixes: the last target is test, the one before validation, the rest training)."""
        n = self.lengths()
        if split == "test":
            u = np.flatnonzero(n >= 2)
            return np.stack([u, n[u] - 1], 1)
        if split == "val":
            u = np.flatnonzero(n >= 3)
            return np.stack([u, n[u] - 2], 1)
        if split != "train":
            raise ValueError(f"split must be train, val or test, got {split!r}")
        cnt = np.maximum(n - 3, 0)  # targets 1 .. n-3
        u = np.repeat(np.arange(self.n_users), cnt)
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = np.arange(cnt.sum()) - start + 1
        return np.stack([u, pos], 1)

    def batch(self, rows: np.ndarray, max_len: Optional[int] = None):
        """Right-padded histories for samples ``rows`` (B, 2): returns numpy
        ``items`` (B, L) int64, ``gaps`` (B, L) float32 seconds, ``target`` (B,) int64."""
        L = max_len or self.max_len
        u, pos = rows[:, 0], rows[:, 1]
        base = self.offsets[u]
        length = np.minimum(pos, L)
        start = base + pos - length
        idx = start[:, None] + np.arange(L)[None, :]
        valid = np.arange(L)[None, :] < length[:, None]
        idx = np.where(valid, idx, 0)
        gaps = self.gaps()
        items = np.where(valid, self.items[idx], 0)
        g = np.where(valid, gaps[idx], 0.0).astype(np.float32)
        return items, g, self.items[base + pos]

    def history(self, u: int) -> Tuple[np.ndarray, np.ndarray]:
        s, e = self.offsets[u], self.offsets[u + 1]
        return self.items[s:e], self.times[s:e]

    def item_counts(self, split: str = "train") -> np.ndarray:
        """(n_items+1,) how often each item is a target in ``split`` plus each user's first item
        (every interaction of the training prefixes), for popularity and sampled-softmax proposals."""
        cnt = np.zeros(self.n_items + 1, np.int64)
        n = self.lengths()
        keep = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], n) < np.repeat(np.maximum(n - 2, 0), n)
        np.add.at(cnt, self.items[keep], 1)
        return cnt


def build_sequences(df: pd.DataFrame, max_len: int = 50, user_min: int = 5, item_min: int = 5,
                    report: Optional[ReadReport] = None) -> SeqData:
    """k-core filter, remap ids (order of first appearance; 0 = padding), sort each user's rows by time (stable)."""
    if max_len < 1:
        raise UserError("max_len", f"must be >= 1, got {max_len}")
    df = kcore(df, user_min, item_min)
    if len(df) == 0:
        raise UserError("data", f"no interactions left after the [{user_min},inf) user / [{item_min},inf) item "
                                "k-core filter; lower --user-min/--item-min")
    ucode, uniq_u = pd.factorize(df["user"], sort=False)
    icode, uniq_i = pd.factorize(df["item"], sort=False)
    order = np.lexsort((df["timestamp"].to_numpy(), ucode))  # lexsort is stable: ties keep file order
    counts = np.bincount(ucode, minlength=len(uniq_u))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SeqData(items=(icode[order] + 1).astype(np.int64), times=df["timestamp"].to_numpy()[order],
                   offsets=offsets, user_ids=[str(x) for x in uniq_u], item_ids=[str(x) for x in uniq_i],
                   max_len=max_len, report=report)


def load_dataset(path: str | Path, fmt: str = "auto", max_len: int = 50, user_min: int = 5, item_min: int = 5,
                 user_col: Optional[str] = None, item_col: Optional[str] = None, time_col: Optional[str] = None,
                 sep: Optional[str] = None, warn: bool = True) -> SeqData:
    """read_interactions + build_sequences; duplicates are a counted warning (unsorted rows are normal: noted)."""
    df, rep = read_interactions(path, fmt, user_col, item_col, time_col, sep)
    if warn and rep.duplicates:
        warnings.warn(rep.notes[0], stacklevel=2)
    data = build_sequences(df, max_len, user_min, item_min, rep)
    if (data.lengths() < 3).all():
        raise UserError(path, "every user has fewer than 3 interactions: nothing to train on")
    return data


class SampleDataset:
    """Map-style dataset over sample rows; ``collate`` builds right-padded torch batches."""

    def __init__(self, data: SeqData, split: str):
        self.data, self.rows = data, data.samples(split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.rows[i]

    def collate(self, rows: List[np.ndarray]) -> Dict[str, "object"]:
        import torch

        items, gaps, target = self.data.batch(np.stack(rows))
        return {"items": torch.from_numpy(items), "gaps": torch.from_numpy(gaps),
                "target": torch.from_numpy(target)}


def loader(data: SeqData, split: str, batch_size: int, shuffle: bool = False, num_workers: int = 0):
    """A torch DataLoader over ``split`` samples, batches of dicts (items, gaps, target)."""
    from torch.utils.data import DataLoader

    ds = SampleDataset(data, split)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


def write_udata(df: pd.DataFrame, path: str | Path, sep: str = "\t", rating: float = 1.0) -> None:
    """Write interactions as MovieLens ``u.data`` (``sep="\\t"``) or ``ratings.dat`` (``sep="::"``)."""
    from core.engine import atomic_write

    with atomic_write(path, overwrite=True) as f:
        for u, i, t in zip(df["user"], df["item"], df["timestamp"]):
            f.write(f"{u}{sep}{i}{sep}{rating:g}{sep}{int(t) if float(t).is_integer() else t}\n")


def windows(data: SeqData, max_len: Optional[int] = None) -> np.ndarray:
    """(W, 2) rows (user, last target position) cutting each user's training targets (positions 1..n-3) into
    non-overlapping windows of ``max_len`` targets, the most recent window full (SASRec's own training)."""
    L = max_len or data.max_len
    last = data.lengths() - 3  # last training target position
    rows = []
    for u in np.flatnonzero(last >= 1):
        his = np.arange(last[u], 0, -L)
        rows.append(np.stack([np.full(len(his), u), his], 1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def window_batch(data: SeqData, rows: np.ndarray, max_len: Optional[int] = None):
    """Inputs and per-position targets for window rows (B, 2): ``items``/``gaps`` (B, L) are the inputs
    (positions hi-L .. hi-1, right-padded when the window starts at the user's first item), ``targets`` (B, L)
    the next items (0 where padded)."""
    L = max_len or data.max_len
    u, hi = rows[:, 0], rows[:, 1]
    lo = np.maximum(hi - L + 1, 1)  # first target position
    n = hi - lo + 1
    base = data.offsets[u]
    j = np.arange(L)[None, :]
    valid = j < n[:, None]
    idx = np.where(valid, base[:, None] + lo[:, None] - 1 + j, 0)
    gaps = data.gaps()
    items = np.where(valid, data.items[idx], 0)
    tgt = np.where(valid, data.items[np.where(valid, idx + 1, 0)], 0)
    return items, np.where(valid, gaps[idx], 0.0).astype(np.float32), tgt


class WindowDataset(SampleDataset):
    """Training windows (all positions are targets); batches of dicts (items, gaps, targets)."""

    def __init__(self, data: SeqData):
        self.data, self.rows = data, windows(data)

    def collate(self, rows):
        import torch

        items, gaps, tgt = window_batch(self.data, np.stack(rows))
        return {"items": torch.from_numpy(items), "gaps": torch.from_numpy(gaps), "targets": torch.from_numpy(tgt)}


def train_loader(data: SeqData, mode: str, batch_size: int, num_workers: int = 0):
    """``mode="prefix"``: RecBole's augmented prefixes, one target each; ``"window"``: windows, all positions."""
    from torch.utils.data import DataLoader

    if mode == "prefix":
        return loader(data, "train", batch_size, shuffle=True, num_workers=num_workers)
    ds = WindowDataset(data)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=ds.collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0)
