"""Ragged batches in the layers: packed rows (seq_idx / cu_seqlens) and padded batches (lengths)
give every sequence exactly what running it alone gives, values and gradients, float64."""
import pytest
import torch

from core.layers import BiMamba, Hydra, InferenceParams, Mamba, Mamba2, S4D, SSMBackbone, set_backend
from core.ops import pack_sequences, packed_to_padded, seq_idx_from_cu_seqlens

F64 = torch.float64
LENS = [5, 1, 7, 3]
D = 8


def _layers():
    return {
        "mamba": lambda: Mamba(D, d_state=4),
        "mamba2": lambda: Mamba2(D, d_state=4, headdim=4, chunk_size=4),
        "bimamba": lambda: BiMamba(D, d_state=4),
        "bimamba2_concat": lambda: BiMamba(D, mixer="mamba2", combine="concat", d_state=4, headdim=4,
                                           chunk_size=4),
        "hydra": lambda: Hydra(D, d_state=4, headdim=4, d_conv=3, chunk_size=4),
        "hydra_init_even_conv": lambda: Hydra(D, d_state=4, headdim=4, d_conv=4, chunk_size=4,
                                              learnable_init_states=True),
        "backbone_mamba2_mlp": lambda: SSMBackbone(D, 2, mixer="mamba2", d_intermediate=16,
                                                   mixer_kwargs=dict(d_state=4, headdim=4, chunk_size=4)),
        "backbone_hydra": lambda: SSMBackbone(D, 2, mixer="hydra",
                                              mixer_kwargs=dict(d_state=4, headdim=4, d_conv=3)),
        "s4d": lambda: S4D(D, d_state=4),
    }


def _make(name, backend):
    torch.manual_seed(0)
    m = _layers()[name]().double()
    if name == "hydra_init_even_conv":
        with torch.no_grad():
            m.init_states.normal_()  # a non-zero learnt start state must reach every sequence
    return set_backend(m, backend).eval()


def _alone(m, seqs):
    return [m(s[None])[0] for s in seqs]


def _check_grads(m, out_fn, ref_fn, seqs):
    """Gradients of one random functional: packed/padded run vs each sequence alone."""
    g = [torch.randn_like(s) for s in seqs]
    params = list(m.parameters())
    a = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out_fn(), g)), seqs + params, allow_unused=True)
    b = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref_fn(), g)), seqs + params, allow_unused=True)
    for x, y in zip(a, b):
        if y is None:
            assert x is None or not x.abs().any()
            continue
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", list(_layers()))
def test_packed_and_padded_equal_each_sequence_alone(name):
    m = _make(name, "auto")
    torch.manual_seed(1)
    seqs = [torch.randn(n, D, dtype=F64, requires_grad=True) for n in LENS]
    ref = _alone(m, seqs)

    def packed():
        x, cu = pack_sequences(seqs)
        y = m(x, cu_seqlens=cu)
        return [y[0, a:b] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]

    def padded():
        x, lens = packed_to_padded(*pack_sequences(seqs))
        y = m(x, lengths=lens)
        assert not y[1, 1:].abs().any() and not y[3, 3:].abs().any()  # padding zeroed
        return [y[i, :n] for i, n in enumerate(LENS)]

    def two_rows():  # several packed rows with seq_idx: [5, 1] and [7, 3] (row 0 padded by a 4-long tail)
        r0, r1 = torch.cat([seqs[0], seqs[1], seqs[3]]), torch.cat([seqs[2], seqs[3]])
        sq = torch.tensor([[0] * 5 + [1] + [2] * 3 + [3], [0] * 7 + [1] * 3], dtype=torch.int32)
        x = torch.stack([torch.cat([r0, seqs[1]]), r1])
        y = m(x, seq_idx=sq)
        return [y[0, :5], y[0, 5:6], y[1, :7], y[1, 7:]]

    for run in (packed, padded, two_rows):
        for o, r in zip(run(), ref):
            torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-11)
    _check_grads(m, packed, lambda: ref, seqs)
    _check_grads(m, padded, lambda: _alone(m, seqs), seqs)


@pytest.mark.parametrize("name", ["mamba", "hydra"])
def test_reference_backend(name):
    # the float64 sequential reference kernels give the same (the test above ran the fast CPU ones)
    m = _make(name, "reference")
    seqs = [torch.randn(n, D, dtype=F64) for n in (3, 1, 4)]
    x, cu = pack_sequences(seqs)
    y = m(x, cu_seqlens=cu)
    for o, r in zip(y[0].split([3, 1, 4]), _alone(m, seqs)):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


def test_padding_never_leaks_into_real_positions():
    # changing the padding changes nothing at real positions, in both directions
    m = _make("backbone_hydra", "auto")
    x = torch.randn(2, 6, D, dtype=F64)
    lens = torch.tensor([4, 6])
    y = m(x, lengths=lens)
    x2 = x.clone()
    x2[0, 4:] = 1e3
    y2 = m(x2, lengths=lens)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    assert not torch.allclose(m(x2)[0, :4], y[0, :4])  # without lengths it does leak


def test_streaming_with_packed_rows_and_errors():
    m = _make("mamba2", "auto")
    a, b = torch.randn(5, D, dtype=F64), torch.randn(2, D, dtype=F64)
    x, cu = pack_sequences([a, b])
    ip = InferenceParams(max_seqlen=16, max_batch_size=1)
    y = m(x, ip, seq_idx=seq_idx_from_cu_seqlens(cu))
    ip.seqlen_offset += x.shape[1]
    nxt = torch.randn(1, 1, D, dtype=F64)
    step = m(nxt, ip)  # continues the row's last sequence (b) only
    alone = m(torch.cat([b, nxt[0]])[None])
    torch.testing.assert_close(y[0, 5:], alone[0, :2])
    torch.testing.assert_close(step[0, 0], alone[0, 2])
    with pytest.raises(ValueError, match="not both"):
        m(x, seq_idx=seq_idx_from_cu_seqlens(cu), lengths=torch.tensor([7]))
    with pytest.raises(ValueError, match="batch 1"):
        m(torch.randn(2, 7, D, dtype=F64), cu_seqlens=cu)
    with pytest.raises(NotImplementedError, match="streaming"):
        _make("s4d", "auto")(x, InferenceParams(16, 1), lengths=torch.tensor([7]))


@pytest.mark.parametrize("name", ["mamba", "mamba2", "backbone_mamba2_mlp"])
@pytest.mark.parametrize("layout", ["lengths", "cu_seqlens", "both"])
def test_streaming_a_ragged_batch_continues_every_sequence(name, layout):
    # prefill sequences of different lengths together, then decode all of them step by step:
    # each row continues from its own end (lengths), or one cached state per sequence (cu_seqlens)
    m = _make(name, "auto")
    torch.manual_seed(2)
    lens = [5, 2, 7]
    seqs = [torch.randn(n, D, dtype=F64) for n in lens]
    steps = torch.randn(3, 3, 1, D, dtype=F64)                  # 3 steps for each of the 3 sequences
    ip = InferenceParams(max_seqlen=16, max_batch_size=3)
    x, cu = pack_sequences(seqs)
    if layout == "lengths":
        xp, ln = packed_to_padded(x, cu)
        y = m(xp, ip, lengths=ln)
        got = [y[i, :n] for i, n in enumerate(lens)]
    else:  # mamba_ssm passes seq_idx along with cu_seqlens; cu_seqlens decides the cache
        kw = {"seq_idx": seq_idx_from_cu_seqlens(cu)} if layout == "both" else {}
        y = m(x, ip, cu_seqlens=cu, **kw)
        got = list(y[0].split(lens))
    ip.seqlen_offset += 7
    outs = []
    for k in range(3):
        outs.append(m(steps[k], ip))
        ip.seqlen_offset += 1
    for i, s in enumerate(seqs):
        alone = m(torch.cat([s] + [steps[k, i] for k in range(3)])[None])[0]
        torch.testing.assert_close(got[i], alone[:lens[i]], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(torch.cat([o[i] for o in outs]), alone[lens[i]:], rtol=1e-9, atol=1e-11)
