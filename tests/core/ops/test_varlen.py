"""Packed sequences (``seq_idx``) in every CPU backend vs each sequence run alone, and the
packing helpers. The Triton kernels run the same checks in triton_cases.py."""
import pytest
import torch

from core.ops import available_backends, cpu_scan, selective_scan, ssd_scan, torch_scan
from core.ops import dispatch, varlen

from .varlen_util import ROWS, check_conv_packed, check_ss_packed, check_ssd_packed, seq_idx_of

BACKENDS = ["reference", "cpu", "torch"]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk edges every 4 steps in every backend, so boundaries fall on and off them."""
    monkeypatch.setattr(cpu_scan, "chunk_len", lambda N: 4)
    monkeypatch.setattr(torch_scan, "_BLOCK", 8)
    monkeypatch.setattr(torch_scan, "_SUB", 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [None, 2, "inv"])
def test_selective_scan_packed(backend, groups, small_chunks):
    check_ss_packed(backend, groups=groups)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_selective_scan_packed_fp32_default_chunks(backend):
    rows = ([70, 1, 59, 130], [200, 60])  # crosses the default chunk (64) and block (256) edges
    check_ss_packed(backend, rows=rows, d=2, N=2, dtype=torch.float32, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [4, 5, 64])
def test_ssd_scan_packed(backend, chunk_size):
    check_ssd_packed(backend, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", ["reference", "cpu", "torch"])
@pytest.mark.parametrize("activation,bias,init,width", [("silu", True, True, 4), (None, False, False, 2),
                                                        ("silu", True, False, 5)])
def test_causal_conv_packed(backend, activation, bias, init, width):
    check_conv_packed(backend, activation=activation, bias=bias, init=init, width=width)


def test_one_sequence_per_row_is_the_plain_op():
    # seq_idx all equal changes nothing (and a padded batch's seq_idx keeps the real part exact)
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(2, 3, 9, generator=g, dtype=torch.float64), torch.rand(2, 3, 9, generator=g,
                                                                               dtype=torch.float64)
    A, B, C = -torch.rand(3, 2, dtype=torch.float64), torch.randn(2, 2, 9, dtype=torch.float64), \
        torch.randn(2, 2, 9, dtype=torch.float64)
    plain = selective_scan(u, dt, A, B, C, backend="cpu")
    same = selective_scan(u, dt, A, B, C, seq_idx=torch.zeros(2, 9, dtype=torch.int32), backend="cpu")
    torch.testing.assert_close(same, plain)
    pad = selective_scan(u, dt, A, B, C, seq_idx=varlen.seq_idx_from_lengths([5, 9], 9), backend="cpu")
    torch.testing.assert_close(pad[0, :, :5], plain[0, :, :5])
    assert not torch.allclose(pad[0, :, 5:], plain[0, :, 5:])  # the padding restarted from zero


def test_dispatch_routes_around_backends_without_seq_idx():
    calls = []

    def no_seq(x, dt, A, B, C, **kw):  # a registered backend that knows nothing of seq_idx
        calls.append(kw)
        return dispatch._REGISTRY["ssd_scan"]["reference"][0](x, dt, A, B, C, **kw)

    saved = dict(dispatch._REGISTRY["ssd_scan"])
    try:
        dispatch.register_backend("ssd_scan", "mamba_ssm", no_seq)  # first in the auto order
        x, dt = torch.randn(1, 6, 2, 2, dtype=torch.float64), torch.rand(1, 6, 2, dtype=torch.float64)
        A, B = -torch.rand(2, dtype=torch.float64), torch.randn(1, 6, 1, 3, dtype=torch.float64)
        ssd_scan(x, dt, A, B, B)
        assert len(calls) == 1  # plain calls use it
        sq = torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.int32)
        out = ssd_scan(x, dt, A, B, B, seq_idx=sq)
        assert len(calls) == 1  # packed calls went elsewhere, never to a backend that ignores seq_idx
        alone = ssd_scan(x[:, 3:], dt[:, 3:], A, B[:, 3:], B[:, 3:], backend="reference")
        torch.testing.assert_close(out[:, 3:], alone)
        with pytest.raises(ValueError, match="does not support seq_idx"):
            ssd_scan(x, dt, A, B, B, seq_idx=sq, backend="mamba_ssm")
    finally:
        dispatch._REGISTRY["ssd_scan"].clear()
        dispatch._REGISTRY["ssd_scan"].update(saved)
    assert "mamba_ssm" not in available_backends("ssd_scan") or saved.get("mamba_ssm")


def test_bad_seq_idx_is_one_clear_error():
    u = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match=r"seq_idx must be \(batch, L\)"):
        selective_scan(u, u.abs(), -torch.ones(2, 1), torch.randn(1, 1, 5), torch.randn(1, 1, 5),
                       seq_idx=torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="integer"):
        selective_scan(u, u.abs(), -torch.ones(2, 1), torch.randn(1, 1, 5), torch.randn(1, 1, 5),
                       seq_idx=torch.zeros(1, 5))


def test_pack_unpack_roundtrip():
    seqs = [torch.randn(n, 3) for n in (4, 1, 6)]
    packed, cu = varlen.pack_sequences(seqs)
    assert packed.shape == (1, 11, 3) and cu.tolist() == [0, 4, 5, 11] and cu.dtype == torch.int32
    assert varlen.seq_idx_from_cu_seqlens(cu).tolist() == [[0] * 4 + [1] + [2] * 6]
    for a, b in zip(varlen.unpack_sequences(packed, cu), seqs):
        assert torch.equal(a, b)
    padded, lens = varlen.packed_to_padded(packed, cu)
    assert padded.shape == (3, 6, 3) and lens.tolist() == [4, 1, 6]
    assert padded[1, 1:].abs().sum() == 0
    back, cu2 = varlen.padded_to_packed(padded, lens)
    assert torch.equal(back, packed) and torch.equal(cu2, cu)
    with pytest.raises(ValueError, match="ends at 11"):
        varlen.seq_idx_from_cu_seqlens(cu, seqlen=12)


def test_segment_reverse_index_flips_each_sequence_in_place():
    sq = seq_idx_of(ROWS)
    idx = varlen.segment_reverse_index(sq)
    assert idx[0].tolist() == [2, 1, 0, 7, 6, 5, 4, 3, 8, 12, 11, 10, 9]
    assert torch.equal(idx.gather(1, idx), torch.arange(13).expand(2, 13))  # an involution
    pad = varlen.segment_reverse_index(varlen.seq_idx_from_lengths([3, 5], 5))
    assert pad.tolist() == [[2, 1, 0, 4, 3], [4, 3, 2, 1, 0]]  # real part flipped, padding stays behind
    x = torch.arange(26.).reshape(2, 13)
    padded, lens, index = varlen.seq_idx_to_padded(x, sq)
    assert lens.tolist() == [3, 5, 1, 4, 8, 5] and padded.shape == (6, 8)
    assert torch.equal(varlen.padded_to_seq_idx(padded, index, 2, 13), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_sequence_starts_wherever_seq_idx_changes(backend):
    # ids that come back later in a row ([0, 0, 1, 1, 0, 0]) mean three sequences, in every kernel
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 2, 2, generator=g, dtype=torch.float64)
    dt, A = torch.rand(1, 6, 2, generator=g, dtype=torch.float64), -torch.rand(2, dtype=torch.float64)
    B = torch.randn(1, 6, 1, 3, generator=g, dtype=torch.float64)
    back, plain = torch.tensor([[0, 0, 1, 1, 0, 0]]), torch.tensor([[0, 0, 1, 1, 2, 2]])
    for sq in (back, plain):
        assert varlen.check_seq_idx(sq, 1, 6).tolist() == plain.tolist()
    torch.testing.assert_close(ssd_scan(x, dt, A, B, B, chunk_size=8, seq_idx=back, backend=backend),
                               ssd_scan(x, dt, A, B, B, chunk_size=8, seq_idx=plain, backend=backend))
    from core.ops import causal_conv1d
    u, w = torch.randn(1, 3, 6, generator=g, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(causal_conv1d(u, w, seq_idx=back, backend=backend),
                               causal_conv1d(u, w, seq_idx=plain, backend=backend))
