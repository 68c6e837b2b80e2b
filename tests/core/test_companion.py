"""core.layers.companion: FFT kernel vs explicit powers, conv vs recurrence, closed loop vs open loop."""
from __future__ import annotations

import pytest
import torch

from core.layers.companion import (ClosedLoopCompanionSSM, CompanionSSM, companion_kernel, companion_matrix,
                                   fft_conv)


def _powers_kernel(a, b, c, L):
    """K_k = c^T A^k b by explicit matrix powers (float64)."""
    A = companion_matrix(a.double())
    out, v = [], b.double().unsqueeze(-1)
    for _ in range(L):
        out.append((c.double().unsqueeze(-2) @ v)[..., 0, 0])
        v = A @ v
    return torch.stack(out, -1)


def test_companion_matrix_structure():
    a = torch.tensor([[0.1, 0.2, 0.3]])
    A = companion_matrix(a)[0]
    assert torch.equal(A, torch.tensor([[0, 0, 0.1], [1, 0, 0.2], [0, 1, 0.3]]))


@pytest.mark.parametrize("N,L", [(4, 1), (4, 3), (8, 8), (16, 50), (3, 97)])
def test_fft_kernel_equals_explicit_powers(N, L):
    g = torch.Generator().manual_seed(N * L)
    a = 0.3 * torch.randn(5, N, generator=g, dtype=torch.float64) / N ** 0.5
    b, c = torch.randn(2, 5, N, generator=g, dtype=torch.float64)
    torch.testing.assert_close(companion_kernel(a, b, c, L), _powers_kernel(a, b, c, L), rtol=1e-9, atol=1e-10)


def test_kernel_gradients_match_explicit_powers():
    g = torch.Generator().manual_seed(0)
    params = [0.2 * torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    grads = []
    for fn in (companion_kernel, _powers_kernel):
        leaves = [p.clone().requires_grad_(True) for p in params]
        (fn(*leaves, 20) ** 2).sum().backward()
        grads.append([l.grad for l in leaves])
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_fft_conv_layer_equals_recurrent_steps():
    torch.manual_seed(0)
    layer = CompanionSSM(6, d_state=8).double()
    u = torch.randn(2, 30, 6, dtype=torch.float64)
    y = layer(u)
    state = torch.zeros(2, 6, 8, dtype=torch.float64)
    steps = []
    for t in range(u.shape[1]):
        y_t, state = layer.step(u[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(y, torch.stack(steps, 1), rtol=1e-10, atol=1e-10)
    K = layer.kernel(30)
    torch.testing.assert_close(fft_conv(u, K), y - u * layer.D)


@pytest.mark.parametrize("L,H", [(1, 1), (24, 1), (24, 5), (96, 96), (17, 130)])
def test_closed_loop_decoder_equals_open_loop_with_fed_back_inputs(L, H):
    torch.manual_seed(L + H)
    dec = ClosedLoopCompanionSSM(4, d_state=8).double()
    with torch.no_grad():
        dec.k.mul_(3.0)   # a feedback strong enough to matter
    u = torch.randn(3, L, 4, dtype=torch.float64)
    torch.testing.assert_close(dec(u, H), dec.forecast_recurrent(u, H), rtol=1e-9, atol=1e-10)


def test_stability_projection_keeps_eigenvalues_inside_unit_circle():
    layer = CompanionSSM(4, d_state=6)
    with torch.no_grad():
        layer.a.mul_(100.0)
    eig = torch.linalg.eigvals(layer.A().double()).abs()
    assert eig.max() < 1.0
