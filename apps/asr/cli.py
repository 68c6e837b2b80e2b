"""``ssm-asr``: Samba-ASR speech recognition.

    ssm-asr tokenizer  --data CORPUS [...] --vocab-size N -o tokenizer.model [--model-type unigram|bpe]
    ssm-asr train      --data CORPUS [...] --out RUN_DIR [--valid CORPUS] [--preset small] [--causal]
                       [--tokenizer tokenizer.model] [--max-epochs N] [--max-time DD:HH:MM:SS] [--seed S]
    ssm-asr evaluate   --checkpoint CKPT|RUN_DIR --data CORPUS [...] [--decode greedy|beam] [--out metrics.json]
    ssm-asr transcribe --checkpoint CKPT|RUN_DIR -i FILES|DIR [...] -o OUT.jsonl|.txt|.srt [--decode auto]
    ssm-asr stream     --checkpoint CKPT|RUN_DIR -i FILE [--chunk-ms 640]
    ssm-asr demo       --out DIR [--seed S]

CORPUS: a LibriSpeech tree, a Kaldi/ESPnet/WeNet folder (wav.scp + text) or a TSV/JSONL manifest.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from core.engine import (UserError, add_trainer_args, cli_main, ensure_new, load_config, merge_config,
                         parse_set_pairs, prepare_run_dir, trainer_kwargs_from_args, write_json)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssm-asr", description="Samba-ASR speech recognition (Mamba encoder + "
                                "Mamba decoder, CTC, streaming, long-form).")
    sub = p.add_subparsers(dest="cmd", required=True)

    k = sub.add_parser("tokenizer", help="train a SentencePiece model on the transcripts of a corpus")
    k.add_argument("--data", nargs="+", required=True, help="corpus folder(s) or manifest(s)")
    k.add_argument("--vocab-size", type=int, default=256)
    k.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char"])
    k.add_argument("-o", "--out", required=True, help="tokenizer.model to write")
    k.add_argument("--overwrite", action="store_true")

    t = sub.add_parser("train", help="train a model (joint CTC/attention) on a corpus")
    t.add_argument("--data", nargs="+", required=True, help="corpus folder(s) or manifest(s)")
    t.add_argument("--valid", nargs="+", default=None, help="validation corpus (default: 5%% held out)")
    t.add_argument("--preset", default=None, help="tiny, small (default), base, large, conformer-tiny, "
                   "conformer-small")
    t.add_argument("--causal", action="store_true", default=None,
                   help="causal encoder: streaming and constant-memory long-form transcription")
    t.add_argument("--tokenizer", default=None, help="a SentencePiece model (default: trained on --data)")
    t.add_argument("--vocab-size", type=int, default=None)
    t.add_argument("--batch-seconds", type=float, default=None, help="audio seconds per batch")
    t.add_argument("--lr", type=float, default=None)
    add_trainer_args(t)

    e = sub.add_parser("evaluate", help="WER/CER of a checkpoint on a labelled corpus")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    e.add_argument("--data", nargs="+", required=True)
    e.add_argument("--decode", default="beam", choices=["greedy", "beam"])
    e.add_argument("--beam", type=int, default=10)
    e.add_argument("--out", default=None, help="metrics JSON (default RUN_DIR/eval_<data>.json); "
                   "per-utterance errors go beside it (.errors.txt)")
    e.add_argument("--overwrite", action="store_true")

    r = sub.add_parser("transcribe", help="transcribe audio files (text, word times, real-time factor)")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("-i", "--input", nargs="+", required=True, help="audio files or folders")
    r.add_argument("-o", "--out", required=True, help="OUT.jsonl, OUT.txt or OUT.srt")
    r.add_argument("--decode", default="auto", choices=["auto", "greedy", "beam"],
                   help="auto: beam search up to 60 s, greedy CTC beyond (and streamed for causal models)")
    r.add_argument("--beam", type=int, default=10)
    r.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("stream", help="transcribe a file chunk by chunk, printing partial text (causal models)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("-i", "--input", required=True)
    s.add_argument("--chunk-ms", type=float, default=640.0)

    d = sub.add_parser("demo", help="eSpeak NG corpus -> tiny model -> evaluate -> transcribe (no downloads)")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    return p


def _load(path: str):
    from .train import load_asr_module

    return load_asr_module(path)


def cmd_tokenizer(args) -> int:
    from .data import normalize_text
    from .tokenizer import train_tokenizer
    from .train import prepare_utterances

    out = Path(args.out)
    ensure_new(out, args.overwrite)
    utts, fails = prepare_utterances(args.data, None)
    for line in fails:
        print(f"skipped: {line}", file=sys.stderr)
    if not utts:
        raise UserError(args.data[0], "no transcript found")
    tok = train_tokenizer([normalize_text(u.text) for u in utts], args.vocab_size, args.model_type)
    tok.save(out)
    print(f"{tok.n_pieces} pieces from {len(utts)} transcripts -> {out}")
    return 2 if fails else 0


def cmd_train(args) -> int:
    from .train import DEFAULTS, train

    flags = {"vocab_size": args.vocab_size, "batch_seconds": args.batch_seconds, "lr": args.lr,
             "num_workers": args.num_workers}
    cfg = merge_config(DEFAULTS, load_config(args.config), flags)
    model = {}
    if args.preset:
        model["preset"] = args.preset
    if args.causal:
        model["causal"] = True
    if model:
        cfg = merge_config(cfg, {"model": {**cfg["model"], **model}})
    cfg = merge_config(cfg, parse_set_pairs(args.set_pairs), strict=True)
    out = prepare_run_dir(args.out, args.overwrite, clear=("metrics.json", "config.json", "skipped.txt",
                                                          "tokenizer.model"))
    tk = trainer_kwargs_from_args(args)
    m = train(args.data, out, cfg, seed=args.seed if args.seed is not None else 0, trainer_kwargs=tk,
              valid=args.valid, tokenizer=args.tokenizer)
    v = m.get("validation")
    if v:
        print(f"validation ({v['n_utterances']} utterances, greedy CTC): WER {100 * v['wer']:.2f} %, "
              f"CER {100 * v['cer']:.2f} %")
    print(f"checkpoint: {m['checkpoint']}\nmetrics:    {out / 'metrics.json'}\nlogs:       {out / 'logs'}")
    return 2 if m["n_skipped"] else 0


def cmd_evaluate(args) -> int:
    from .infer import evaluate_utterances, write_errors
    from .train import prepare_utterances

    module = _load(args.checkpoint)
    ck = Path(args.checkpoint)
    run = ck if ck.is_dir() else (ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent)
    out = Path(args.out) if args.out else run / f"eval_{Path(args.data[0]).resolve().stem or 'data'}.json"
    errors = out.with_suffix(".errors.txt")
    ensure_new([out, errors], args.overwrite)
    utts, fails = prepare_utterances(args.data, None)
    m, rows, f2 = evaluate_utterances(module, utts, decode=args.decode, beam=args.beam)
    fails += f2
    for line in fails:
        print(f"skipped: {line}", file=sys.stderr)
    if not rows:
        raise UserError(args.data[0], "no usable utterance")
    m.update({"checkpoint": str(args.checkpoint), "data": list(args.data), "skipped": fails})
    write_errors(rows, errors, overwrite=args.overwrite)
    write_json(out, m, overwrite=args.overwrite)
    print(f"{m['n_utterances']} utterances ({args.decode}): WER {100 * m['wer']:.2f} %, CER {100 * m['cer']:.2f} %")
    print(f"metrics: {out}\nerrors:  {errors}")
    return 2 if fails else 0


def cmd_transcribe(args) -> int:
    from .data import find_audio
    from .infer import transcribe_files, write_transcripts

    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".txt", ".srt"):
        raise UserError(out, "output must end in .jsonl, .txt or .srt")
    ensure_new(out, args.overwrite)
    files = find_audio(args.input)
    module = _load(args.checkpoint)
    results, fails = transcribe_files(module, files, args.decode, args.beam, log=lambda s: print(s, file=sys.stderr))
    if results:
        write_transcripts(results, out, overwrite=args.overwrite)
        for r in results:
            print(f"{r['file']}: {r['text']}  (RTF {r['rtf']:.3f})")
        print(f"{len(results)} transcribed, {len(fails)} failed -> {out}")
    else:
        print(f"nothing transcribed ({len(fails)} failed); {out} not written", file=sys.stderr)
    return 2 if fails else 0


def cmd_stream(args) -> int:
    from .infer import stream_file

    module = _load(args.checkpoint)
    if not module.net.causal:
        raise UserError(args.checkpoint, "this model's encoder is bidirectional and cannot stream; "
                                         "train one with --causal")
    last = [""]

    def show(t: float, text: str) -> None:
        if text != last[0]:
            print(f"[{t:7.2f} s] {text}", flush=True)
            last[0] = text

    r = stream_file(module, args.input, chunk_ms=args.chunk_ms, on_partial=show)
    print(f"final: {r['text']}  (RTF {r['rtf']:.3f})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite)


COMMANDS = {"tokenizer": cmd_tokenizer, "train": cmd_train, "evaluate": cmd_evaluate,
            "transcribe": cmd_transcribe, "stream": cmd_stream, "demo": cmd_demo}


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    return COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
