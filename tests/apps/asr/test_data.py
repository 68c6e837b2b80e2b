"""Audio reading, resampling, corpora formats, text normalisation, bucketing, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from apps.asr.data import (BucketBatchSampler, find_audio, fill_durations, iter_audio_blocks, load_corpus,
                           normalize_text, read_audio, resample)
from core.engine import UserError


def lj(transcripts):
    return next(r for r in transcripts if r["utt_id"] == "LJ001-0002")


def test_read_real_ljspeech_resamples_to_16k(transcripts):
    r = lj(transcripts)
    x = read_audio(r["path"])
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / 16000 - float(r["duration_s"])) < 0.01
    assert 0.05 < np.abs(x).max() <= 1.0


@pytest.mark.parametrize("sr,subtype,channels", [(8000, "PCM_16", 1), (22050, "PCM_24", 2), (44100, "PCM_32", 1),
                                                  (48000, "FLOAT", 2), (16000, "PCM_16", 1)])
def test_rates_bit_depths_and_stereo(transcripts, tmp_path, sr, subtype, channels):
    ref = read_audio(lj(transcripts)["path"])             # 16 kHz reference
    y = resample(ref, 16000, sr)
    data = np.stack([y, y], 1) if channels == 2 else y
    p = tmp_path / f"x_{sr}_{subtype}.{'flac' if subtype in ('PCM_16', 'PCM_24') and sr <= 48000 else 'wav'}"
    sf.write(str(p), data, sr, subtype=subtype)
    x = read_audio(p)
    n = min(len(x), len(ref))
    assert abs(len(x) - len(ref)) <= 2
    # band-limited speech survives the round trip (8 kHz loses everything above 4 kHz)
    err = np.sqrt(np.mean((x[:n] - ref[:n]) ** 2)) / np.sqrt(np.mean(ref[:n] ** 2))
    assert err < (0.5 if sr == 8000 else 0.05)


def test_ogg_and_segment(transcripts, tmp_path):
    ref = read_audio(lj(transcripts)["path"])
    p = tmp_path / "x.ogg"
    sf.write(str(p), ref, 16000, format="OGG", subtype="VORBIS")
    assert abs(len(read_audio(p)) - len(ref)) < 400
    seg = read_audio(lj(transcripts)["path"], start=0.5, end=1.0)
    assert len(seg) == 8000


def test_resample_keeps_frequency():
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(x, 48000, 16000)
    spec = np.abs(np.fft.rfft(y[1000:-1000]))
    f = np.argmax(spec) * 16000 / len(y[1000:-1000])
    assert abs(f - 440) < 2


def test_streamed_blocks_equal_whole_file(transcripts):
    p = lj(transcripts)["path"]
    whole = read_audio(p)
    blocks = np.concatenate(list(iter_audio_blocks(p, block_seconds=0.3)))
    assert abs(len(blocks) - len(whole)) <= 2
    n = min(len(blocks), len(whole))
    np.testing.assert_allclose(blocks[:n], whole[:n], atol=1e-4)


def test_bad_audio_one_line(tmp_path, transcripts):
    good = open(lj(transcripts)["path"], "rb").read()
    (tmp_path / "trunc.wav").write_bytes(good[: len(good) // 3])
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 10)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    for name, word in [("trunc.wav", "truncated"), ("garbage.wav", "cannot read"), ("empty.wav", "empty"),
                       ("missing.wav", "not found")]:
        with pytest.raises(UserError) as e:
            read_audio(tmp_path / name)
        assert name in str(e.value) and word in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="limit"):
        read_audio(lj(transcripts)["path"], max_seconds=1.0)


def test_librispeech_layout(speech_dir):
    c = load_corpus(speech_dir / "librispeech_test-clean_1089" / "LibriSpeech" / "test-clean")
    assert c.kind == "librispeech" and not c.failures
    assert {u.utt_id for u in c.utterances} == {"1089-134686-0000", "1089-134686-0001", "1089-134691-0000",
                                                "1089-134691-0001"}
    u = next(u for u in c.utterances if u.utt_id == "1089-134691-0000")
    assert u.text == "HE COULD WAIT NO LONGER" and u.path.endswith(".flac")


def test_tsv_manifest_with_header(speech_dir):
    c = load_corpus(speech_dir / "transcripts.tsv")
    assert len(c.utterances) == 41 and not c.failures
    ok, fails = fill_durations(c.utterances)
    assert len(ok) == 41 and abs(ok[0].duration - 9.655) < 0.01


def test_kaldi_folder_and_jsonl(speech_dir, tmp_path):
    w = speech_dir / "wenet_test_resources"
    (tmp_path / "wav.scp").write_text(f"a {w / 'librispeech-1995-1837-0001.wav'}\nb sox x.wav |\n")
    (tmp_path / "text").write_text("a IT WAS THE FIRST\nb HELLO\n")
    c = load_corpus(tmp_path)
    assert c.kind == "kaldi" and [u.utt_id for u in c.utterances] == ["a"]
    assert "piped" in c.failures[0] and "wav.scp:2" in c.failures[0]
    (tmp_path / "segments").write_text("a-1 a 0.5 2.0\n")
    (tmp_path / "text").write_text("a-1 IT WAS\n")
    c = load_corpus(tmp_path)
    assert c.utterances[0].start == 0.5 and c.utterances[0].end == 2.0
    j = tmp_path / "m.jsonl"
    j.write_text(json.dumps({"audio_filepath": str(w / "librispeech-1995-1837-0001.wav"), "text": "hi",
                             "offset": 1.0, "duration": 2.0}) + "\n{bad json\n"
                 + json.dumps({"wav": "nope.wav", "txt": "x", "start": "abc"}) + "\n")
    c = load_corpus(j)
    assert len(c.utterances) == 1 and c.utterances[0].end == 3.0
    assert len(c.failures) == 2 and "m.jsonl:2" in c.failures[0] and "m.jsonl:3" in c.failures[1]


def test_manifest_bad_input(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"path\ttranscript\nx.wav\t\xff\xfe caf\n")
    with pytest.raises(UserError, match=r"bad.tsv:2: not UTF-8"):
        load_corpus(p)
    q = tmp_path / "q.tsv"
    q.write_text("a.wav\thello\tnot-a-number\t3\n")
    c = load_corpus(q)
    assert not c.utterances and "q.tsv:1" in c.failures[0] and "start" in c.failures[0]
    ok, fails = fill_durations(load_corpus(tmp_path / "q.tsv").utterances + [])
    with pytest.raises(UserError, match="no audio files"):
        find_audio([tmp_path / "emptydir"]) if (tmp_path / "emptydir").mkdir() is None else None


def test_normalize_text():
    assert normalize_text("Printing, in the only sense — “quoted” it's 'fine'.") == \
        "PRINTING IN THE ONLY SENSE QUOTED IT'S FINE"
    assert normalize_text("  Mr. Smith-Jones  ") == "MR SMITH JONES"


def test_bucket_sampler_sorts_and_splits_ranks():
    d = np.random.default_rng(0).uniform(1, 20, 200)
    s = BucketBatchSampler(d, batch_seconds=60, max_batch_size=16, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert max(d[b]) * len(b) <= 60 or len(b) == 1
        assert len(b) <= 16
    # little padding: each batch's spread is small compared with the corpus's
    assert np.mean([max(d[b]) - min(d[b]) for b in batches]) < 2.0
    r0 = list(BucketBatchSampler(d, 60, 16, seed=1, num_replicas=2, rank=0))
    r1 = list(BucketBatchSampler(d, 60, 16, seed=1, num_replicas=2, rank=1))
    assert len(r0) == len(r1) == len(BucketBatchSampler(d, 60, 16, num_replicas=2))
