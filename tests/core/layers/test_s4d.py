"""S4D: inits, ZOH kernel, FFT convolution == recurrence (float64, forward and gradients),
layouts and streaming."""
import math

import pytest
import torch

from core.layers import S4D, InferenceParams


def make(init="lin", seed=0, **kw):
    torch.manual_seed(seed)
    m = S4D(6, d_state=8, init=init, **kw).double()
    with torch.no_grad():
        m.kernel.log_dt.add_(1.5)  # larger steps: the kernel decays within the test lengths
    return m


def recurrent(m, u):
    """Sequential ZOH recurrence x_t = exp(dt A) x_{t-1} + (exp(dt A) - 1)/A u_t, y = 2 Re(C x) + D u,
    then GELU and the GLU output; u (B, L, H)."""
    k = m.kernel
    dt = torch.exp(k.log_dt)[:, None]
    A = torch.complex(-torch.exp(k.log_A_real), k.A_imag)
    C = torch.view_as_complex(k.C)
    s = torch.zeros(u.shape[0], *A.shape, dtype=A.dtype)
    ys = []
    for t in range(u.shape[1]):
        s = torch.exp(dt * A) * s + (torch.exp(dt * A) - 1) / A * u[:, t, :, None]
        ys.append(2 * (C * s).sum(-1).real + m.D * u[:, t])
    y = torch.nn.functional.gelu(torch.stack(ys, -1))          # (B, H, L)
    return m.output_linear(y).transpose(1, 2)


def test_inits():
    N = 8
    lin, inv, real = (S4D(3, d_state=N, init=i).kernel for i in ("lin", "inv", "real"))
    n = torch.arange(N // 2, dtype=torch.float32)
    for k in (lin, inv):
        torch.testing.assert_close(torch.exp(k.log_A_real), torch.full((3, N // 2), 0.5))
    torch.testing.assert_close(lin.A_imag, (math.pi * n).expand(3, -1))
    torch.testing.assert_close(inv.A_imag, (N / math.pi * (N / (2 * n + 1) - 1)).expand(3, -1))
    torch.testing.assert_close(torch.exp(real.log_A_real), (n + 1).expand(3, -1))
    assert not real.A_imag.requires_grad and torch.equal(real.A_imag, torch.zeros(3, N // 2))
    dt = torch.exp(S4D(2000, d_state=2).kernel.log_dt)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert lin.C.shape == (3, N // 2, 2) and lin.log_dt._no_weight_decay
    with pytest.raises(ValueError, match="init"):
        S4D(3, init="legs")


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_kernel_formula(init):
    k = make(init).kernel
    K = k(9)
    dt = torch.exp(k.log_dt)
    A = torch.complex(-torch.exp(k.log_A_real), k.A_imag)
    C = torch.view_as_complex(k.C)
    for ell in (0, 1, 8):
        ref = 2 * (C * (torch.exp(dt[:, None] * A) - 1) / A * torch.exp(dt[:, None] * A * ell)).sum(-1).real
        torch.testing.assert_close(K[:, ell], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
@pytest.mark.parametrize("L", [1, 2, 11])
def test_fft_equals_recurrence_with_grads(init, L):
    m = make(init)
    u = torch.randn(2, L, 6, dtype=torch.float64, requires_grad=True)
    y = m(u)
    y_ref = recurrent(m, u)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    params = [u] + [p for p in m.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad((y * g).sum(), params), torch.autograd.grad((y_ref * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_transposed_layout():
    m = make()
    u = torch.randn(2, 7, 6, dtype=torch.float64)
    mt = make(transposed=True)
    mt.load_state_dict(m.state_dict())
    torch.testing.assert_close(mt(u.transpose(1, 2)), m(u).transpose(1, 2))


@pytest.mark.parametrize("transposed", [False, True])
def test_step_equals_forward(transposed):
    m = make("inv", transposed=transposed)
    u = torch.randn(2, 9, 6, dtype=torch.float64)
    uu = u.transpose(1, 2) if transposed else u
    with torch.no_grad():
        y = m(uu)
        (state,) = m.allocate_inference_cache(2, 9)
        assert state.shape == (2, 6, 4) and state.dtype == torch.complex128
        outs = []
        for t in range(9):
            out, state = m.step(uu[..., t:t + 1] if transposed else uu[:, t:t + 1], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, -1 if transposed else 1), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks", [(4, 1, 4), (1, 8), (3, 3, 3)])
def test_chunked_prefill_then_step(chunks):
    m = make("lin", layer_idx=2)
    u = torch.randn(2, 9, 6, dtype=torch.float64)
    params = InferenceParams(9, 2)
    with torch.no_grad():
        y = m(u)
        outs, t = [], 0
        for c in chunks:
            outs.append(m(u[:, t:t + c], inference_params=params))
            params.seqlen_offset += c
            t += c
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


def test_dropout_tied_over_time_and_off_in_eval():
    m = S4D(16, d_state=4, dropout=0.5)
    u = torch.randn(2, 5, 16)
    m.eval()
    torch.testing.assert_close(m(u), m(u))
    assert isinstance(m.dropout, torch.nn.Dropout1d)
