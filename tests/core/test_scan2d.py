"""core.ops.scan2d: parallel 1-D / 2-D scans against the float64 sequential references."""
from __future__ import annotations

import pytest
import torch

from core.ops.scan2d import scan1d, scan2d
from core.ops.scan2d_ref import scan1d_ref, scan2d_ref


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*shape, generator=g, dtype=dtype)
    a = torch.rand(*shape, generator=g, dtype=dtype) * 1.1 - 0.05   # includes a few negative / > 1 steps
    c = torch.rand(*shape, generator=g, dtype=dtype) * 0.6
    return u, a, c


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan1d_matches_reference(T, reverse):
    u, a, _ = _inputs((3, T, 4, 2), torch.float64)
    torch.testing.assert_close(scan1d(u, a, dim=1, reverse=reverse), scan1d_ref(u, a, dim=1, reverse=reverse),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["variates", "matrix"])
@pytest.mark.parametrize("T,V", [(1, 1), (5, 1), (1, 6), (9, 4), (17, 7)])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan2d_values_float64(method, T, V, reverse):
    u, a, c = _inputs((2, T, V, 3, 2), torch.float64, seed=T * 10 + V)
    torch.testing.assert_close(scan2d(u, a, c, reverse, method), scan2d_ref(u, a, c, reverse),
                               rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", ["variates", "matrix"])
def test_scan2d_float32_close_to_float64_reference(method):
    u, a, c = _inputs((2, 24, 7, 8), torch.float32, seed=3)
    ref = scan2d_ref(u, a, c).double()
    out = scan2d(u, a, c, method=method).double()
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()


@pytest.mark.parametrize("method", ["variates", "matrix"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan2d_gradients_match_reference(method, reverse):
    u, a, c = _inputs((2, 6, 4, 3), torch.float64, seed=7)
    w = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    grads = []
    for fn in (lambda *x: scan2d(*x, reverse_variates=reverse, method=method),
               lambda *x: scan2d_ref(*x, reverse_variates=reverse)):
        leaves = [t.clone().requires_grad_(True) for t in (u, a, c)]
        (fn(*leaves) * w).sum().backward()
        grads.append([l.grad for l in leaves])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_scan2d_gradcheck():
    u, a, c = _inputs((1, 4, 3, 2), torch.float64, seed=11)
    leaves = tuple(t.requires_grad_(True) for t in (u, a, c))
    assert torch.autograd.gradcheck(lambda *x: scan2d(*x, method="variates"), leaves)
    assert torch.autograd.gradcheck(lambda *x: scan2d(*x, method="matrix"), leaves)


def test_broadcast_transitions():
    u, _, _ = _inputs((2, 5, 3, 4), torch.float64)
    a = torch.full((1, 5, 3, 1), 0.9, dtype=torch.float64)
    c = torch.full((1, 5, 3, 1), 0.05, dtype=torch.float64)
    torch.testing.assert_close(scan2d(u, a, c), scan2d_ref(u, a, c))
