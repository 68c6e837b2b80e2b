"""Samba-ASR networks: streaming equals offline, padding does not leak, decoder steps equal the
full forward, CTC prefix scores and alignment against their definitions, beam search."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.asr.decode import CTCPrefixScorer, ctc_align, ctc_greedy, joint_beam_search, word_times
from apps.asr.features import LogMel, StreamingLogMel
from apps.asr.model import ASRNet, EncoderStream, model_config

SMALL = dict(d_model=32, enc_layers=2, dec_layers=2, subsample_channels=8)


def _net(**kw):
    torch.manual_seed(0)
    return ASRNet(20, 80, **model_config("tiny", **{**SMALL, **kw})).eval()


def test_streaming_equals_offline(transcripts):
    from apps.asr.data import read_audio

    x = read_audio(next(r for r in transcripts if r["utt_id"] == "LJ001-0002")["path"])
    net = _net(causal=True)
    lm = LogMel()
    with torch.no_grad():
        f = lm(torch.from_numpy(x))[None]
        off, _ = net.encode(f, torch.tensor([f.shape[1]]))
    for chunk in (10240, 3000):        # 640 ms, and chunks that do not align with frames
        s, es = StreamingLogMel(lm), EncoderStream(net.encoder)
        outs = [es(s.accept(x[i:i + chunk])[None]) for i in range(0, len(x), chunk)] + [es(s.flush()[None])]
        on = torch.cat(outs, 1)
        assert on.shape == off.shape
        torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)


def test_bidirectional_cannot_stream():
    with pytest.raises(NotImplementedError, match="bidirectional"):
        EncoderStream(_net(causal=False).encoder)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_leak(causal):
    net = _net(causal=causal)
    f = torch.randn(2, 300, 80)
    lens = torch.tensor([300, 180])
    with torch.no_grad():
        enc, el = net.encode(f, lens)
        single, sl = net.encode(f[1:, :180], lens[1:])
    assert el.tolist() == [74, 44] and sl.tolist() == [44]
    # every valid frame: the subsampling convs read frames 4j..4j+6 < 180 only, and core's BiMamba
    # (lengths=) runs the backward scan within each utterance's own length
    torch.testing.assert_close(enc[1, :44], single[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["samba", "conformer"])
def test_decoder_steps_equal_forward(arch):
    torch.manual_seed(0)
    cfg = model_config("tiny" if arch == "samba" else "conformer-tiny", d_model=32, enc_layers=2, dec_layers=2)
    net = ASRNet(20, 80, **cfg).eval()
    enc = torch.randn(2, 30, 32)
    ys = torch.randint(1, 19, (2, 6))
    with torch.no_grad():
        full = torch.log_softmax(net.decoder(enc, torch.tensor([30, 22]), ys, torch.tensor([6, 4])), -1)
    for b, T in [(0, 30), (1, 22)]:
        st = net.decoder.reorder(net.decoder.init_state(enc[b:b + 1, :T]), torch.zeros(2, dtype=torch.long))
        for u in range(4):
            lp, st = net.decoder.step(st, ys[b, u].repeat(2))
            torch.testing.assert_close(lp[1], full[b, u], atol=1e-4, rtol=1e-4)


def _brute_prefix(logp: np.ndarray, prefix, V: int) -> float:
    """Sum of P(alignment) over all CTC paths whose collapsed label starts with ``prefix``."""
    T = logp.shape[0]
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        lab, prev = [], 0
        for k in path:
            if k != 0 and k != prev:
                lab.append(k)
            prev = k
        if lab[:len(prefix)] == list(prefix):
            total += math.exp(sum(logp[t, k] for t, k in enumerate(path)))
    return math.log(total) if total > 0 else -math.inf


def test_ctc_prefix_scores_match_definition():
    torch.manual_seed(1)
    T, V = 5, 3
    logp = torch.log_softmax(torch.randn(T, V, dtype=torch.float64), -1)
    sc = CTCPrefixScorer(logp)
    rn, rb = sc.initial()
    # prefixes [1] and [2] from the empty hypothesis, then [1, 1] and [1, 2]
    psi, nn_, nb = sc.extend(rn[None], rb[None], torch.tensor([-1]), torch.tensor([[1, 2]]), torch.tensor([True]))
    for j, c in enumerate([1, 2]):
        assert abs(float(psi[0, j]) - _brute_prefix(logp.numpy(), [c], V)) < 1e-9
    psi2, n2, b2 = sc.extend(nn_[0, :1], nb[0, :1], torch.tensor([1]), torch.tensor([[1, 2]]), torch.tensor([False]))
    for j, c in enumerate([1, 2]):
        assert abs(float(psi2[0, j]) - _brute_prefix(logp.numpy(), [1, c], V)) < 1e-9
    # full-sequence probability equals exp(-ctc_loss)
    loss = F.ctc_loss(logp[:, None], torch.tensor([[1, 2]]), torch.tensor([T]), torch.tensor([2]), reduction="sum")
    assert abs(float(CTCPrefixScorer.final(n2[0, 1], b2[0, 1])) + float(loss)) < 1e-9


def test_ctc_greedy_and_align():
    V = 5
    path = [0, 1, 1, 0, 0, 2, 0, 2, 2, 3]
    logp = torch.full((len(path), V), -10.0)
    logp[torch.arange(len(path)), torch.tensor(path)] = 0.0
    toks, spans = ctc_greedy(logp)
    assert toks == [1, 2, 2, 3] and spans == [(1, 2), (5, 5), (7, 8), (9, 9)]
    assert ctc_align(torch.log_softmax(logp, -1), toks) == spans
    words = word_times(["▁A", "B", "▁C", "D"], spans, 0.04)
    assert [w["word"] for w in words] == ["AB", "CD"] and words[0]["start"] == 0.04 and words[1]["end"] == 0.4


def test_beam_search_prefers_ctc_evidence():
    """With a decoder that knows nothing, the joint search must follow the CTC posteriors."""
    net = _net(causal=False)
    V = 20
    target = [3, 7, 7, 12]
    path = [0, 3, 3, 0, 7, 0, 7, 12, 0, 0]
    logp = torch.log_softmax(torch.full((len(path), V), -8.0).index_put_(
        (torch.arange(len(path)), torch.tensor(path)), torch.tensor(4.0)), -1)
    enc = torch.randn(1, len(path), 32)
    toks, score = joint_beam_search(net.decoder, enc, logp, V - 1, beam=4, ctc_weight=0.9)
    assert toks == target and math.isfinite(score)


def test_warmup_ends_by_a_tenth_of_a_time_budget():
    """A --max-time run must not spend itself in a 500-step warm-up: the ramp also ends once a
    tenth of the budget (here wall time, read from the Timer) is spent; cosine decay follows."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    from apps.asr.train import ASRModule

    m = ASRModule(20, model_config("tiny", **SMALL), warmup_steps=500, steps_per_epoch=10)
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = sched.lr_lambdas[0]
    timer = Timer(duration={"seconds": 100})
    spent = {"s": 0.0}
    timer.time_elapsed = lambda stage="train": spent["s"]
    m._trainer = SimpleNamespace(global_step=5, max_steps=-1, max_epochs=100000, callbacks=[timer])
    assert factor(5) == pytest.approx(6 / 500)              # 1 % of the budget: still the step ramp
    spent["s"] = 10.0
    m._trainer.global_step = 5
    assert factor(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))   # a tenth spent: full lr x cosine
    spent["s"] = 0.0
    m._trainer = SimpleNamespace(global_step=250, max_steps=-1, max_epochs=1, callbacks=[])   # 10 steps/epoch
    assert factor(250) == pytest.approx(0.02)               # budget spent: floor of the decay
