"""Audio and corpora: reading any soundfile format to 16 kHz mono, LibriSpeech / Kaldi / manifest
corpora, LibriSpeech-style text normalisation, and the length-sorted bucket sampler.

Every reader raises :class:`core.engine.UserError` naming the file (and line) on bad input, so a
caller can skip that item and go on.
"""
from __future__ import annotations

import csv
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from core.engine import UserError

SAMPLE_RATE = 16000
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")


# ---------------------------------------------------------------------------------------------- audio
def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) float32 at ``sr_in`` -> (m,) float32 at ``sr_out`` with soxr (HQ), or scipy's
    polyphase resampler when soxr is missing."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(x.astype(np.float32, copy=False), sr_in, sr_out, quality="HQ").astype(np.float32)
    except ImportError:  # pragma: no cover - soxr is a dependency of the asr extra
        from scipy.signal import resample_poly

        g = math.gcd(int(sr_in), int(sr_out))
        return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def audio_info(path: str | Path) -> Tuple[int, int, int]:
    """(sample_rate, frames, channels) from the header; UserError if unreadable."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise UserError(p, "audio file not found")
    try:
        info = sf.info(str(p))
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on garbage
        raise UserError(p, f"cannot read audio ({_first_line(e)})") from None
    if info.samplerate <= 0:
        raise UserError(p, f"invalid sample rate {info.samplerate}")
    short = _wav_shortfall(p)
    if short:
        raise UserError(p, f"truncated audio: the WAV header declares {short} more bytes than the file holds")
    return int(info.samplerate), int(info.frames), int(info.channels)


def _wav_shortfall(p: Path) -> int:
    """Bytes missing from a RIFF/WAVE file's data chunk (0 when complete or not a WAV).

    libsndfile silently shortens a cut WAV to what is there, so a transfer that stopped half-way
    would pass as a shorter recording without this check."""
    import struct

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return 0
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    if n in (0, 0xFFFFFFFF):        # streamed WAV: size unknown
                        return 0
                    return max(0, pos + 8 + n - size)
                pos += 8 + n + (n & 1)
    except OSError:
        return 0
    return 0


def read_audio(path: str | Path, start: Optional[float] = None, end: Optional[float] = None,
               sample_rate: int = SAMPLE_RATE, max_seconds: Optional[float] = None) -> np.ndarray:
    """Read ``path`` (WAV/FLAC/OGG..., 16/24/32-bit int or float), mix down to mono, resample.

    ``start``/``end`` (seconds) cut a segment. Returns float32 ``(n,)`` in [-1, 1] at ``sample_rate``.
    Raises UserError on a missing, unreadable, empty, truncated or too long file.
    """
    import soundfile as sf

    p = Path(path)
    sr, frames, _ = audio_info(p)
    a = 0 if start is None else int(round(float(start) * sr))
    b = frames if end is None else min(frames, int(round(float(end) * sr)))
    if a < 0 or (end is not None and b <= a) or (start is not None and a >= frames):
        raise UserError(p, f"segment {start}-{end} s is outside the audio (0-{frames / sr:.2f} s)")
    if max_seconds is not None and (b - a) / sr > max_seconds:
        raise UserError(p, f"audio is {(b - a) / sr / 3600:.2f} h long, more than the limit of "
                           f"{max_seconds / 3600:.2f} h")
    if b - a <= 0:
        raise UserError(p, "empty audio (0 samples)")
    try:
        x, _ = sf.read(str(p), start=a, stop=b, dtype="float32", always_2d=True)
    except Exception as e:
        raise UserError(p, f"cannot decode audio ({_first_line(e)})") from None
    if x.shape[0] < b - a:
        raise UserError(p, f"truncated audio: header says {b - a} samples, file holds {x.shape[0]}")
    if not np.isfinite(x).all():
        raise UserError(p, "audio holds NaN or infinite samples")
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return resample(mono, sr, sample_rate)


def iter_audio_blocks(path: str | Path, block_seconds: float = 10.0,
                      sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Stream a file of any length as float32 mono blocks at ``sample_rate`` (constant memory):
    soundfile reads blocks, soxr's streaming resampler converts them (same output as one call)."""
    import soundfile as sf

    p = Path(path)
    sr, frames, _ = audio_info(p)
    if frames <= 0:
        raise UserError(p, "empty audio (0 samples)")
    stream = None
    if sr != sample_rate:
        import soxr

        stream = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ")
    n_read = 0
    try:
        blocks = sf.blocks(str(p), blocksize=max(1, int(block_seconds * sr)), dtype="float32", always_2d=True)
        for x in blocks:
            n_read += x.shape[0]
            mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
            last = n_read >= frames
            yield mono if stream is None else stream.resample_chunk(mono, last=last)
    except UserError:
        raise
    except Exception as e:
        raise UserError(p, f"cannot decode audio ({_first_line(e)})") from None
    if n_read < frames:
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
        raise UserError(p, f"truncated audio: header says {frames} samples, file holds {n_read}")


def speed_perturb(x: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Kaldi/ESPnet speed perturbation: tempo and pitch change by ``factor`` (0.9 -> 10 % slower)."""
    if factor == 1.0:
        return x
    return resample(x, int(round(sample_rate * factor)), sample_rate)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160] or type(e).__name__


# ----------------------------------------------------------------------------------------------- text
_KEEP = re.compile(r"[^A-Z0-9' ]+")


def normalize_text(text: str) -> str:
    """LibriSpeech-style: NFKC, upper case, punctuation (but apostrophes) to spaces, single spaces.

    Letters outside A-Z (accents, other scripts) are kept so non-English corpora still work."""
    t = unicodedata.normalize("NFKC", text).upper()
    t = t.replace("’", "'").replace("‘", "'")
    t = "".join(c if (c.isalnum() or c in "' ") else " " for c in t)
    t = re.sub(r"(^|\s)'+|'+(\s|$)", " ", t)  # quotes, not apostrophes
    return " ".join(t.split())


# -------------------------------------------------------------------------------------------- corpora
@dataclass
class Utterance:
    """One labelled (or unlabelled: ``text`` None) stretch of audio."""

    utt_id: str
    path: str
    text: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    duration: Optional[float] = None   # seconds, filled by :func:`fill_durations`


@dataclass
class Corpus:
    """Utterances found plus one line per item that could not be used."""

    utterances: List[Utterance]
    failures: List[str]
    kind: str


def _read_lines(path: Path) -> List[str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(path, f"cannot read ({_first_line(e)})") from None
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}", "not UTF-8 text") from None


_PATH_KEYS = ("path", "audio", "audio_filepath", "wav", "audio_path", "file")
_TEXT_KEYS = ("transcript", "text", "txt", "sentence", "normalized_text")
_ID_KEYS = ("utt_id", "id", "key", "utt")


def _pick(row: dict, keys: Sequence[str]):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def _manifest_row(row: dict, base: Path, where: str, n: int) -> Utterance:
    path = _pick(row, _PATH_KEYS)
    if path is None:
        raise UserError(where, f"no audio path column (one of {', '.join(_PATH_KEYS)})")
    text = _pick(row, _TEXT_KEYS)
    times = []
    for k in ("start", "end"):
        v = row.get(k)
        if v in (None, ""):
            times.append(None)
            continue
        try:
            times.append(float(v))
        except (TypeError, ValueError):
            raise UserError(where, f"column {k!r} is not a number: {v!r}") from None
    if row.get("offset") not in (None, "") and times[0] is None:  # NeMo: offset + duration
        try:
            times[0] = float(row["offset"])
            if row.get("duration") not in (None, ""):
                times[1] = times[0] + float(row["duration"])
        except (TypeError, ValueError):
            raise UserError(where, "offset/duration are not numbers") from None
    p = Path(str(path))
    p = p if p.is_absolute() else base / p
    uid = _pick(row, _ID_KEYS) or f"{p.stem}" + (f"_{n}" if times[0] is not None else "")
    return Utterance(str(uid), str(p), None if text is None else str(text), times[0], times[1])


def read_tsv_manifest(path: Path) -> Corpus:
    """TSV: a header naming ``path``/``transcript`` (+ ``start``, ``end``, ``utt_id``), or no header
    and columns path, transcript[, start, end]. Relative paths are relative to the manifest."""
    lines = _read_lines(path)
    utts, fails = [], []
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise UserError(path, "empty manifest")
    first = [c.strip().lower() for c in rows[0]]
    if any(c in _PATH_KEYS for c in first):
        header, body, off = first, rows[1:], 2
    else:
        header, body, off = ["path", "transcript", "start", "end"], rows, 1
        if len(rows[0]) not in (1, 2, 4):
            raise UserError(f"{path}:1", f"expected a header or 2 or 4 tab-separated columns, got {len(rows[0])}")
    for i, r in enumerate(body):
        where = f"{path}:{i + off}"
        if not any(c.strip() for c in r):
            continue
        if len(r) > len(header):
            fails.append(f"{where}: {len(r)} columns, header has {len(header)}")
            continue
        try:
            utts.append(_manifest_row(dict(zip(header, r)), path.parent, where, i))
        except UserError as e:
            fails.append(str(e))
    return Corpus(utts, fails, "tsv")


def read_jsonl_manifest(path: Path) -> Corpus:
    """JSON lines with ``path``|``audio_filepath``|``wav`` and ``transcript``|``text``|``txt`` (+ ``start``,
    ``end`` or NeMo's ``offset``/``duration``, ``utt_id``|``key``): ESPnet/NeMo/WeNet ``data.list``."""
    utts, fails = [], []
    for i, line in enumerate(_read_lines(path)):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as e:
            fails.append(f"{where}: not a JSON object ({_first_line(e)})")
            continue
        try:
            utts.append(_manifest_row(row, path.parent, where, i))
        except UserError as e:
            fails.append(str(e))
    return Corpus(utts, fails, "jsonl")


def _kv_file(path: Path) -> dict:
    out = {}
    for i, line in enumerate(_read_lines(path)):
        parts = line.strip().split(maxsplit=1)
        if parts:
            out[parts[0]] = (parts[1] if len(parts) > 1 else "", i + 1)
    return out


def read_kaldi_dir(folder: Path) -> Corpus:
    """Kaldi/ESPnet/WeNet data folder: ``wav.scp`` (utt path) + ``text`` (utt transcript), and
    ``segments`` (utt recording start end) when present. Piped ``wav.scp`` commands are refused."""
    wav = _kv_file(folder / "wav.scp")
    text = _kv_file(folder / "text") if (folder / "text").is_file() else {}
    utts, fails = [], []
    seg_file = folder / "segments"
    if seg_file.is_file():
        items = []
        for utt, (rest, ln) in _kv_file(seg_file).items():
            f = rest.split()
            try:
                items.append((utt, f[0], float(f[1]), float(f[2]), ln))
            except (IndexError, ValueError):
                fails.append(f"{seg_file}:{ln}: expected 'utt recording start end'")
    else:
        items = [(utt, utt, None, None, ln) for utt, (_, ln) in wav.items()]
    for utt, rec, s, e, ln in items:
        if rec not in wav:
            fails.append(f"{seg_file}:{ln}: recording {rec!r} is not in wav.scp")
            continue
        p, wln = wav[rec]
        if p.rstrip().endswith("|"):
            fails.append(f"{folder / 'wav.scp'}:{wln}: piped commands are not supported; write the audio to files")
            continue
        pp = Path(p.strip())
        pp = pp if pp.is_absolute() else folder / pp
        if text and utt not in text:
            fails.append(f"{folder / 'text'}: no transcript for {utt!r}")
            continue
        utts.append(Utterance(utt, str(pp), text[utt][0] if text else None, s, e))
    return Corpus(utts, fails, "kaldi")


def read_librispeech(folder: Path) -> Corpus:
    """LibriSpeech layout: ``<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` and
    ``<speaker>-<chapter>.trans.txt`` (``utt TRANSCRIPT`` lines), at any depth under ``folder``."""
    utts, fails = [], []
    for trans in sorted(folder.rglob("*.trans.txt")):
        try:
            rows = _kv_file(trans)
        except UserError as e:
            fails.append(str(e))
            continue
        for utt, (txt, ln) in rows.items():
            audio = next((trans.parent / f"{utt}{ext}" for ext in (".flac", ".wav")
                          if (trans.parent / f"{utt}{ext}").is_file()), None)
            if audio is None:
                fails.append(f"{trans}:{ln}: audio {utt}.flac not found")
                continue
            utts.append(Utterance(utt, str(audio), txt))
    return Corpus(utts, fails, "librispeech")


def load_corpus(spec: str | Path) -> Corpus:
    """A manifest (``.tsv``/``.jsonl``/``.json``), a Kaldi folder (``wav.scp``), or a LibriSpeech tree."""
    p = Path(spec)
    if p.is_file():
        suf = p.suffix.lower()
        if suf in (".jsonl", ".json", ".list") or p.name == "data.list":
            return read_jsonl_manifest(p)
        if suf in (".tsv", ".txt", ".csv"):
            return read_tsv_manifest(p)
        raise UserError(p, "unknown manifest type (expected .tsv or .jsonl)")
    if p.is_dir():
        if (p / "wav.scp").is_file():
            return read_kaldi_dir(p)
        c = read_librispeech(p)
        if c.utterances or c.failures:
            return c
        raise UserError(p, "no corpus found (expected wav.scp + text, or LibriSpeech *.trans.txt files)")
    raise UserError(p, "not found")


def load_corpora(specs: Sequence[str | Path], require_text: bool = True) -> Corpus:
    """Several corpora as one; with ``require_text`` utterances without a transcript are failures."""
    utts, fails, kinds = [], [], []
    for s in specs:
        c = load_corpus(s)
        kinds.append(c.kind)
        fails += c.failures
        for u in c.utterances:
            if require_text and u.text is None:
                fails.append(f"{u.path}: no transcript")
            else:
                utts.append(u)
    return Corpus(utts, fails, "+".join(kinds))


def find_audio(inputs: Sequence[str | Path]) -> List[Path]:
    """Audio files named directly or found (recursively) in folders, sorted; UserError if none."""
    out: List[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_EXTS and q.is_file())
        else:
            out.append(p)  # a missing file is reported per item by the reader
    if not out:
        raise UserError(", ".join(map(str, inputs)), "no audio files found")
    return out


def fill_durations(utts: Sequence[Utterance]) -> Tuple[List[Utterance], List[str]]:
    """Durations from headers (no decoding); unreadable items become failure lines."""
    ok, fails = [], []
    for u in utts:
        try:
            sr, frames, _ = audio_info(u.path)
        except UserError as e:
            fails.append(str(e))
            continue
        total = frames / sr
        s = u.start or 0.0
        e = total if u.end is None else min(u.end, total)
        if frames == 0 or e - s <= 0:
            fails.append(f"{u.path}: empty audio" if frames == 0 else f"{u.path}: segment {u.start}-{u.end} s is "
                         f"outside the audio (0-{total:.2f} s)")
            continue
        u.duration = e - s
        ok.append(u)
    return ok, fails


# ------------------------------------------------------------------------------------------- batching
class BucketBatchSampler:
    """Length-sorted batches (little padding): utterances sorted by duration are cut into batches
    of at most ``batch_seconds`` of audio (and ``max_batch_size`` items); batch order is shuffled
    every epoch. Under DDP each rank takes every ``num_replicas``-th batch (padded by repeating)."""

    def __init__(self, durations: Sequence[float], batch_seconds: float, max_batch_size: int = 64,
                 shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        order = np.argsort(np.asarray(durations), kind="stable")
        self.batches: List[List[int]] = []
        cur: List[int] = []
        longest = 0.0
        for i in order:
            d = float(durations[i])
            if cur and (max(longest, d) * (len(cur) + 1) > batch_seconds or len(cur) >= max_batch_size):
                self.batches.append(cur)
                cur, longest = [], 0.0
            cur.append(int(i))
            longest = max(longest, d)
        if cur:
            self.batches.append(cur)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_replicas, self.rank = max(1, num_replicas), rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> List[List[int]]:
        idx = np.arange(len(self.batches))
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(idx)
        per = math.ceil(len(idx) / self.num_replicas)
        idx = np.resize(idx, per * self.num_replicas)  # repeat a few so every rank gets as many
        return [self.batches[i] for i in idx[self.rank::self.num_replicas]]

    def __iter__(self):
        batches = self._mine()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.num_replicas)
