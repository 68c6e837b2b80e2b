"""Cases for our Triton selective scan vs the float64 reference (Triton interpreter on CPU).

Not collected by pytest directly (no test_ prefix): TRITON_INTERPRET=1 must be
set before triton is first imported in the process (triton's own helpers are
jitted at import), so test_triton_scan.py runs this file in a subprocess with
the variable set. Run by hand with:
    TRITON_INTERPRET=1 python -m pytest -q tests/core/ops/triton_cases.py
Shapes are tiny: the interpreter executes every program instance in Python.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from core.ops import selective_scan, triton_scan  # noqa: E402

from .util import (check_against_ref, check_ssd_against_ref, run_ss, saved_numel,  # noqa: E402
                   ss_inputs, ssd_inputs)

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="needs TRITON_INTERPRET=1 set before triton is imported")]


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setattr(triton_scan, "chunk_len", lambda N: 4)  # chunk boundaries in tiny L


@pytest.mark.parametrize("L", [1, 6, 9])
def test_lengths(L):
    check_against_ref("triton", ss_inputs(b=1, d=3, L=L, N=3))


@pytest.mark.parametrize("groups,C_groups", [(None, "same"), (3, None), ("inv", "same")])
def test_b_c_layouts(groups, C_groups):
    check_against_ref("triton", ss_inputs(b=2, d=3, L=5, N=2, groups=groups, C_groups=C_groups))


def test_no_optional_inputs_and_large_delta():
    x = ss_inputs(b=1, d=2, L=7, N=2, D=False, z=False, bias=False, h0=False, delta_scale=10.0)
    check_against_ref("triton", x, softplus=False)


def test_fp32_and_half_inputs():
    x = ss_inputs(b=1, d=2, L=6, N=3, dtype=torch.float32)
    check_against_ref("triton", x, rtol=1e-4, atol=1e-4)
    xh = ss_inputs(b=1, d=2, L=6, N=3, dtype=torch.bfloat16)
    out, last = run_ss("triton", xh)
    ref, ref_last = run_ss(None, {k: v.detach().float() for k, v in xh.items()}, ref=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


def test_gradcheck():
    x = ss_inputs(b=1, d=2, L=5, N=2)
    f = lambda *a: run_ss("triton", dict(zip(x, a)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(x.values()), eps=1e-6, atol=1e-6)


def test_saved_memory_is_linear_in_L():
    b, d, L, N = 1, 2, 64, 8
    x = ss_inputs(b=b, d=d, L=L, N=N, dtype=torch.float32)
    n, _ = saved_numel(lambda: run_ss("triton", x))
    assert n - x["B"].numel() - x["C"].numel() < 8 * b * d * L + 2 * b * d * N


def test_auto_does_not_pick_the_interpreter():
    x = ss_inputs(b=1, d=2, L=3, N=2, h0=False)
    from core.ops import resolve_backend
    assert resolve_backend("selective_scan", "auto", x["u"]) != "triton"
    selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])  # runs on "cpu"


@pytest.mark.parametrize("D", ["vec", "mat", None])
def test_ssd_on_the_triton_kernels(D):
    # SSD runs on the selective-scan kernels with heads*headdim channels
    x = ssd_inputs(b=1, L=6, H=2, P=2, G=1, N=2, D=D)
    check_ssd_against_ref("triton", x)


@pytest.mark.parametrize("activation,bias,init,L", [(None, False, False, 1), ("silu", True, False, 7),
                                                    ("silu", True, True, 130), (None, True, True, 5)])
def test_causal_conv_kernel(activation, bias, init, L):
    from core.ops import causal_conv1d, causal_conv1d_ref

    g = torch.Generator().manual_seed(L)
    x = torch.randn(2, 3, L, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    h0 = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True) if init else None
    inputs = [t for t in (x, w, b, h0) if t is not None]
    out = causal_conv1d(x, w, b, activation=activation, initial_states=h0, backend="triton")
    ref = causal_conv1d_ref(x, w, b, activation=activation, initial_states=h0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the kernel accumulates in fp32
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, gy)
    exp = torch.autograd.grad(ref, inputs, gy)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [None, "inv"])
def test_packed_selective_scan(groups):
    # seq_idx: every sequence as if run alone (values and gradients), boundaries on/off chunk edges
    from .varlen_util import check_ss_packed
    check_ss_packed("triton", rows=([3, 5, 1], [4, 5]), d=2, N=2, groups=groups)


def test_packed_ssd_and_conv():
    from .varlen_util import check_conv_packed, check_ssd_packed
    check_ssd_packed("triton", rows=([3, 5, 1], [4, 5]), H=2, P=2, G=1, N=2)
    check_conv_packed("triton", rows=([3, 5, 1], [4, 5]), rtol=1e-5, atol=1e-5)
    check_conv_packed("triton", rows=([1, 2, 6], [9]), activation=None, init=False, width=3,
                      rtol=1e-5, atol=1e-5)


def test_packed_layers_on_triton():
    # Mamba2 (SSD + conv kernels) and Mamba (selective scan) on packed rows == each sequence alone
    from core.layers import Mamba, Mamba2, set_backend
    from core.ops import pack_sequences
    torch.manual_seed(0)
    seqs = [torch.randn(n, 4, dtype=torch.float64, requires_grad=True) for n in (3, 1, 5)]
    x, cu = pack_sequences(seqs)
    for m in (Mamba2(4, d_state=2, headdim=2, expand=1, chunk_size=4), Mamba(4, d_state=2, expand=1)):
        m = set_backend(m.double(), "triton")
        y = m(x, cu_seqlens=cu)
        alone = torch.cat([set_backend(m, "reference")(s[None])[0] for s in seqs])
        set_backend(m, "triton")
        torch.testing.assert_close(y[0], alone, rtol=1e-5, atol=1e-6)
        ga = torch.autograd.grad(y.sum(), seqs + [m.in_proj.weight])
        gb = torch.autograd.grad(alone.sum(), seqs + [m.in_proj.weight])
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
