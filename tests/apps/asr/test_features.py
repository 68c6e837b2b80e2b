"""Log-mel against librosa, exact streaming features, SpecAugment, CMVN, tokenizer round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.asr.data import read_audio
from apps.asr.features import LogMel, StreamingLogMel, compute_cmvn, mel_filterbank, spec_augment
from apps.asr.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def wav(transcripts):
    return read_audio(next(r for r in transcripts if r["utt_id"] == "LJ001-0002")["path"])


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for n_mels, n_fft in [(80, 512), (40, 400)]:
        ref = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=n_mels)
        np.testing.assert_allclose(mel_filterbank(16000, n_fft, n_mels), ref, atol=1e-7)


def test_logmel_matches_librosa(wav):
    librosa = pytest.importorskip("librosa")
    ref = librosa.feature.melspectrogram(y=wav.astype(np.float64), sr=16000, n_fft=512, hop_length=160,
                                         win_length=400, window="hann", center=True, pad_mode="constant",
                                         power=2.0, n_mels=80)
    ref = np.log(ref + 1e-6).T
    ours = LogMel().double()(torch.from_numpy(wav).double()).numpy()
    assert ours.shape == ref.shape == (len(wav) // 160 + 1, 80)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_streaming_features_equal_offline(wav):
    m = LogMel()
    off = m(torch.from_numpy(wav))
    for chunk in (160, 1000, 10240):
        s = StreamingLogMel(m)
        parts = [s.accept(wav[i:i + chunk]) for i in range(0, len(wav), chunk)] + [s.flush()]
        torch.testing.assert_close(torch.cat(parts), off, atol=1e-5, rtol=1e-5)


def test_batched_features_match_single(wav):
    m = LogMel()
    x = torch.from_numpy(wav)
    b = m(torch.stack([x, torch.cat([x[:8000], torch.zeros(len(x) - 8000)])]))
    torch.testing.assert_close(b[0], m(x))
    torch.testing.assert_close(b[1, :40], m(x[:8000])[:40], atol=1e-4, rtol=1e-4)


def test_spec_augment_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4, 200, 80)
    lens = torch.tensor([200, 150, 100, 50])
    y = spec_augment(x, lens, generator=g)
    assert y.shape == x.shape and (y == 0).any() and (y == 1).any()
    # freq masks: whole columns; at most 2 bands of <= 27 bins
    zero_cols = (y == 0).all(1)
    assert (zero_cols.sum(1) <= 54).all()
    assert torch.equal(x, torch.ones(4, 200, 80))  # input untouched


def test_cmvn():
    a, b = torch.randn(100, 80) * 3 + 1, torch.randn(50, 80) * 3 + 1
    mean, std = compute_cmvn([a, b])
    allf = torch.cat([a, b])
    torch.testing.assert_close(mean, allf.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, allf.std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_tokenizer_round_trip(transcripts, tmp_path):
    from apps.asr.data import normalize_text

    texts = [normalize_text(r["transcript"]) for r in transcripts]
    tok = train_tokenizer(texts, vocab_size=120, model_type="unigram")
    for t in texts[:10]:
        ids = tok.encode(t)
        assert ids and min(ids) >= 1 and max(ids) <= tok.n_pieces
        assert tok.decode(ids) == t
    tok.save(tmp_path / "t.model")
    assert Tokenizer.load(tmp_path / "t.model").encode(texts[0]) == tok.encode(texts[0])
    bpe = train_tokenizer(texts, vocab_size=5000, model_type="bpe")   # lowered to what the corpus allows
    assert bpe.n_pieces < 5000 and bpe.decode(bpe.encode(texts[3])) == texts[3]
