"""Mamba-1 selective scan, fast CPU backends ("cpu": C kernel, "torch": chunked torch) vs the float64 reference."""
import functools

import pytest
import torch

from core.ops import cpu_build, cpu_scan, selective_scan, selective_scan_ref, torch_scan

from .util import assert_close_to_ref, check_against_ref, grads, run_ss, saved_numel, ss_inputs

BACKENDS = ["cpu", "torch"]


def test_c_kernel_builds():
    # CI must exercise the C path, not silently the fallback
    assert cpu_build.load() is not None, cpu_build.error()


@pytest.fixture
def small_chunks(monkeypatch):
    """Checkpoint every 4 steps (C) / blocks of 8 with chunks of 4 (torch): boundaries in tiny L."""
    monkeypatch.setattr(cpu_scan, "chunk_len", lambda N: 4)
    monkeypatch.setattr(torch_scan, "_BLOCK", 8)
    monkeypatch.setattr(torch_scan, "_SUB", 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 7, 13, 16])
def test_lengths_with_boundaries(backend, L, small_chunks):
    check_against_ref(backend, ss_inputs(L=L))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 63, 130, 300])
def test_lengths_default_chunks(backend, L):
    check_against_ref(backend, ss_inputs(d=3, L=L, N=4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups,C_groups", [(None, "same"), (2, "same"), (4, "same"), ("inv", "same"),
                                             (2, None), ("inv", 2)])
def test_b_c_layouts(backend, groups, C_groups, small_chunks):
    check_against_ref(backend, ss_inputs(d=4, L=10, groups=groups, C_groups=C_groups))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D,z,bias,h0,softplus", [
    (False, False, False, False, False), (True, False, False, False, True), (False, True, False, False, False),
    (False, False, True, False, True), (False, False, False, True, False), (True, True, True, True, True)])
def test_optional_inputs(backend, D, z, bias, h0, softplus, small_chunks):
    check_against_ref(backend, ss_inputs(L=11, D=D, z=z, bias=bias, h0=h0), softplus=softplus)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_last_state_and_partial_grads(backend):
    x = ss_inputs(L=20, h0=False)
    x["A"].requires_grad_(False)
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], backend=backend)
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"])
    torch.testing.assert_close(out, ref)
    gu, = torch.autograd.grad(out.sum(), [x["u"]])
    gr, = torch.autograd.grad(ref.sum(), [x["u"]])
    torch.testing.assert_close(gu, gr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, small_chunks):
    x = ss_inputs(b=1, d=2, L=6, N=2, groups=2)
    f = lambda *a: run_ss(backend, dict(zip(x, a)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(x.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_delta(backend):
    # dt up to 10 (plus bias, no softplus): decays underflow to 0, nothing may overflow
    x = ss_inputs(d=3, L=140, N=4, bias=False, delta_scale=10.0)
    check_against_ref(backend, x, softplus=False)


@functools.lru_cache(maxsize=1)
def _long_case():
    x = ss_inputs(b=1, d=2, L=16384, N=4, dtype=torch.float32, seed=3)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = run_ss(None, x64, ref=True)
    return x, [r.detach() for r in ref], grads(ref, x64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_fp32(backend):
    x, ref, gref = _long_case()   # the float64 reference is computed once for both backends
    out = run_ss(backend, x)
    assert_close_to_ref(x, out, ref, gref, rtol=2e-4, atol=2e-4, grad_rtol=1e-3, grad_atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    x = ss_inputs(L=70, N=4, dtype=dtype)
    out, last = run_ss(backend, x)
    assert out.dtype == dtype and last.dtype == torch.float32  # fp32 state, like mamba_ssm
    x32 = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    ref, ref_last = run_ss(None, x32, ref=True)  # same rounded inputs, fp32 math
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    for k, a, e in zip(x, grads((out, last), x), grads((ref.to(dtype), ref_last), x32)):
        assert a.dtype == dtype, k
        torch.testing.assert_close(a.float(), e, rtol=5 * tol, atol=5 * tol, msg=lambda m: f"{k}: {m}")


def _memory_case(backend, L=1024, b=2, d=32, N=16):
    x = ss_inputs(b=b, d=d, L=L, N=N, dtype=torch.float32)
    n, out = saved_numel(lambda: run_ss(backend, x, ref=backend is None))
    return n - x["B"].numel() - x["C"].numel(), b * d * L  # B, C themselves may be kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_memory_is_linear_in_L(backend):
    # a single (batch, dim, L, N) tensor would be N = 16 x batch*dim*L
    n, bdl = _memory_case(backend)
    assert n < 8 * bdl, (n / bdl)


def test_memory_check_catches_the_reference():
    n, bdl = _memory_case(None, L=128)
    assert n > 16 * bdl


def test_fallback_when_c_kernel_missing(monkeypatch):
    monkeypatch.setattr(cpu_build, "load", lambda: None)
    check_against_ref("auto", ss_inputs(L=9))              # auto takes the pure-torch scan
    with pytest.raises(ValueError, match="cannot run here"):
        check_against_ref("cpu", ss_inputs(L=9))           # and "cpu" by name says it is not there
    x = ss_inputs(L=9)                                     # the function itself still falls back
    torch.testing.assert_close(cpu_scan.selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"], x["C"]),
                               selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="torch"))


def test_threads_split_channels():
    x = ss_inputs(b=3, d=5, L=33, groups=5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_ss("cpu", x)
        torch.set_num_threads(2)
        two = run_ss("cpu", x)
    finally:
        torch.set_num_threads(old)
    for a, e in zip(grads(two, x), grads(one, x)):
        torch.testing.assert_close(a, e)


def test_bad_shapes_raise():
    x = ss_inputs()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(x["u"], x["delta"], x["A"][:2], x["B"], x["C"], backend="cpu")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][..., :3], x["C"], backend="cpu")
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], initial_state=x["u"], backend="cpu")
