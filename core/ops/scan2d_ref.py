"""Sequential float64 references for :mod:`core.ops.scan2d` (test oracles, any size, slow)."""
from __future__ import annotations

import torch
from torch import Tensor


def scan1d_ref(u: Tensor, a: Tensor, dim: int = 1, reverse: bool = False) -> Tensor:
    """h[t] = a[t] h[t-1] + u[t] by a Python loop over t, in float64. Returns u's dtype."""
    dtype = u.dtype
    u, a = u.double(), a.double().expand_as(u)
    u, a = u.movedim(dim, 0), a.movedim(dim, 0)
    order = range(u.shape[0] - 1, -1, -1) if reverse else range(u.shape[0])
    h = torch.zeros_like(u[0])
    out = [None] * u.shape[0]
    for t in order:
        h = a[t] * h + u[t]
        out[t] = h
    return torch.stack(out, 0).movedim(0, dim).to(dtype)


def scan2d_ref(u: Tensor, a: Tensor, c: Tensor, reverse_variates: bool = False) -> Tensor:
    """h[t,v] = a[t,v] h[t-1,v] + c[t,v] h[t,v-1] + u[t,v] by a double loop, in float64.

    u, a, c: (B, T, V, *S). Returns (B, T, V, *S) in u's dtype.
    """
    dtype = u.dtype
    u, a, c = u.double(), a.double().expand_as(u), c.double().expand_as(u)
    B, T, V = u.shape[:3]
    vs = range(V - 1, -1, -1) if reverse_variates else range(V)
    step = 1 if reverse_variates else -1  # index of the previous variate in scan order
    h = [[None] * V for _ in range(T)]
    zero = torch.zeros_like(u[:, 0, 0])
    for t in range(T):
        for v in vs:
            up = h[t - 1][v] if t > 0 else zero
            pv = v + step
            left = h[t][pv] if 0 <= pv < V else zero
            h[t][v] = a[:, t, v] * up + c[:, t, v] * left + u[:, t, v]
    return torch.stack([torch.stack(row, 1) for row in h], 1).to(dtype)
