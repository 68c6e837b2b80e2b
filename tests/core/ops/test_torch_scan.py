"""Mamba-2 SSD scan (chunked dual form, "torch"/"cpu") vs the float64 reference, and the oracle cross-check."""
import functools

import pytest
import torch

from core.ops import selective_scan_ref, ssd_scan, ssd_scan_ref

from .util import assert_close_to_ref, check_ssd_against_ref, grads, run_ssd, saved_numel, ssd_inputs

BACKENDS = ["cpu", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 4), (8, 4), (13, 4), (13, 64), (40, 16)])
def test_lengths_and_chunks(backend, L, chunk):
    check_ssd_against_ref(backend, ssd_inputs(L=L), chunk_size=chunk)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("G", [1, 2, 4])
def test_groups(backend, G):
    check_ssd_against_ref(backend, ssd_inputs(L=10, H=4, G=G))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D,z,bias,h0,softplus", [
    (None, False, False, False, False), ("vec", False, False, False, True), ("mat", True, False, False, False),
    (None, False, True, False, True), (None, False, False, True, False), ("mat", True, True, True, True)])
def test_optional_inputs(backend, D, z, bias, h0, softplus):
    check_ssd_against_ref(backend, ssd_inputs(L=9, D=D, z=z, bias=bias, h0=h0), softplus=softplus)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dt_limit(backend):
    check_ssd_against_ref(backend, ssd_inputs(L=9, dt_scale=3.0), dt_limit=(0.05, 1.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    x = ssd_inputs(b=1, L=5, H=2, P=2, G=1, N=2)
    f = lambda *a: run_ssd(backend, dict(zip(x, a)), chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(x.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_dt(backend):
    check_ssd_against_ref(backend, ssd_inputs(L=70, bias=False, dt_scale=10.0), chunk_size=32, softplus=False)


@functools.lru_cache(maxsize=1)
def _long_case():
    x = ssd_inputs(b=1, L=16384, H=2, P=2, G=1, N=4, dtype=torch.float32, seed=5)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = run_ssd(None, x64, chunk_size=256, ref=True)
    return x, [r.detach() for r in ref], grads(ref, x64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_fp32(backend):
    x, ref, gref = _long_case()
    out = run_ssd(backend, x, chunk_size=256)
    assert_close_to_ref(x, out, ref, gref, rtol=2e-4, atol=2e-4, grad_rtol=1e-3, grad_atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    x = ssd_inputs(L=30, dtype=dtype)
    out, last = run_ssd(backend, x, chunk_size=8)
    assert out.dtype == dtype and last.dtype == torch.float32
    x32 = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    ref, ref_last = run_ssd(None, x32, ref=True)
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    for k, a in zip(x, grads((out, last), x)):
        assert a.dtype == dtype and torch.isfinite(a.float()).all(), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_memory_is_linear_in_L(backend):
    # everything kept for backward together stays below one (batch, L, heads, headdim, N)
    # tensor (what a naive scan keeps several of): O(L * (Q + N*P/Q)) per head
    b, L, H, P, N = 2, 1024, 4, 16, 16
    x = ssd_inputs(b=b, L=L, H=H, P=P, G=1, N=N, dtype=torch.float32)
    n, _ = saved_numel(lambda: run_ssd(backend, x, chunk_size=16))
    n -= x["B"].numel() + x["C"].numel()
    assert n < b * L * H * P * N, n / (b * L * H * P)
    n2, _ = saved_numel(lambda: run_ssd(backend, ssd_inputs(b=b, L=2 * L, H=H, P=P, G=1, N=N,
                                                            dtype=torch.float32), chunk_size=16))
    assert n2 - 2 * (x["B"].numel() + x["C"].numel()) < 2.1 * n  # linear in L


def test_reference_ssd_is_a_special_mamba1_scan():
    """Cross-check of the two oracles: SSD == Mamba-1 with A shared over N and grouped B/C."""
    x = ssd_inputs(b=2, L=12, H=4, P=3, G=2, N=5, D=None, z=False, bias=False)
    y, last = ssd_scan_ref(x["x"], x["dt"], x["A"], x["B"], x["C"], initial_states=x["initial_states"],
                           return_final_states=True)
    b, L, H, P = x["x"].shape
    N = x["B"].shape[-1]
    u = x["x"].permute(0, 2, 3, 1).reshape(b, H * P, L)
    delta = x["dt"].permute(0, 2, 1).repeat_interleave(P, dim=1)
    A = x["A"].repeat_interleave(P)[:, None].expand(H * P, N)
    B, C = x["B"].permute(0, 2, 3, 1), x["C"].permute(0, 2, 3, 1)
    y1, last1 = selective_scan_ref(u, delta, A, B, C, return_last_state=True,
                                   initial_state=x["initial_states"].reshape(b, H * P, N))
    torch.testing.assert_close(y1, y.permute(0, 2, 3, 1).reshape(b, H * P, L))
    torch.testing.assert_close(last1, last.reshape(b, H * P, N))


def test_chunk_size_does_not_change_the_result():
    x = ssd_inputs(L=50)
    outs = [ssd_scan(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=c, backend="cpu") for c in (1, 7, 64)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])


def test_bad_shapes_raise():
    x = ssd_inputs()
    with pytest.raises(ValueError, match="dt must be"):
        ssd_scan(x["x"], x["dt"][:, :3], x["A"], x["B"], x["C"], backend="cpu")
    with pytest.raises(ValueError, match="divisible"):
        ssd_scan(x["x"], x["dt"], x["A"], x["B"][:, :, :1].expand(-1, -1, 3, -1),
                 x["C"][:, :, :1].expand(-1, -1, 3, -1), backend="cpu")
