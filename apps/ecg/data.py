"""WFDB records -> checked, resampled, filtered, normalised arrays, and in-memory training data
(``load_records``, ``WindowDataset``; the lazy, read-on-demand path is in :mod:`apps.ecg.dataset`).

Reads the PhysioNet/CinC Challenge layout (``REC.hea`` + MATLAB v4 ``REC.mat`` holding
``val``, leads x samples) and ordinary WFDB signal files (``.dat`` etc., through ``wfdb``).
Every problem with a record becomes one :class:`core.engine.UserError` line naming it.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.engine import UserError, describe_error

from .labels import LabelSpace

LEADS_12: Tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# lead subsets of the 2021 Challenge ("Will two do?")
LEAD_SETS: Dict[int, Tuple[str, ...]] = {
    12: LEADS_12,
    6: ("I", "II", "III", "aVR", "aVL", "aVF"),
    4: ("I", "II", "III", "V2"),
    3: ("I", "II", "V2"),
    2: ("I", "II"),
}
_CANON = {name.lower(): name for name in LEADS_12}
MIN_FS, MAX_FS = 100.0, 10000.0  # below 100 Hz the QRS complex is not resolved


def canonical_lead(name: str) -> Optional[str]:
    """``"AVR"``/``"avr"`` -> ``"aVR"``; None for a name that is not one of the 12 leads."""
    return _CANON.get(str(name).strip().lower())


def parse_leads(spec) -> Tuple[str, ...]:
    """``12``/``"6"`` -> a Challenge lead set; ``"I,II,V2"`` -> those leads (canonical names)."""
    s = str(spec).strip()
    if s.isdigit():
        n = int(s)
        if n not in LEAD_SETS:
            raise UserError("--leads", f"{n} leads is not a Challenge lead set (use one of 12, 6, 4, 3, 2 "
                                       "or a comma-separated list of lead names)")
        return LEAD_SETS[n]
    names = [p for p in re.split(r"[,\s]+", s) if p]
    out = []
    for p in names:
        c = canonical_lead(p)
        if c is None:
            raise UserError("--leads", f"unknown lead name {p!r} (expected {', '.join(LEADS_12)})")
        if c not in out:
            out.append(c)
    if not out:
        raise UserError("--leads", "no lead given")
    return tuple(out)


@dataclass
class Header:
    """What the ``.hea`` file says about a record."""

    path: Path                      # record path without extension
    fs: float
    n_samples: int
    leads: List[str]                # names as written in the header
    files: List[str]
    gains: List[float]
    baselines: List[int]
    age: Optional[float] = None
    sex: Optional[str] = None
    dx: List[str] = field(default_factory=list)
    fmts: List[str] = field(default_factory=list)            # WFDB storage format per signal ("16", "212")
    byte_offsets: List[int] = field(default_factory=list)
    samps_per_frame: List[int] = field(default_factory=list)

    @property
    def record_id(self) -> str:
        return self.path.name


@dataclass
class Record:
    """A loaded record: ``signal (n_leads, n_samples)`` float32 in mV at ``header.fs``, leads in order."""

    header: Header
    signal: np.ndarray
    leads: Tuple[str, ...]

    @property
    def record_id(self) -> str:
        return self.header.record_id


def _record_path(p: Path) -> Path:
    return p.with_suffix("") if p.suffix.lower() in (".hea", ".mat", ".dat") else p


def find_records(inputs: Sequence[str | Path]) -> List[Path]:
    """Record paths (without extension) from folders (searched recursively for ``*.hea``) and
    files (``REC.hea``, ``REC.mat`` or ``REC``). Sorted, no duplicates."""
    out: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q.with_suffix("") for q in p.rglob("*.hea") if not q.name.startswith("."))
            if not found:
                raise UserError(p, "no WFDB header (.hea) files in this folder")
            out.extend(found)
        else:
            rec = _record_path(p)
            if not rec.with_suffix(".hea").is_file():
                raise UserError(p, "not found (expected a folder, REC.hea, REC.mat or a record name)")
            out.append(rec)
    seen, uniq = set(), []
    for r in out:
        if r not in seen:
            seen.add(r)
            uniq.append(r)
    return uniq


_COMMENT = re.compile(r"^\s*#?\s*([A-Za-z]+)\s*:\s*(.*)$")


def _parse_comments(lines: Iterable[str]) -> Dict[str, str]:
    out = {}
    for line in lines:
        m = _COMMENT.match(line)
        if m:
            out[m.group(1).lower()] = m.group(2).strip()
    return out


def read_header(record: str | Path) -> Header:
    """Parse ``record.hea`` (``# Dx:`` and ``#Dx:`` both accepted). ``UserError`` on a bad header."""
    import wfdb

    rec = _record_path(Path(record))
    hea = rec.with_suffix(".hea")
    if not hea.is_file():
        raise UserError(hea, "header file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = wfdb.rdheader(str(rec))
    except Exception as e:  # wfdb raises many types for malformed text
        raise UserError(hea, describe_error(e, "WFDB header")) from None
    if not h.n_sig or not h.sig_name:
        raise UserError(hea, "header lists no signals")
    fs = float(h.fs) if h.fs is not None else float("nan")
    if not math.isfinite(fs) or not (MIN_FS <= fs <= MAX_FS):
        raise UserError(hea, f"unsupported sampling rate {h.fs} Hz (supported {MIN_FS:g}-{MAX_FS:g} Hz)")
    n = int(h.sig_len or 0)
    if n <= 0:
        raise UserError(hea, "zero-length recording (header gives 0 samples)")
    com = _parse_comments(h.comments or [])
    age = None
    try:
        age = float(com.get("age", "")) if com.get("age", "").lower() not in ("", "nan", "unknown") else None
    except ValueError:
        age = None
    dx = [c.strip() for c in com.get("dx", "").split(",") if c.strip()]
    gains = [float(g) if g else 200.0 for g in h.adc_gain]  # WFDB: gain 0 means uncalibrated, 200 adu/mV
    return Header(path=rec, fs=fs, n_samples=n, leads=list(h.sig_name), files=list(h.file_name),
                  gains=gains, baselines=[int(b) for b in h.baseline], age=age,
                  sex=com.get("sex") or None, dx=dx, fmts=[str(f) for f in (h.fmt or [])],
                  byte_offsets=[int(b or 0) for b in (h.byte_offset or [])],
                  samps_per_frame=[int(n or 1) for n in (h.samps_per_frame or [])])


def signal_files(h: Header) -> List[str]:
    """The record's distinct signal file names, sorted; ``UserError`` (naming the header) if one is missing."""
    files = sorted(set(h.files))
    for f in files:
        if not (h.path.parent / f).is_file():
            raise UserError(h.path.with_suffix(".hea"), f"signal file {f} is missing")
    return files


def _read_digital(h: Header) -> np.ndarray:
    """Raw samples ``(n_sig, n_samples)`` as stored, with the checks the header allows."""
    n_sig = len(h.leads)
    files = signal_files(h)
    if len(files) == 1 and files[0].lower().endswith(".mat"):
        import scipy.io

        mat = h.path.parent / files[0]
        try:
            val = scipy.io.loadmat(str(mat))["val"]
        except Exception as e:
            raise UserError(mat, describe_error(e, "MATLAB signal file")) from None
        val = np.asarray(val)
        if val.ndim != 2:
            raise UserError(mat, f"'val' has {val.ndim} dimensions, expected leads x samples")
        if val.shape[0] != n_sig:
            raise UserError(h.path, f"header lists {n_sig} leads but {mat.name} holds {val.shape[0]}")
        if val.shape[1] != h.n_samples:
            raise UserError(h.path, f"header gives {h.n_samples} samples but {mat.name} holds {val.shape[1]}")
        return val.astype(np.float64)
    import wfdb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = wfdb.rdrecord(str(h.path), physical=False, return_res=64)
    except Exception as e:
        raise UserError(h.path, describe_error(e, "WFDB signal file")) from None
    d = r.d_signal
    if d is None or d.shape != (h.n_samples, n_sig):
        got = None if d is None else d.shape
        raise UserError(h.path, f"header gives {n_sig} leads x {h.n_samples} samples but the signal file "
                                f"holds {got[1] if got else 0} x {got[0] if got else 0}")
    return d.T.astype(np.float64)


def lead_indices(h: Header, leads: Sequence[str]) -> List[int]:
    """Rows of the stored signal holding ``leads``, matched by name; ``UserError`` for an unknown
    lead name or a lead the model needs that the record lacks."""
    canon = []
    for name in h.leads:
        c = canonical_lead(name)
        if c is None:
            raise UserError(h.path.with_suffix(".hea"),
                            f"unknown lead name {name!r} (expected {', '.join(LEADS_12)})")
        canon.append(c)
    missing = [lead for lead in leads if lead not in canon]
    if missing:
        raise UserError(h.path, f"lacks lead(s) {', '.join(missing)} needed by the model")
    return [canon.index(lead) for lead in leads]


def lead_set_name(leads: Sequence[str]) -> str:
    """``("I", "II")`` -> ``"2 leads (I,II)"``; all 12 -> ``"12 leads"``."""
    return f"{len(leads)} leads" + ("" if tuple(leads) == LEADS_12 else f" ({','.join(leads)})")


def choose_lead_set(h: Header, lead_sets: Sequence[Sequence[str]]) -> Tuple[str, ...]:
    """The first (largest) of ``lead_sets`` whose leads the record has, matched by name;
    ``UserError`` naming the record when it has none of them (or an unknown lead name)."""
    have = set()
    for name in h.leads:
        c = canonical_lead(name)
        if c is None:
            raise UserError(h.path.with_suffix(".hea"),
                            f"unknown lead name {name!r} (expected {', '.join(LEADS_12)})")
        have.add(c)
    for s in lead_sets:
        if set(s) <= have:
            return tuple(s)
    want = "; ".join(",".join(s) for s in lead_sets)
    raise UserError(h.path, f"has leads {','.join(c for c in LEADS_12 if c in have) or 'none'}, too few for the "
                            f"model: it needs one of its lead sets ({want})")


def fill_leads(x: np.ndarray, used: Sequence[str], leads: Sequence[str]) -> np.ndarray:
    """``x (len(used), L)`` -> ``(len(leads), L)`` in ``leads`` order, absent leads zero-filled
    (what a lead-masked model reads as "missing")."""
    if tuple(used) == tuple(leads):
        return x
    out = np.zeros((len(leads), x.shape[-1]), dtype=x.dtype)
    for i, lead in enumerate(used):
        out[list(leads).index(lead)] = x[i]
    return out


def read_record(record: str | Path, leads: Sequence[str] = LEADS_12) -> Record:
    """Load one record in mV with ``leads`` selected by name (any header order).

    Raises ``UserError`` naming the record for: missing/unreadable signal file, header and
    signal disagreeing, non-finite samples, unknown lead names, missing leads, zero length,
    unsupported sampling rate.
    """
    h = read_header(record)
    pick = lead_indices(h, leads)
    d = _read_digital(h)
    gains = np.asarray(h.gains, dtype=np.float64)[pick, None]
    base = np.asarray(h.baselines, dtype=np.float64)[pick, None]
    x = (d[pick] - base) / gains
    bad = ~np.isfinite(x)
    if bad.any():
        lead = leads[int(np.nonzero(bad.any(1))[0][0])]
        raise UserError(h.path, f"{int(bad.sum())} non-finite samples (first in lead {lead})")
    return Record(header=h, signal=x.astype(np.float32), leads=tuple(leads))


def resample(x: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Polyphase resampling along the last axis (257 -> 500 Hz is 500/257 exactly)."""
    if abs(fs - target_fs) < 1e-9:
        return x
    from scipy.signal import resample_poly

    r = Fraction(target_fs / fs).limit_denominator(1000)
    return resample_poly(x, r.numerator, r.denominator, axis=-1).astype(np.float32)


def bandpass(x: np.ndarray, fs: float, low: float = 0.5, high: float = 45.0, order: int = 3) -> np.ndarray:
    """Zero-phase Butterworth band-pass (removes baseline wander and mains/EMG noise)."""
    from scipy.signal import butter, sosfiltfilt

    high = min(high, 0.45 * fs)
    sos = butter(order, [low, high], btype="band", fs=fs, output="sos")
    if x.shape[-1] < 16:
        return x
    padlen = min(3 * (2 * len(sos) + 1), x.shape[-1] - 1)
    return sosfiltfilt(sos, x, axis=-1, padlen=padlen).astype(np.float32)


def normalise(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Per-lead zero mean, unit variance; a flat lead stays zero."""
    m = x.mean(-1, keepdims=True)
    s = x.std(-1, keepdims=True)
    return ((x - m) / np.maximum(s, eps)).astype(np.float32)


def preprocess(rec: Record, fs: float = 500.0, band: Tuple[float, float] = (0.5, 45.0)) -> np.ndarray:
    """Record -> ``(n_leads, n_samples at fs)`` float32: resampled, band-passed, normalised."""
    x = resample(rec.signal, rec.header.fs, fs)
    x = bandpass(x, fs, band[0], band[1])
    return normalise(x)


def crop_or_pad(x: np.ndarray, length: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``(C, L)`` -> ``(C, length)``: a random crop (centre when ``rng`` is None) or zero padding."""
    n = x.shape[-1]
    if n >= length:
        start = int(rng.integers(0, n - length + 1)) if rng is not None else (n - length) // 2
        return x[:, start:start + length]
    out = np.zeros((x.shape[0], length), dtype=x.dtype)
    out[:, :n] = x
    return out


def windows(x: np.ndarray, length: int, hop: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Cover a whole record with windows: ``(W, C, length)`` and their start samples ``(W,)``.

    Windows step by ``hop`` (default ``length``); the last one ends at the record's end, so
    only records shorter than one window are zero-padded.
    """
    n = x.shape[-1]
    hop = hop or length
    if n <= length:
        return crop_or_pad(x, length)[None], np.zeros(1, dtype=np.int64)
    starts = list(range(0, n - length + 1, hop))
    if starts[-1] + length < n:
        starts.append(n - length)
    return np.stack([x[:, s:s + length] for s in starts]), np.asarray(starts, dtype=np.int64)


@dataclass
class LoadedSet:
    """Preprocessed records ready for training: ids, signals, multi-hot labels, failures."""

    ids: List[str]
    signals: List[np.ndarray]
    labels: np.ndarray                 # (N, C)
    dx: List[List[str]]
    failures: List[str]                # one line per skipped record


def load_records(paths: Sequence[Path], leads: Sequence[str], fs: float, space: Optional[LabelSpace] = None,
                 band: Tuple[float, float] = (0.5, 45.0), show_progress: bool = False) -> Tuple[LoadedSet, Optional[LabelSpace]]:
    """Read and preprocess every record; bad ones are skipped and listed in ``failures``.

    With ``space=None`` the label space is every class present (``LabelSpace.from_dx``).
    """
    ids, sigs, dxs, fails = [], [], [], []
    it: Iterable = paths
    if show_progress:
        from core.engine import progress

        it = progress(paths, "reading records", total=len(paths))
    for p in it:
        try:
            rec = read_record(p, leads)
            sigs.append(preprocess(rec, fs, band))
            ids.append(rec.record_id)
            dxs.append(rec.header.dx)
        except UserError as e:
            fails.append(str(e))
    if space is None:
        space = LabelSpace.from_dx(dxs)
    y = np.stack([space.encode(d) for d in dxs]) if dxs else np.zeros((0, len(space)), np.float32)
    return LoadedSet(ids, sigs, y, dxs, fails), space


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length windows for training: random crops (``train``) or centre crops, zero-padded.

    Items: ``(x (n_leads, length) float32, y (C,) float32)``. Random draws come from one stream
    seeded with ``seed`` in the main process; each DataLoader worker gets its own stream, seeded
    from torch's worker seed (so workers differ, and a seeded loader ``generator`` reproduces them).
    """

    def __init__(self, signals: Sequence[np.ndarray], labels: np.ndarray, length: int, train: bool = True,
                 seed: int = 0):
        self.signals, self.labels, self.length, self.train = list(signals), labels, int(length), train
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._worker_seed: Optional[int] = None

    def __len__(self) -> int:
        return len(self.signals)

    def _signal(self, i: int) -> np.ndarray:
        return self.signals[i]

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            # every worker holds a copy of this dataset, RNG state included: re-seed it per worker
            self._worker_seed, self._rng = info.seed, np.random.default_rng(info.seed)
        return self._rng

    def __getitem__(self, i: int):
        sig = self._signal(i)
        rng = self._generator() if self.train else None
        x = crop_or_pad(sig, self.length, rng)
        if rng is not None:
            # amplitude scaling: lead gains differ between devices
            x = x * np.float32(rng.uniform(0.8, 1.2))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(self.labels[i])
