"""Data that scales: a header scan (ids, labels, cheap signal-file checks) and datasets that read
and preprocess each record on demand, plus the choice between those and the in-memory
:func:`apps.ecg.data.load_records` (``data_loading`` = ``"auto" | "memory" | "lazy"``) for
training, and :func:`stream_records` for ``evaluate`` and ``predict``.

The lazy path never holds more than the records a DataLoader is working on, so the full
PhysioNet/CinC 2021 set (88k records, ~40 GB as float32 at 500 Hz) trains in bounded memory.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from core.engine import UserError, describe_error

from .data import (Header, LoadedSet, WindowDataset, choose_lead_set, fill_leads, lead_indices, preprocess,
                   read_header, read_record, signal_files)
from .labels import LabelSpace

DATA_LOADING = ("auto", "memory", "lazy")
AUTO_LAZY_ABOVE = 5000  # data_loading=auto reads more records than this lazily

# bytes per sample of the WFDB storage formats (compressed ones are only checked for existence)
_WFDB_BYTES = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
               "212": 1.5, "310": 4 / 3, "311": 4 / 3}
_MAT4_BYTES = {0: 8, 1: 4, 2: 4, 3: 2, 4: 2, 5: 1}  # MATLAB v4 type digit P -> bytes per element


class RecordReadError(UserError):
    """A record that passed the header scan but whose signal could not be read later.

    DataLoader workers re-raise an exception as ``type(message with traceback)``; this class
    recovers its own one-line message from that text, so the CLI still prints one line.
    """

    def __init__(self, where: object, problem: Optional[str] = None):
        if problem is None:
            found = re.findall(r"RecordReadError: (.*)", str(where))
            if found:
                where = found[-1]
        super().__init__(where, problem)


def resolve_data_loading(mode: str, n_records: int) -> str:
    """``"auto"`` -> ``"memory"`` up to :data:`AUTO_LAZY_ABOVE` records, else ``"lazy"``;
    ``"memory"``/``"lazy"`` as given. ``UserError`` for anything else."""
    if mode not in DATA_LOADING:
        raise UserError("config data_loading", f"must be one of {', '.join(DATA_LOADING)}, got {mode!r}")
    if mode == "auto":
        return "lazy" if n_records > AUTO_LAZY_ABOVE else "memory"
    return mode


def _mat_shape(mat: Path) -> Tuple[Tuple[int, ...], Optional[int]]:
    """Shape of ``val`` in a MATLAB file and, for v4 files, the byte size its header implies."""
    with open(mat, "rb") as f:
        head = f.read(20 + 64)
    for order, machine in (("<", 0), (">", 1)):
        if len(head) < 20:
            break
        mopt, rows, cols, imagf, namlen = struct.unpack(order + "5i", head[:20])
        m, o, p, t = mopt // 1000, mopt // 100 % 10, mopt // 10 % 10, mopt % 10
        if (0 <= mopt < 10000 and m == machine and o == 0 and t == 0 and p in _MAT4_BYTES
                and imagf in (0, 1) and 0 < namlen <= 64 and rows >= 0 and cols >= 0):
            if head[20:20 + namlen].split(b"\0")[0] != b"val":
                break  # another variable first: let scipy list them
            return (rows, cols), 20 + namlen + rows * cols * _MAT4_BYTES[p] * (1 + imagf)
    import scipy.io

    try:
        found = [shape for name, shape, _ in scipy.io.whosmat(str(mat)) if name == "val"]
    except Exception as e:  # scipy raises many types for a file that is not MATLAB
        raise UserError(mat, describe_error(e, "MATLAB signal file")) from None
    if not found:
        raise UserError(mat, "unreadable MATLAB signal file (no 'val' variable)")
    return tuple(found[0]), None


def check_signal_files(h: Header) -> None:
    """Cheap checks of a record's signal files, without reading the samples: each file exists;
    a ``.mat`` holds ``val`` of ``(leads, samples)`` as the header says and, for MATLAB v4, is
    not truncated; a WFDB ``.dat`` is at least as long as the header implies. ``UserError`` else."""
    files = signal_files(h)
    if len(files) == 1 and files[0].lower().endswith(".mat"):
        mat = h.path.parent / files[0]
        shape, want = _mat_shape(mat)
        if len(shape) != 2:
            raise UserError(mat, f"'val' has {len(shape)} dimensions, expected leads x samples")
        if shape[0] != len(h.leads):
            raise UserError(h.path, f"header lists {len(h.leads)} leads but {mat.name} holds {shape[0]}")
        if shape[1] != h.n_samples:
            raise UserError(h.path, f"header gives {h.n_samples} samples but {mat.name} holds {shape[1]}")
        have = mat.stat().st_size
        if want is not None and have < want:
            raise UserError(mat, f"truncated: {have} bytes, its MATLAB header implies {want}")
        return
    if not (len(h.fmts) == len(h.byte_offsets) == len(h.samps_per_frame) == len(h.files)):
        return
    for f in files:
        sig = [k for k, g in enumerate(h.files) if g == f]
        if any(h.fmts[k] not in _WFDB_BYTES for k in sig):
            continue
        per_frame = sum(h.samps_per_frame[k] * _WFDB_BYTES[h.fmts[k]] for k in sig)
        want = h.byte_offsets[sig[0]] + int(h.n_samples * per_frame)
        have = (h.path.parent / f).stat().st_size
        if have < want:
            raise UserError(h.path.parent / f, f"truncated: {have} bytes, the header implies {want}")


def read_signal(path: Path, leads: Sequence[str], fs: float, band: Tuple[float, float]) -> np.ndarray:
    """Read and preprocess one scanned record -> ``(n_leads, n_samples at fs)`` float32.
    ``RecordReadError`` (one line naming the record) if that fails after the scan passed it."""
    try:
        return preprocess(read_record(path, leads), fs, band)
    except UserError as e:
        raise RecordReadError(f"{e} (found while training with data_loading=lazy, after the header scan "
                              "had passed this record; remove it and start again)") from None


@dataclass
class RecordIndex:
    """Scanned records whose signals are read on demand: paths, ids, Dx codes, multi-hot labels
    ``(N, C)``, one line per skipped record, and how to read and preprocess a signal.
    ``positions[k]`` is record k's place in the scanned paths (the skipped ones fill the gaps)."""

    paths: List[Path]
    ids: List[str]
    dx: List[List[str]]
    labels: np.ndarray
    failures: List[str]
    leads: Tuple[str, ...]
    fs: float
    band: Tuple[float, float]
    positions: List[int] = field(default_factory=list)
    used_leads: List[Tuple[str, ...]] = field(default_factory=list)   # per record: the lead set it will be read with

    def signal(self, i: int) -> np.ndarray:
        """Record ``i`` read and preprocessed: ``(n_leads, n_samples at fs)`` float32."""
        return read_signal(self.paths[i], self.leads, self.fs, self.band)


ScanOne = Tuple[Optional[Tuple[Path, str, List[str], Tuple[str, ...]]], Optional[str]]


def _scan_one(job) -> ScanOne:
    """One header: ``((path, id, dx, leads used), None)`` or ``(None, one-line problem)``."""
    p, leads, lead_sets, check_files = job
    try:
        h = read_header(p)
        if lead_sets:
            used = choose_lead_set(h, lead_sets)
        else:
            lead_indices(h, leads)
            used = tuple(leads)
        if check_files:
            check_signal_files(h)
    except UserError as e:
        return None, str(e)
    return (h.path, h.record_id, h.dx, used), None


def _scan_all(jobs: Sequence, num_workers: int, show_progress: bool) -> Iterator[ScanOne]:
    """``_scan_one`` over ``jobs`` in order: in this process, or in ``num_workers`` processes
    (headers are small files: the time goes to parsing, which processes share out)."""
    total = len(jobs)
    if num_workers > 1 and total > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        chunk = max(1, min(256, total // (num_workers * 8)))
        with ctx.Pool(int(num_workers)) as pool:
            it: Iterable = pool.imap(_scan_one, jobs, chunksize=chunk)
            if show_progress:
                from core.engine import progress

                it = progress(it, f"scanning headers ({num_workers} processes)", total=total)
            yield from it
        return
    it = map(_scan_one, jobs)
    if show_progress:
        from core.engine import progress

        it = progress(it, "scanning headers", total=total)
    yield from it


def scan_records(paths: Sequence[Path], leads: Sequence[str], fs: float, space: Optional[LabelSpace] = None,
                 band: Tuple[float, float] = (0.5, 45.0), show_progress: bool = False,
                 check_files: bool = True, num_workers: int = 0,
                 lead_sets: Optional[Sequence[Sequence[str]]] = None) -> Tuple[RecordIndex, LabelSpace]:
    """Headers only: ids, labels and cheap signal-file checks (:func:`check_signal_files`).
    Records failing the header, lead or file checks are skipped and listed in ``failures``.
    With ``space=None`` the label space is every class present (as in ``load_records``).
    ``check_files=False`` leaves the signal files to the read (which then names their problems
    exactly as :func:`apps.ecg.data.read_record` does). ``num_workers > 1`` parses the headers in
    that many processes (same index, same order). With ``lead_sets`` a record needs the leads of
    one of them (the largest it has is kept in ``used_leads``) instead of all ``leads``."""
    keep, ids, dxs, fails, pos, used = [], [], [], [], [], []
    jobs = [(p, tuple(leads), [tuple(s) for s in lead_sets] if lead_sets else None, check_files) for p in paths]
    for k, (ok, err) in enumerate(_scan_all(jobs, int(num_workers or 0), show_progress)):
        if ok is None:
            fails.append(err)
            continue
        pos.append(k)
        keep.append(ok[0])
        ids.append(ok[1])
        dxs.append(ok[2])
        used.append(ok[3])
    if space is None:
        space = LabelSpace.from_dx(dxs)
    y = np.stack([space.encode(d) for d in dxs]) if dxs else np.zeros((0, len(space)), np.float32)
    return RecordIndex(keep, ids, dxs, y, fails, tuple(leads), float(fs), (float(band[0]), float(band[1])),
                       pos, used), space


class LazyWindowDataset(WindowDataset):
    """:class:`WindowDataset` reading each record when asked: same items, same random draws.

    ``index`` is the scan, ``idx`` the records of this split. Items:
    ``(x (n_leads, length) float32, y (C,) float32)``.
    """

    def __init__(self, index: RecordIndex, idx: Sequence[int], length: int, train: bool = True, seed: int = 0):
        self.index, self.idx = index, np.asarray(idx, dtype=np.int64)
        super().__init__([], index.labels[self.idx], length, train, seed)

    def __len__(self) -> int:
        return len(self.idx)

    def _signal(self, i: int) -> np.ndarray:
        return self.index.signal(int(self.idx[i]))


TrainData = Union[LoadedSet, RecordIndex]


def window_dataset(data: TrainData, idx: Sequence[int], length: int, train: bool = True,
                   seed: int = 0) -> WindowDataset:
    """Windows of records ``idx``: in memory for a ``LoadedSet``, read on demand for a ``RecordIndex``.
    Items: ``(x (n_leads, length) float32, y (C,) float32)``, the same for both."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(data, RecordIndex):
        return LazyWindowDataset(data, idx, length, train, seed)
    return WindowDataset([data.signals[i] for i in idx], data.labels[idx], length, train, seed)


class _WholeRecords(torch.utils.data.Dataset):
    def __init__(self, index: RecordIndex, idx: Sequence[int]):
        self.index, self.idx = index, list(idx)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.index.signal(self.idx[i])


def _as_is(x):
    return x


def _in_order(ds: torch.utils.data.Dataset, num_workers: int) -> Iterator:
    """``ds``'s items one by one, in index order; ``num_workers`` processes read ahead."""
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=int(num_workers),
                                            collate_fn=_as_is))


def record_signals(data: TrainData, idx: Sequence[int], num_workers: int = 0) -> Iterator[np.ndarray]:
    """Whole preprocessed records ``(n_leads, L_i)`` in the order of ``idx``. For a ``RecordIndex``
    they are read as consumed (``num_workers`` processes read ahead), so memory stays bounded."""
    if isinstance(data, LoadedSet):
        for i in idx:
            yield data.signals[i]
        return
    yield from _in_order(_WholeRecords(data, idx), num_workers)


class RecordRead(NamedTuple):
    """One streamed record: its id, the preprocessed ``signal (n_leads, L at fs)`` float32 and the
    recording's duration in seconds; or ``error``, one line naming the record (``signal`` None)."""

    record_id: str
    signal: Optional[np.ndarray]
    duration_s: float
    error: Optional[str]
    leads: Tuple[str, ...] = ()     # the leads read (the rest of the model's leads are zero-filled)


class _ReadOrFail(torch.utils.data.Dataset):
    # a failed read is returned, not raised: a DataLoader stops at the first exception, while
    # evaluate and predict go on with the other records
    def __init__(self, paths: Sequence[Path], leads: Sequence[str], fs: float, band: Tuple[float, float],
                 lead_sets: Optional[Sequence[Sequence[str]]] = None):
        self.paths, self.leads, self.fs, self.band = list(paths), tuple(leads), float(fs), tuple(band)
        self.lead_sets = [tuple(s) for s in lead_sets] if lead_sets else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> RecordRead:
        try:
            used = self.leads
            if self.lead_sets:
                used = choose_lead_set(read_header(self.paths[i]), self.lead_sets)
            rec = read_record(self.paths[i], used)
            x = fill_leads(preprocess(rec, self.fs, self.band), used, self.leads)
        except UserError as e:
            return RecordRead(Path(self.paths[i]).name, None, 0.0, str(e))
        return RecordRead(rec.record_id, x, rec.signal.shape[1] / rec.header.fs, None, tuple(used))


def stream_records(paths: Sequence[Path], leads: Sequence[str], fs: float,
                   band: Tuple[float, float] = (0.5, 45.0), num_workers: int = 0,
                   lead_sets: Optional[Sequence[Sequence[str]]] = None) -> Iterator[RecordRead]:
    """Read and preprocess ``paths`` one at a time, yielding a :class:`RecordRead` per path in the
    order given, its ``signal`` ``(n_leads, L_i at fs)``. A record that cannot be read yields its
    one-line ``error`` (the text of :func:`apps.ecg.data.read_record`'s ``UserError``) and the
    stream goes on. ``num_workers`` processes read ahead (at most two records each), so memory
    holds a few records whatever the length of ``paths``. With ``lead_sets`` (a lead-masked
    model's) each record is read with the largest set it has, the other ``leads`` zero-filled,
    and ``RecordRead.leads`` names the set; a record with none of them is an ``error``."""
    yield from _in_order(_ReadOrFail(paths, leads, fs, band, lead_sets), num_workers)


def split_by_record(n: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Shuffle record indices and hold out ``val_fraction`` (at least one record each side).
    Returns sorted ``(train indices, validation indices)``, int arrays."""
    if n < 2:
        raise UserError("--data", f"need at least 2 usable records to train with a validation split, got {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
