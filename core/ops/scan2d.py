"""Parallel scans for linear recurrences in 1-D and 2-D (Chimera-style 2-D SSMs).

1-D:  h[t] = a[t] * h[t-1] + u[t]                         (``scan1d``)
2-D:  h[t, v] = a[t, v] * h[t-1, v] + c[t, v] * h[t, v-1] + u[t, v]   (``scan2d``)
with h[-1, :] = h[:, -1] = 0 and every product elementwise (diagonal transitions), so
``a``, ``c``, ``u`` carry any trailing channel/state dimensions.

``scan1d`` is a Hillis-Steele prefix scan: ceil(log2 T) vectorised steps, only multiplies and
adds (no log/exp tricks, so exact in any sign and stable for |a| near 0), differentiable by
autograd. ``scan2d`` has two parallel forms:

- ``method="variates"``: one parallel time scan per variate, feeding h[:, v-1] into the input of
  variate v: depth V * log T, memory O(T V S). Good for a handful of variates.
- ``method="matrix"``: fully parallel. Along v the recurrence at fixed t is
  (I - diag(c_t) S) h_t = a_t * h_{t-1} + u_t with S the shift over variates, so
  h_t = M_t h_{t-1} + w_t with M_t = (I - diag(c_t) S)^{-1} diag(a_t), a lower-triangular V x V
  matrix whose entries are products of c. The time scan then composes these matrices: depth
  log T, memory O(T V^2 S). Good for long T and few variates.

The float64 sequential reference is :func:`core.ops.scan2d_ref.scan2d_ref`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _shift(x: Tensor, k: int, dim: int, fill: float) -> Tensor:
    """x shifted by k along dim (x[t-k]), the first k entries set to ``fill``."""
    pads = [0, 0] * (x.dim() - 1 - dim) + [k, 0]
    return torch.nn.functional.pad(x.narrow(dim, 0, x.shape[dim] - k), pads, value=fill)


def scan1d(u: Tensor, a: Tensor, dim: int = 1, reverse: bool = False) -> Tensor:
    """Inclusive parallel scan of h[t] = a[t] * h[t-1] + u[t] along ``dim``.

    u, a: same shape (a broadcastable to u), e.g. (B, T, D, N). Returns h with u's shape.
    ``reverse`` scans from the end: h[t] = a[t] * h[t+1] + u[t].
    """
    dim = dim % u.dim()
    a = a.expand_as(u)
    if reverse:
        u, a = u.flip(dim), a.flip(dim)
    T = u.shape[dim]
    h, A = u, a
    k = 1
    while k < T:
        # compose each element with the one k steps back: (A, h) <- (A*A', A*h' + h)
        h = h + A * _shift(h, k, dim, 0.0)
        A = A * _shift(A, k, dim, 1.0)
        k *= 2
    return h.flip(dim) if reverse else h


def scan2d(u: Tensor, a: Tensor, c: Tensor, reverse_variates: bool = False,
           method: str = "variates") -> Tensor:
    """Parallel 2-D scan h[t,v] = a[t,v] h[t-1,v] + c[t,v] h[t,v-1] + u[t,v].

    u, a, c: (B, T, V, *S) (a, c broadcastable to u). Returns h: (B, T, V, *S).
    ``reverse_variates`` runs the variate recurrence from the last variate to the first
    (h[t,v] depends on h[t,v+1]); time always runs forward.
    """
    a, c = a.expand_as(u), c.expand_as(u)
    if reverse_variates:
        u, a, c = u.flip(2), a.flip(2), c.flip(2)
    if method == "variates":
        h = _scan2d_variates(u, a, c)
    elif method == "matrix":
        h = _scan2d_matrix(u, a, c)
    else:
        raise ValueError(f"unknown scan2d method {method!r}")
    return h.flip(2) if reverse_variates else h


def _scan2d_variates(u: Tensor, a: Tensor, c: Tensor) -> Tensor:
    outs = []
    prev = None
    for v in range(u.shape[2]):  # loop over variates only; time is a log-depth parallel scan
        rhs = u[:, :, v] if prev is None else u[:, :, v] + c[:, :, v] * prev
        prev = scan1d(rhs, a[:, :, v], dim=1)
        outs.append(prev)
    return torch.stack(outs, dim=2)


def _scan2d_matrix(u: Tensor, a: Tensor, c: Tensor) -> Tensor:
    B, T, V = u.shape[:3]
    # move variates last: (B, T, *S, V)
    perm = [0, 1] + list(range(3, u.dim())) + [2]
    u_, a_, c_ = u.permute(perm), a.permute(perm), c.permute(perm)
    # L^{-1}[i, j] = prod_{k=j+1..i} c_k for i >= j (inverse of I - diag(c) S), via log-free cumprod
    # of c on the strictly-lower part: P[i, j] = cumprod over k in (j, i].
    cc = c_.unsqueeze(-1).expand(*c_.shape, V)            # (..., V_i, V_j): c at row i
    idx = torch.arange(V, device=u.device)
    strict = idx[:, None] > idx[None, :]                  # k > j
    fac = torch.where(strict, cc, torch.ones_like(cc))    # factor c_i where i > j, else 1
    Linv = torch.cumprod(fac, dim=-2)                     # running product down rows
    Linv = Linv * (idx[:, None] >= idx[None, :])          # lower triangle only
    w = (Linv @ u_.unsqueeze(-1)).squeeze(-1)             # (B, T, *S, V)
    M = Linv * a_.unsqueeze(-2)                           # Linv @ diag(a)
    # Hillis-Steele over time with matrix transitions: (M, w) <- (M M', M w' + w)
    k = 1
    eye = torch.eye(V, dtype=u.dtype, device=u.device).expand(M.shape)
    while k < T:
        w_prev = _shift(w, k, 1, 0.0)
        M_prev = torch.cat([eye.narrow(1, 0, k), M.narrow(1, 0, T - k)], dim=1)
        w = w + (M @ w_prev.unsqueeze(-1)).squeeze(-1)
        M = M @ M_prev
        k *= 2
    inv = [0] * u.dim()
    for i, p in enumerate(perm):
        inv[p] = i
    return w.permute(inv)
