"""Self-contained demo: eSpeak NG speaks a small corpus (digit strings, two training voices and an
unseen third voice for the new files) -> train a tiny causal Samba-ASR model -> evaluate ->
transcribe to JSONL and SRT -> stream one file. No downloads; about 45 s on two CPU cores."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from core.engine import prepare_demo_dir

DIGITS = "zero one two three four five six seven eight nine".split()


def run_demo(out: Path, seed: int = 0, overwrite: bool = False, n_train: int = 120, n_test: int = 12,
             max_time: str = "00:00:00:22") -> int:
    """Corpus -> train (tiny causal preset, <= ``max_time``) -> evaluate -> transcribe -> stream."""
    from .infer import evaluate_utterances, stream_file, transcribe_files, write_errors, write_transcripts
    from .synth import make_corpus, random_sentences
    from .train import DEFAULTS, load_asr_module, prepare_utterances, train

    t0 = time.time()
    out = prepare_demo_dir(out, overwrite)  # a folder an earlier demo made is reused as written
    run = out / "run"
    run.mkdir()
    sents = random_sentences(n_train + n_test, seed, 2, 5, DIGITS)
    print(f"[{time.time() - t0:4.0f} s] speaking {n_train} training sentences (voices m1, f3) and {n_test} new ones (voice m3) "
          f"with eSpeak NG ...", flush=True)
    train_manifest = make_corpus(out / "data" / "train", sents[:n_train], ["m1", "f3"], seed)
    test_manifest = make_corpus(out / "data" / "new", sents[n_train:], ["m3"], seed + 1, prefix="new")
    cfg = {**DEFAULTS, "model": {"preset": "tiny", "causal": True, "d_model": 64, "enc_layers": 4,
                                 "subsample_channels": 16},
           "tokenizer_type": "unigram", "vocab_size": 24, "batch_seconds": 16.0, "lr": 4e-3, "warmup_steps": 20,
           "val_fraction": 0.0, "speed_perturb": [1.0],
           "specaug": {"num_freq_mask": 2, "freq_mask_width": 10, "num_time_mask": 2, "time_mask_ratio": 0.05}}
    m = train([str(train_manifest)], run, cfg, seed=seed, trainer_kwargs={"max_time": max_time, "max_epochs": 200},
              progress=sys.stderr.isatty())
    print(f"[{time.time() - t0:4.0f} s] trained {m['steps']} steps ({m['epochs'] + 1} epochs) in {m['train_seconds']:.0f} s", flush=True)
    module = load_asr_module(run)
    utts, _ = prepare_utterances([str(test_manifest)], None)
    met, rows, _ = evaluate_utterances(module, utts, decode="greedy", progress=False)
    write_errors(rows, out / "new.errors.txt", overwrite=True)
    print(f"[{time.time() - t0:4.0f} s] new voice, new sentences ({met['n_utterances']}): WER {100 * met['wer']:.1f} %, "
          f"CER {100 * met['cer']:.1f} % (greedy CTC)")
    files = sorted((out / "data" / "new" / "wavs").glob("*.wav"))[:3]
    res = transcribe_files(module, files, decode="beam", beam=4, show_progress=False)
    write_transcripts(res, out / "transcripts.jsonl", overwrite=True)
    write_transcripts(res, out / "transcripts.srt", overwrite=True)
    for r, u in zip(res, utts):
        print(f"  {Path(r['file']).name}: {r['text']!r}")
    st = stream_file(module, files[0], chunk_ms=640)
    print(f"streamed {files[0].name} in 640 ms chunks: {st['text']!r} (RTF {st['rtf']:.3f})")
    print(f"\ndemo done in {time.time() - t0:.0f} s\n"
          f"  corpus:      {train_manifest} (training), {test_manifest} (new voice)\n"
          f"  checkpoint:  {m['checkpoint']}\n"
          f"  errors:      {out / 'new.errors.txt'}\n"
          f"  transcripts: {out / 'transcripts.jsonl'}, {out / 'transcripts.srt'}")
    return 0
