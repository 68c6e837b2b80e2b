"""A spoken corpus made offline with eSpeak NG (the ``espeakng-loader`` wheel bundles the library;
Debian's ``libespeak-ng`` is used when the wheel is missing), driven through ctypes. Exact
transcripts, several voices (variants, rates, pitches), written as WAV + a TSV manifest."""
from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from core.engine import UserError, atomic_write

WORDS = ("the a one two three four five six seven eight nine ten red green blue black white small big old new "
         "cat dog bird fish horse cow man woman child king queen house tree river road city car boat train "
         "runs walks sees finds takes gives likes wants eats reads near over under behind before after "
         "quickly slowly today tomorrow yesterday morning evening night water bread apple book letter door "
         "window garden music story friend brother sister mother father teacher doctor ship").split()

VOICES = ("m1", "m3", "f1", "f3", "m5", "f5", "m7", "f4")

_lib = None
_sr = 0
_buf: List[np.ndarray] = []
_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _collect(wav, n, events):
    if n > 0:
        _buf.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


_callback = _CB(_collect)


def _load():
    global _lib, _sr
    if _lib is not None:
        return _lib
    path, data = None, None
    try:
        import espeakng_loader

        path, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except ImportError:
        path = ctypes.util.find_library("espeak-ng")
    if not path:
        raise UserError("eSpeak NG", "not available: pip install espeakng-loader (or apt install libespeak-ng1)")
    lib = ctypes.CDLL(str(path))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    _sr = lib.espeak_Initialize(1, 0, None if data is None else str(data).encode(), 0)   # 1: retrieval mode
    if _sr <= 0:
        raise UserError("eSpeak NG", "could not initialise the library")
    lib.espeak_SetSynthCallback(_callback)
    _lib = lib
    return lib


def speak(text: str, voice: str = "m1", rate: int = 170, pitch: int = 50, lang: str = "en") -> Tuple[np.ndarray, int]:
    """Synthesise ``text``; returns (float32 samples, sample rate) (22.05 kHz)."""
    lib = _load()
    if lib.espeak_SetVoiceByName(f"{lang}+{voice}".encode()) != 0:
        raise UserError("eSpeak NG", f"unknown voice {lang}+{voice}")
    lib.espeak_SetParameter(1, int(rate), 0)     # espeakRATE (words per minute)
    lib.espeak_SetParameter(3, int(pitch), 0)    # espeakPITCH (0-100)
    _buf.clear()
    data = text.encode("utf-8")
    lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)   # POS_CHARACTER, espeakCHARS_UTF8
    lib.espeak_Synchronize()
    x = np.concatenate(_buf) if _buf else np.zeros(0, np.int16)
    return (x.astype(np.float32) / 32768.0), _sr


def random_sentences(n: int, seed: int, min_words: int = 3, max_words: int = 8,
                     vocab: Sequence[str] = WORDS) -> List[str]:
    """``n`` distinct random word strings over ``vocab``."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        s = " ".join(rng.choice(vocab, size=int(rng.integers(min_words, max_words + 1))))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_corpus(folder: str | Path, sentences: Sequence[str], voices: Sequence[str], seed: int = 0,
                prefix: str = "utt", rate_range=(150, 190), pitch_range=(35, 65), noise: float = 0.002,
                sample_rate: Optional[int] = 16000) -> Path:
    """Speak ``sentences[i]`` with ``voices[i % len(voices)]`` (random rate/pitch, light noise) into
    ``folder/wavs/*.wav`` and ``folder/manifest.tsv`` (header ``utt_id path transcript speaker``).
    Returns the manifest path."""
    import soundfile as sf

    from .data import resample

    folder = Path(folder)
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, text in enumerate(sentences):
        v = voices[i % len(voices)]
        x, sr = speak(text, v, int(rng.integers(*rate_range)), int(rng.integers(*pitch_range)))
        if sample_rate and sr != sample_rate:
            x, sr = resample(x, sr, sample_rate), sample_rate
        x = x + noise * rng.standard_normal(len(x)).astype(np.float32)
        name = f"{prefix}{i:05d}"
        sf.write(str(folder / "wavs" / f"{name}.wav"), np.clip(x, -1, 1), sr, subtype="PCM_16")
        rows.append(f"{name}\twavs/{name}.wav\t{text.upper()}\t{v}")
    manifest = folder / "manifest.tsv"
    with atomic_write(manifest, overwrite=True) as f:
        f.write("utt_id\tpath\ttranscript\tspeaker\n" + "\n".join(rows) + "\n")
    return manifest
