"""``ssm-asr`` end to end on real utterances: train lowers the loss, evaluate/transcribe/stream
outputs, bad input (one line, exit 2, nothing half-written, nothing overwritten)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .conftest import run


def test_train_lowers_loss_and_writes_run(trained):
    rows = list(csv.DictReader(open(trained / "logs" / "metrics.csv")))
    losses = [float(r["train_loss_epoch"]) for r in rows if r.get("train_loss_epoch")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    m = json.loads((trained / "metrics.json").read_text())
    assert m["n_train"] == 8 and (trained / "tokenizer.model").is_file()
    assert (trained / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_carries_everything(trained):
    from apps.asr.train import load_asr_module

    m = load_asr_module(trained)
    assert m.tokenizer is not None and m.net.causal
    assert not np.allclose(m.cmvn_mean.numpy(), 0) and (m.cmvn_std > 0).all()
    assert m.tokenizer.decode(m.tokenizer.encode("HE COULD WAIT")) == "HE COULD WAIT"


def test_transcribe_formats_and_bad_files(trained, transcripts, tmp_path, capsys):
    good = [r["path"] for r in transcripts if r["utt_id"] in ("LJ001-0002", "1089-134691-0000")]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF1234WAVEjunk")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000)
    out = tmp_path / "out.jsonl"
    rc, so, se = run(["transcribe", "--checkpoint", str(trained), "-i", *good, str(bad), str(silent),
                      "-o", str(out), "--decode", "greedy"], capsys)
    assert rc == 2
    assert "bad.wav" in se and "Traceback" not in se
    assert "silent" in se
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [Path(r["file"]).name for r in rows] == [Path(g).name for g in good] + ["silent.wav"]
    for r in rows:
        assert set(r) >= {"text", "words", "duration", "rtf"} and r["rtf"] > 0
        assert all(w["start"] <= w["end"] <= r["duration"] + 0.1 for w in r["words"])
    assert rows[-1]["text"] == ""
    # no overwrite without --overwrite; other formats
    rc, _, se = run(["transcribe", "--checkpoint", str(trained), "-i", good[0], "-o", str(out)], capsys)
    assert rc == 2 and "already exists" in se
    for fmt in ("txt", "srt"):
        o = tmp_path / f"o.{fmt}"
        rc, _, _ = run(["transcribe", "--checkpoint", str(trained), "-i", good[0], "-o", str(o), "--decode", "beam",
                        "--beam", "2"], capsys)
        assert rc == 0 and o.is_file()
    assert (tmp_path / "o.txt").read_text().startswith(good[0] + "\t")
    # only bad input: exit 2 and no output file
    o = tmp_path / "none.jsonl"
    rc, _, se = run(["transcribe", "--checkpoint", str(trained), "-i", str(bad), "-o", str(o)], capsys)
    assert rc == 2 and not o.exists()


def test_evaluate_writes_metrics_and_errors(trained, short_manifest, tmp_path, capsys):
    out = tmp_path / "ev.json"
    rc, so, se = run(["evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--data",
                      str(short_manifest), "--out", str(out), "--decode", "greedy"], capsys)
    assert rc == 0, se
    m = json.loads(out.read_text())
    assert m["n_utterances"] == 8 and 0 <= m["cer"] and m["wer"] >= 0
    errors = out.with_suffix(".errors.txt").read_text()
    assert errors.count("REF: ") == 8 and "HYP: " in errors


def test_stream_prints_partials(trained, transcripts, capsys):
    p = next(r["path"] for r in transcripts if r["utt_id"] == "LJ001-0002")
    rc, so, se = run(["stream", "--checkpoint", str(trained), "-i", p, "--chunk-ms", "320"], capsys)
    assert rc == 0 and "final:" in so


def test_streamed_transcription_equals_offline_greedy(trained, transcripts):
    from apps.asr.data import read_audio
    from apps.asr.infer import recognize, stream_file
    from apps.asr.train import load_asr_module

    m = load_asr_module(trained)
    p = next(r["path"] for r in transcripts if r["utt_id"] == "1089-134691-0001")
    a = stream_file(m, p, chunk_ms=640)
    b = recognize(m, read_audio(p), decode="greedy")
    assert a["text"] == b["text"] and a["words"] == b["words"]


def test_bad_inputs(tmp_path, trained, capsys):
    rc, _, se = run(["evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), "--data", str(tmp_path)], capsys)
    assert rc == 2 and "nope.ckpt" in se
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"garbage")
    rc, _, se = run(["transcribe", "--checkpoint", str(junk), "-i", str(junk), "-o", str(tmp_path / "o.txt")], capsys)
    assert rc == 2 and "junk.ckpt" in se and "\n" == se[-1] and se.count("\n") == 1
    m = tmp_path / "m.tsv"
    m.write_bytes(b"path\ttranscript\nmissing.wav\t\xff\n")
    rc, _, se = run(["train", "--data", str(m), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "m.tsv:2" in se and "UTF-8" in se
    rc, _, se = run(["train", "--data", str(m), "--out", str(trained)], capsys)
    assert rc == 2 and "not empty" in se
    rc, _, se = run(["train", "--data", str(m), "-o", str(tmp_path / "r"), "--set", "model.d_modle=3"], capsys)
    assert rc == 2 and "d_modle" in se and "d_model" in se
    rc, _, se = run(["stream", "--checkpoint", str(trained), "-i", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "x.wav" in se


def test_tokenizer_command(short_manifest, tmp_path, capsys):
    out = tmp_path / "t.model"
    rc, so, _ = run(["tokenizer", "--data", str(short_manifest), "--vocab-size", "60", "-o", str(out)], capsys)
    assert rc == 0 and out.is_file()
    rc, _, se = run(["tokenizer", "--data", str(short_manifest), "--vocab-size", "60", "-o", str(out)], capsys)
    assert rc == 2 and "already exists" in se


def test_cli_ctc_weight_default_matches_decode():
    from apps.asr import cli, decode

    assert cli.DECODE_CTC_WEIGHT == decode.DECODE_CTC_WEIGHT
