"""Evaluation and transcription: one utterance, a list of files (JSONL/TXT/SRT out), streaming
and long-form recognition with constant memory, and corpus WER/CER with jiwer."""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.engine import UserError, atomic_write, progress as progress_bar

from .data import SAMPLE_RATE, Utterance, iter_audio_blocks, normalize_text, read_audio
from .decode import DECODE_CTC_WEIGHT, CTCGreedyStream, ctc_align, ctc_greedy, joint_beam_search, word_times
from .features import StreamingLogMel
from .model import EncoderStream

BEAM_MAX_SECONDS = 60.0        # longer audio is decoded with greedy CTC (the decoder saw short utterances)
SILENCE_RMS = 1e-4


def _result(module, tokens: List[int], spans, duration: float, seconds: float, decode: str) -> dict:
    tok = module.tokenizer
    words = word_times([tok.piece(t) for t in tokens], spans, module.frame_seconds)
    return {"text": tok.decode(tokens), "words": words, "duration": round(duration, 3),
            "rtf": round(seconds / max(duration, 1e-9), 4), "decode": decode}


@torch.no_grad()
def recognize(module, wav: np.ndarray, decode: str = "auto", beam: int = 10,
              ctc_weight: float = DECODE_CTC_WEIGHT) -> dict:
    """One waveform (n,) at 16 kHz -> {text, words [{word, start, end}], duration, rtf, decode}.

    ``decode``: "greedy" (CTC), "beam" (joint attention/CTC beam search) or "auto" (beam up to
    ``BEAM_MAX_SECONDS``, greedy beyond)."""
    t0 = time.perf_counter()
    duration = len(wav) / SAMPLE_RATE
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(module.device)
    enc, enc_lens = module(x, torch.tensor([x.shape[1]]))
    logp = torch.log_softmax(module.net.ctc_logits(enc)[0].float(), -1).cpu()
    use = decode if decode != "auto" else ("beam" if duration <= BEAM_MAX_SECONDS else "greedy")
    if use == "beam" and logp.shape[0] > 0:
        tokens, _ = joint_beam_search(module.net.decoder, enc, logp, module.hparams.vocab_size - 1, beam=beam,
                                      ctc_weight=ctc_weight)
        spans = ctc_align(logp, tokens)
    else:
        tokens, spans = ctc_greedy(logp)
        use = "greedy"
    return _result(module, tokens, spans, duration, time.perf_counter() - t0, use)


class Streamer:
    """Live recognition with a causal model: ``accept(samples at 16 kHz)`` -> partial text so far;
    ``finish()`` -> the final result. Features, subsampling and the Mamba states are carried from
    chunk to chunk (no recomputation), so memory is constant in the stream's length."""

    def __init__(self, module):
        self.m = module
        self.feats = StreamingLogMel(module.logmel)
        self.enc = EncoderStream(module.net.encoder)
        self.ctc = CTCGreedyStream()
        self.samples = 0
        self.t0 = time.perf_counter()

    @torch.no_grad()
    def _frames(self, frames: torch.Tensor) -> None:
        if frames.shape[0] == 0:
            return
        h = self.enc(self.m.normalize(frames.to(self.m.device))[None])
        if h.shape[1]:
            self.ctc(torch.log_softmax(self.m.net.ctc_logits(h)[0].float(), -1).cpu())

    def accept(self, samples: np.ndarray) -> str:
        self.samples += len(samples)
        self._frames(self.feats.accept(samples))
        return self.m.tokenizer.decode(self.ctc.tokens)

    def finish(self) -> dict:
        self._frames(self.feats.flush())
        return _result(self.m, self.ctc.tokens, self.ctc.spans, self.samples / SAMPLE_RATE,
                       time.perf_counter() - self.t0, "stream")


def stream_file(module, path: str | Path, chunk_ms: float = 640.0,
                on_partial: Optional[Callable[[float, str], None]] = None) -> dict:
    """Feed a file through :class:`Streamer` in ``chunk_ms`` chunks, read from disk block by block."""
    s = Streamer(module)
    chunk = max(1, int(SAMPLE_RATE * chunk_ms / 1000))
    pending = np.zeros(0, np.float32)
    for block in iter_audio_blocks(path):
        pending = np.concatenate([pending, block])
        while len(pending) >= chunk:
            text = s.accept(pending[:chunk])
            pending = pending[chunk:]
            if on_partial is not None:
                on_partial(s.samples / SAMPLE_RATE, text)
    if len(pending):
        s.accept(pending)
    return s.finish()


def transcribe_file(module, path: str | Path, decode: str = "auto", beam: int = 10,
                    max_hours: float = 2.0, ctc_weight: float = DECODE_CTC_WEIGHT) -> dict:
    """A file of any length: causal models stream it from disk (constant memory); offline models
    read it whole (up to ``max_hours``) and run the encoder once over all of it."""
    if module.net.causal and decode in ("auto", "greedy"):
        from .data import audio_info

        sr, frames, _ = audio_info(path)
        if frames / sr > BEAM_MAX_SECONDS or decode == "greedy":
            r = stream_file(module, path)
            r["decode"] = "greedy"
            return r
    wav = read_audio(path, max_seconds=max_hours * 3600)
    return recognize(module, wav, decode=decode, beam=beam, ctc_weight=ctc_weight)


def _silent(path: str | Path) -> bool:
    try:
        x = read_audio(path)
    except UserError:
        return False
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < SILENCE_RMS


def _srt_time(s: float) -> str:
    ms = int(round(s * 1000))
    h, ms = divmod(ms, 3600_000)
    m, ms = divmod(ms, 60_000)
    sec, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{sec:02d},{ms:03d}"


def srt_cues(words: Sequence[dict], max_chars: int = 42, max_seconds: float = 6.0) -> List[Tuple[float, float, str]]:
    """Group timed words into subtitle cues of at most ``max_chars`` characters / ``max_seconds``."""
    cues, cur = [], []
    for w in words:
        if cur and (len(" ".join(x["word"] for x in cur + [w])) > max_chars or w["end"] - cur[0]["start"] > max_seconds):
            cues.append((cur[0]["start"], cur[-1]["end"], " ".join(x["word"] for x in cur)))
            cur = []
        cur.append(w)
    if cur:
        cues.append((cur[0]["start"], cur[-1]["end"], " ".join(x["word"] for x in cur)))
    return cues


def write_transcripts(results: List[dict], out: Path, overwrite: bool = False) -> None:
    """``.jsonl`` (one object per file), ``.txt`` (``file<TAB>text``) or ``.srt`` (all files' cues in
    order, each file's cues prefixed with a cue naming it when there are several files)."""
    suf = out.suffix.lower()
    with atomic_write(out, overwrite=overwrite) as f:
        if suf == ".jsonl":
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        elif suf == ".txt":
            for r in results:
                f.write(f"{r['file']}\t{r['text']}\n")
        else:  # .srt
            n = 1
            for r in results:
                for a, b, text in srt_cues(r["words"]):
                    label = f"[{Path(r['file']).name}] " if len(results) > 1 else ""
                    f.write(f"{n}\n{_srt_time(a)} --> {_srt_time(b)}\n{label}{text}\n\n")
                    n += 1


def transcribe_files(module, files: Sequence[Path], decode: str = "auto", beam: int = 10,
                     show_progress: bool = True, ctc_weight: float = DECODE_CTC_WEIGHT, on_fail: Optional[Callable[[object, str], None]] = None,
                     log=lambda s: print(s, file=sys.stderr)) -> List[dict]:
    """Transcribe every file; a bad file calls ``on_fail(file, problem)`` and the others go on."""
    results = []
    it = progress_bar(files, "transcribing", total=len(files)) if show_progress else files
    for p in it:
        try:
            r = transcribe_file(module, p, decode=decode, beam=beam, ctc_weight=ctc_weight)
        except UserError as e:
            msg = str(e)
            problem = msg[len(f"{p}: "):] if msg.startswith(f"{p}: ") else msg
            if on_fail is not None:
                on_fail(p, problem)
            else:
                log(f"error: {p}: {problem}")
            continue
        if not r["text"] and _silent(p):
            warnings.warn(f"{p}: silent audio, empty transcript", stacklevel=1)
            log(f"warning: {p}: silent audio, empty transcript")
        results.append({"file": str(p), **r})
    return results


# ------------------------------------------------------------------------------------- evaluation
def evaluate_utterances(module, utts: Sequence[Utterance], decode: str = "greedy", beam: int = 10,
                        progress: bool = True, log=print, ctc_weight: float = DECODE_CTC_WEIGHT) -> Tuple[Dict, List[dict], List[str]]:
    """Corpus WER/CER (jiwer, on normalised text) and per-utterance rows; bad items are skipped."""
    import jiwer

    refs, hyps, rows, failures = [], [], [], []
    it = progress_bar(utts, "evaluating", total=len(utts)) if progress else utts
    for u in it:
        try:
            wav = read_audio(u.path, u.start, u.end)
        except UserError as e:
            failures.append(str(e))
            continue
        r = recognize(module, wav, decode=decode, beam=beam, ctc_weight=ctc_weight)
        ref, hyp = normalize_text(u.text or ""), normalize_text(r["text"])
        refs.append(ref)
        hyps.append(hyp)
        m = jiwer.process_words(ref or "<empty>", hyp or "")
        rows.append({"utt_id": u.utt_id, "file": u.path, "ref": ref, "hyp": hyp,
                     "errors": m.substitutions + m.deletions + m.insertions, "ref_words": len(ref.split()),
                     "sub": m.substitutions, "del": m.deletions, "ins": m.insertions})
    if not refs:
        return {"wer": None, "cer": None, "n_utterances": 0}, rows, failures
    safe_refs = [r or "<empty>" for r in refs]
    metrics = {"wer": round(float(jiwer.wer(safe_refs, hyps)), 6), "cer": round(float(jiwer.cer(safe_refs, hyps)), 6),
               "n_utterances": len(refs), "n_failed": len(failures), "decode": decode}
    return metrics, rows, failures


def write_errors(rows: List[dict], path: Path, overwrite: bool = False) -> None:
    """Per-utterance errors, worst first: ``utt_id errors ref_words sub del ins`` then REF/HYP lines."""
    with atomic_write(path, overwrite=overwrite) as f:
        for r in sorted(rows, key=lambda r: -r["errors"]):
            f.write(f"{r['utt_id']}\terrors={r['errors']}/{r['ref_words']}\tsub={r['sub']} del={r['del']} "
                    f"ins={r['ins']}\nREF: {r['ref']}\nHYP: {r['hyp']}\n\n")
