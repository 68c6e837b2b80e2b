"""Companion-matrix SSMs (SpaceTime, Zhang et al. 2023): FFT-convolution layer and closed-loop decoder.

Each of ``d_model`` channels is a single-input single-output SSM with state size N:
    h_t = A h_{t-1} + b u_t,   y_t = c^T h_t (+ D u_t),   A = S + a e_N^T
where S is the N x N down-shift matrix and ``a`` the learned last column. A companion matrix
can express AR/ARIMA-style dynamics (its last column holds the characteristic polynomial).

Kernel K_k = c^T A^k b (k < L) in O((N + L) log): the DFT of the truncated kernel equals
c~^T (I - w A)^{-1} b at the L-th roots of unity w, with c~^T = c^T (I - A^L); A = S + a e_N^T is
shift-plus-rank-one, so Sherman-Morrison turns (I - w A)^{-1} into polynomials in w whose
coefficients are cross-correlations of a, b, c, evaluated at all roots by one FFT each.

Stability: sum_i |a_i| < 1 keeps every eigenvalue of A inside the unit circle, so ``a`` is
rescaled onto that l1-ball (radius ``max_l1``) when it leaves it.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


def companion_matrix(a: Tensor) -> Tensor:
    """(..., N) last columns -> (..., N, N) companion matrices S + a e_N^T."""
    N = a.shape[-1]
    S = torch.diag(torch.ones(N - 1, dtype=a.dtype, device=a.device), -1)
    A = S.expand(*a.shape[:-1], N, N).clone()
    A[..., :, -1] = A[..., :, -1] + a
    return A


def _poly_at_roots(coef: Tensor, L: int) -> Tensor:
    """Evaluate sum_k coef[..., k] w^k at w_j = exp(-2 pi i j / L): an L-point FFT (folding k mod L)."""
    K = coef.shape[-1]
    if K > L:  # w^k depends on k mod L only
        pad = (-K) % L
        coef = torch.nn.functional.pad(coef, (0, pad)).reshape(*coef.shape[:-1], -1, L).sum(-2)
    return torch.fft.fft(coef, n=L)


def _xcorr(x: Tensor, y: Tensor) -> Tensor:
    """r_k = sum_j x[..., j + k] y[..., j] for k = 0..N-1 (broadcasting leading dims)."""
    N = x.shape[-1]
    X, Y = torch.fft.rfft(x, n=2 * N), torch.fft.rfft(y, n=2 * N)
    return torch.fft.irfft(X * Y.conj(), n=2 * N)[..., :N]


def companion_kernel(a: Tensor, b: Tensor, c: Tensor, L: int) -> Tensor:
    """K[..., k] = c^T A^k b for k < L, A = companion_matrix(a).

    a, b: (H, N); c: (H, N) or (H, P, N) for P outputs per channel. Returns (H, L) or (H, P, L),
    real, in the input dtype (computed in complex of the same precision).
    """
    multi = c.dim() == a.dim() + 1
    if not multi:
        c = c.unsqueeze(-2)
    A = companion_matrix(a)                                       # (H, N, N)
    AL = torch.linalg.matrix_power(A, L)
    ct = c - c @ AL                                               # c~ = c (I - A^L): (H, P, N)
    a_, b_ = a.unsqueeze(-2), b.unsqueeze(-2)                     # (H, 1, N)
    P_cb = _poly_at_roots(_xcorr(ct, b_), L)                      # c~^T M^-1 b
    P_ca = _poly_at_roots(_xcorr(ct, a_), L)                      # c~^T M^-1 a
    Q_b = _poly_at_roots(b_.flip(-1), L)                          # e_N^T M^-1 b
    Q_a = _poly_at_roots(a_.flip(-1), L)                          # e_N^T M^-1 a
    w = torch.exp(-2j * math.pi * torch.arange(L, device=a.device, dtype=a.dtype) / L)
    G = P_cb + w * P_ca * Q_b / (1 - w * Q_a)
    K = torch.fft.ifft(G, n=L).real
    return K if multi else K.squeeze(-2)


def fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution y_t = sum_{k<=t} K_k u_{t-k}. u: (B, L, H); K: (H, L). Returns (B, L, H)."""
    L = u.shape[1]
    n = 2 * L
    U = torch.fft.rfft(u.transpose(1, 2), n=n)
    Kf = torch.fft.rfft(K, n=n)
    # contiguous: the elementwise ops and matmuls that follow run ~5x slower on the strided view
    return torch.fft.irfft(U * Kf, n=n)[..., :L].transpose(1, 2).contiguous()


class _CompanionParams(nn.Module):
    def __init__(self, d_model: int, d_state: int, max_l1: float, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.max_l1 = d_model, d_state, max_l1
        self.a = nn.Parameter(0.1 * torch.randn(d_model, d_state, **kw) / math.sqrt(d_state))
        self.b = nn.Parameter(torch.randn(d_model, d_state, **kw) / math.sqrt(d_state))
        self.c = nn.Parameter(torch.randn(d_model, d_state, **kw) / math.sqrt(d_state))

    def a_stable(self) -> Tensor:
        """``a`` projected into the l1-ball of radius max_l1 (< 1 keeps A stable)."""
        n = self.a.abs().sum(-1, keepdim=True)
        return self.a * torch.clamp(self.max_l1 / (n + 1e-12), max=1.0)

    def A(self) -> Tensor:
        """(H, N, N) transition matrices."""
        return companion_matrix(self.a_stable())


class CompanionSSM(_CompanionParams):
    """Multi-channel companion SSM applied by FFT convolution: (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 64, max_l1: float = 0.99, skip: bool = True,
                 device=None, dtype=None):
        super().__init__(d_model, d_state, max_l1, device, dtype)
        self.D = nn.Parameter(torch.randn(d_model, device=device, dtype=dtype)) if skip else None

    def kernel(self, L: int) -> Tensor:
        """(d_model, L) kernel c^T A^k b."""
        return companion_kernel(self.a_stable(), self.b, self.c, L)

    def forward(self, u: Tensor) -> Tensor:
        y = fft_conv(u, self.kernel(u.shape[1]))
        return y if self.D is None else y + u * self.D

    def step(self, u_t: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
        """One recurrent step: u_t (B, H), state (B, H, N) -> (y_t (B, H), new state)."""
        state = torch.einsum("hnm,bhm->bhn", self.A(), state) + self.b * u_t.unsqueeze(-1)
        y = (state * self.c).sum(-1)
        return (y if self.D is None else y + self.D * u_t), state


class ClosedLoopCompanionSSM(_CompanionParams):
    """SpaceTime's closed-loop decoder: forecasts any horizon by generating its own inputs.

    Over the lookback u (B, L, H) it runs open-loop (h_t = A h_{t-1} + b u_t); then each future
    input is predicted from the state, u^_{t+1} = k^T h_t, so h_{t+1} = (A + b k^T) h_t and
    y_{t+m} = c^T (A + b k^T)^m h_t, computed for all m at once by repeated squaring.
    """

    def __init__(self, d_model: int, d_state: int = 64, max_l1: float = 0.99, device=None, dtype=None):
        super().__init__(d_model, d_state, max_l1, device, dtype)
        self.k = nn.Parameter(0.1 * torch.randn(d_model, d_state, device=device, dtype=dtype)
                              / math.sqrt(d_state))

    def last_state(self, u: Tensor) -> Tensor:
        """State after the lookback: h_{L-1} = sum_j A^j b u_{L-1-j}. u: (B, L, H) -> (B, H, N)."""
        L, N = u.shape[1], self.d_state
        eye = torch.eye(N, dtype=u.dtype, device=u.device).expand(self.d_model, N, N)
        Kst = companion_kernel(self.a_stable(), self.b, eye, L)     # (H, N, L): (A^j b)_n
        return torch.einsum("hnl,blh->bhn", Kst.flip(-1), u)      # flip the small kernel, not u

    def closed_loop_matrix(self) -> Tensor:
        """(H, N, N) A + b k^T."""
        return self.A() + self.b.unsqueeze(-1) * self.k.unsqueeze(-2)

    def readout_rows(self, horizon: int) -> Tensor:
        """(H, horizon, N): row m-1 is c^T (A + b k^T)^m, so y_{L-1+m} = row . h_{L-1}."""
        Abar = self.closed_loop_matrix()
        R = (self.c.unsqueeze(-2) @ Abar)                           # (H, 1, N): c^T Abar^1
        P = Abar                                                    # Abar^(rows so far)
        while R.shape[1] < horizon:                                 # rows c^T Abar^m, doubling
            R = torch.cat([R, R @ P], dim=1)
            P = P @ P
        return R[:, :horizon]

    def forward(self, u: Tensor, horizon: int) -> Tensor:
        """u: (B, L, H) lookback -> (B, horizon, H) outputs y_{L-1+m}, m = 1..horizon."""
        return torch.einsum("hmn,bhn->bmh", self.readout_rows(horizon), self.last_state(u))

    def forward_projected(self, u: Tensor, horizon: int, weight: Tensor, bias: Optional[Tensor] = None,
                          state_dropout: Optional[nn.Module] = None) -> Tensor:
        """``F.linear(forward(u, horizon), weight, bias)`` without the (B, horizon, H) intermediate:
        the read-out (P, H) is folded into the rows first. u: (B, L, H) -> (B, horizon, P).
        ``state_dropout`` (if given) is applied to the final state (B, H, N)."""
        h = self.last_state(u)
        if state_dropout is not None:
            h = state_dropout(h)
        R = self.readout_rows(horizon)                              # (H, M, N)
        W = torch.einsum("ph,hmn->hnmp", weight, R).reshape(-1, horizon * weight.shape[0])  # (H*N, M*P)
        y = (h.reshape(h.shape[0], -1) @ W).view(h.shape[0], horizon, weight.shape[0])
        return y if bias is None else y + bias

    @torch.no_grad()
    def forecast_recurrent(self, u: Tensor, horizon: int) -> Tensor:
        """Step-by-step open-loop recurrence fed with its own predicted inputs (the oracle for forward)."""
        B, L, H = u.shape
        A = self.A()
        h = torch.zeros(B, H, self.d_state, dtype=u.dtype, device=u.device)
        for t in range(L):
            h = torch.einsum("hnm,bhm->bhn", A, h) + self.b * u[:, t].unsqueeze(-1)
        ys = []
        for _ in range(horizon):
            u_hat = (h * self.k).sum(-1)                            # predicted next input
            h = torch.einsum("hnm,bhm->bhn", A, h) + self.b * u_hat.unsqueeze(-1)
            ys.append((h * self.c).sum(-1))
        return torch.stack(ys, 1)
