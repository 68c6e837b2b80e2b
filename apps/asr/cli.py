"""``ssm-asr``: Samba-ASR speech recognition (the contract's verbs, see ``core/engine/README.md``).

    ssm-asr tokenizer  --data CORPUS [...] --vocab-size N -o tokenizer.model [--model-type unigram|bpe|char]
    ssm-asr train      --data CORPUS [...] -o RUN_DIR [--valid CORPUS] [--preset small] [--causal]
                       [--tokenizer tokenizer.model] [--max-epochs N] [--max-time DD:HH:MM:SS] [--seed S]
    ssm-asr evaluate   --checkpoint CKPT|RUN_DIR --data CORPUS [...] [--decode greedy|beam] [-o metrics.json]
    ssm-asr transcribe --checkpoint CKPT|RUN_DIR -i FILES|DIR [...] -o OUT.jsonl|.txt|.srt [--decode auto]
    ssm-asr stream     --checkpoint CKPT|RUN_DIR -i FILE [--chunk-ms 640]
    ssm-asr demo       -o DIR [--seed S]

CORPUS: a LibriSpeech tree, a Kaldi/ESPnet/WeNet folder (wav.scp + text) or a TSV/JSONL manifest.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from core.engine import (AppCLI, ItemFailures, UserError, check_new_output, is_rank_zero, require_extra,
                         require_paths, resolve_checkpoint, resolve_config, trainer_kwargs_from_args, write_json)

DECODE_CTC_WEIGHT = 0.5  # apps.asr.decode.DECODE_CTC_WEIGHT (tested equal); not imported: torch would load

EXTRA = ["soundfile", "soxr", "sentencepiece", "jiwer"]
CTC_WEIGHT_HELP = f"CTC prefix weight in beam search (default {DECODE_CTC_WEIGHT}, ESPnet2's)"
DECODE_HELP = "greedy (best CTC path) or beam (joint decoder/CTC-prefix beam search, ESPnet's)"


def _model_keys() -> List[str]:
    from .model import PRESETS

    return sorted({"preset"} | {k for p in PRESETS.values() for k in p})


def _load(path: str, device: str = "cpu"):
    from .train import load_asr_module

    m = load_asr_module(resolve_checkpoint(path))
    try:
        return m.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError("--device", f"cannot use {device!r} ({str(e).splitlines()[0]})") from None


def cmd_tokenizer(args) -> int:
    require_paths(args.data, "--data")
    check_new_output(args.out, args.overwrite)
    require_extra("asr", EXTRA)
    from .tokenizer import train_tokenizer
    from .train import prepare_utterances

    utts, fails = prepare_utterances(args.data, None)
    failures = ItemFailures("utterance")
    for line in fails:
        failures.fail(*line.split(": ", 1)) if ": " in line else failures.fail(line, "unusable")
    if not utts:
        raise UserError(args.data[0], "no transcript found")
    tok = train_tokenizer([u.text for u in utts], args.vocab_size, args.model_type, seed=0)
    tok.save(args.out)
    print(f"{tok.n_pieces} pieces from {len(utts)} transcripts -> {args.out}")
    return failures.finish(len(utts) + len(fails), args.out)


def cmd_train(args) -> int:
    require_paths(args.data, "--data")
    if args.valid:
        require_paths(args.valid, "--valid")
    if args.tokenizer:
        require_paths(args.tokenizer, "--tokenizer", kind="file")
    require_extra("asr", EXTRA)
    from core.engine import prepare_run_dir

    from .train import DEFAULTS, train

    flags = {"vocab_size": args.vocab_size, "batch_seconds": args.batch_seconds, "lr": args.lr,
             "num_workers": args.num_workers or None, "model.preset": args.preset,
             "model.causal": True if args.causal else None}
    cfg = resolve_config(DEFAULTS, args.config, {k: v for k, v in flags.items() if v is not None}, args.set_pairs,
                         extra_keys={"model": _model_keys})
    out = prepare_run_dir(args.out, args.overwrite, clear=("metrics.json", "config.json", "skipped.txt",
                                                          "tokenizer.model"))
    m = train(args.data, out, cfg, seed=args.seed, trainer_kwargs=trainer_kwargs_from_args(args),
              valid=args.valid, tokenizer=args.tokenizer)
    if not is_rank_zero():
        return 0
    v = m.get("validation")
    if v:
        print(f"validation ({v['n_utterances']} utterances, greedy CTC): WER {100 * v['wer']:.2f} %, "
              f"CER {100 * v['cer']:.2f} %")
    print(f"checkpoint: {m['checkpoint']}\nmetrics:    {out / 'metrics.json'}\nlogs:       {out / 'logs'}")
    return 2 if m["n_skipped"] else 0


def cmd_evaluate(args) -> int:
    ckpt = resolve_checkpoint(args.checkpoint)
    require_paths(args.data, "--data")
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = Path(args.out) if args.out else run / f"eval_{Path(args.data[0]).resolve().stem or 'data'}.json"
    errors = out.with_suffix(".errors.txt")
    check_new_output(out, args.overwrite)
    check_new_output(errors, args.overwrite)
    require_extra("asr", EXTRA)
    from .infer import evaluate_utterances, write_errors
    from .train import prepare_utterances

    module = _load(args.checkpoint, args.device)
    utts, fails = prepare_utterances(args.data, None)
    m, rows, f2 = evaluate_utterances(module, utts, decode=args.decode, beam=args.beam, ctc_weight=args.ctc_weight)
    failures = ItemFailures("utterance")
    for line in fails + f2:
        failures.fail(*line.split(": ", 1)) if ": " in line else failures.fail(line, "unusable")
    if not rows:
        raise UserError(args.data[0], "no usable utterance")
    m.update({"checkpoint": str(ckpt), "data": list(args.data), "skipped": fails + f2})
    write_errors(rows, errors, overwrite=args.overwrite)
    write_json(out, m, overwrite=args.overwrite)
    print(f"{m['n_utterances']} utterances ({args.decode}): WER {100 * m['wer']:.2f} %, CER {100 * m['cer']:.2f} %")
    print(f"metrics: {out}\nerrors:  {errors}")
    return failures.finish(len(rows) + len(failures), out)


def cmd_transcribe(args) -> int:
    resolve_checkpoint(args.checkpoint)
    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".txt", ".srt"):
        raise UserError(out, "output must end in .jsonl, .txt or .srt")
    check_new_output(out, args.overwrite)
    require_extra("asr", EXTRA)
    from .data import find_audio
    from .infer import transcribe_files, write_transcripts

    files = find_audio(args.input)
    module = _load(args.checkpoint, args.device)
    failures = ItemFailures("file")
    results = transcribe_files(module, files, args.decode, args.beam, on_fail=failures.fail,
                               ctc_weight=args.ctc_weight)
    if results:
        write_transcripts(results, out, overwrite=args.overwrite)
        for r in results:
            print(f"{r['file']}: {r['text']}  (RTF {r['rtf']:.3f})")
    return failures.finish(len(files), out)


def cmd_stream(args) -> int:
    resolve_checkpoint(args.checkpoint)
    require_paths(args.input, "-i/--input", kind="file")
    require_extra("asr", EXTRA)
    from .infer import stream_file

    module = _load(args.checkpoint, args.device)
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
    require_extra("asr", EXTRA + ["espeakng_loader"])
    from .demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite)


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-asr", "Samba-ASR speech recognition (Mamba encoder + Mamba decoder, CTC, streaming, "
                 "long-form).", examples=__doc__.split("\n\n")[1], extra=("asr", EXTRA))
    k = cli.command("tokenizer", "train a SentencePiece model on the transcripts of a corpus", cmd_tokenizer)
    k.add_required("--data", nargs="+", default=None, help="corpus folder(s) or manifest(s) (required)")
    k.add_argument("--vocab-size", type=int, default=256, help="number of pieces (default 256)")
    k.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char"],
                   help="SentencePiece model type (default unigram)")
    from core.engine.cli import add_out_flag, add_overwrite_flag

    add_out_flag(k, "tokenizer.model to write")
    add_overwrite_flag(k)

    t = cli.train("train a model (joint CTC/attention) on a corpus", cmd_train)
    t.add_required("--data", nargs="+", default=None, help="corpus folder(s) or manifest(s) (required)")
    t.add_argument("--valid", nargs="+", default=None, help="validation corpus (default: 5%% held out)")
    t.add_argument("--preset", default=None, help="tiny, small (default), base, large, conformer-tiny, "
                   "conformer-small")
    t.add_argument("--causal", action="store_true",
                   help="causal encoder: streaming and constant-memory long-form transcription")
    t.add_argument("--tokenizer", default=None, help="a SentencePiece model (default: trained on --data)")
    t.add_argument("--vocab-size", type=int, default=None, help="SentencePiece pieces (default 256)")
    t.add_argument("--batch-seconds", type=float, default=None, help="audio seconds per batch (default 200)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")

    e = cli.evaluate("WER/CER of a checkpoint on a labelled corpus (+ per-utterance errors)", cmd_evaluate,
                     out_help="metrics JSON (default RUN_DIR/eval_<data>.json); errors go beside it (.errors.txt)")
    e.add_required("--data", nargs="+", default=None, help="labelled corpus folder(s) or manifest(s) (required)")
    e.add_argument("--decode", default="beam", choices=["greedy", "beam"], help=DECODE_HELP + " (default beam)")
    e.add_argument("--beam", type=int, default=10, help="beam size (default 10)")
    e.add_argument("--ctc-weight", type=float, default=DECODE_CTC_WEIGHT, help=CTC_WEIGHT_HELP)

    r = cli.predict("transcribe audio files (text, word times, real-time factor)", cmd_transcribe,
                    name="transcribe", out_help="output file: OUT.jsonl, OUT.txt or OUT.srt")
    r.add_required("-i", "--input", nargs="+", default=None, help="audio files or folders (required)")
    r.add_argument("--decode", default="auto", choices=["auto", "greedy", "beam"],
                   help=DECODE_HELP + "; auto (default): beam up to 60 s, greedy beyond (streamed from disk "
                   "for causal models)")
    r.add_argument("--beam", type=int, default=10, help="beam size (default 10)")
    r.add_argument("--ctc-weight", type=float, default=DECODE_CTC_WEIGHT, help=CTC_WEIGHT_HELP)

    s = cli.command("stream", "transcribe a file chunk by chunk, printing partial text (causal models)",
                    cmd_stream)
    s.add_required("--checkpoint", default=None, help="checkpoint file or run folder (required)")
    s.add_required("-i", "--input", default=None, help="audio file (required)")
    s.add_argument("--chunk-ms", type=float, default=640.0, help="chunk length in ms (default 640)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    cli.demo("eSpeak NG corpus -> tiny model -> evaluate -> transcribe -> stream (no downloads)", cmd_demo)
    return cli


def main(argv: Optional[List[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
