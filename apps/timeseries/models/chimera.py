"""Chimera-style forecaster (Behrouz et al., NeurIPS 2024): input-dependent 2-D SSM over time x variates.

Tokens: each variate's lookback is cut into patches (``patch_len``; 1 = raw time steps) and
embedded, giving a grid (B, T, V, d_model). Each block runs a selective 2-D SSM on the grid

    h[t, v] = a[t, v] * h[t-1, v] + c[t, v] * h[t, v-1] + dt[t, v] * B[t, v] * x[t, v]
    y[t, v] = <C[t, v], h[t, v]> + D * x[t, v]

with a = exp(dt * A) (A < 0, per channel and state) along time and an input-dependent
variate coupling c = sigmoid(.) * (1 - a), so a + c < 1 and the 2-D recurrence stays bounded.
Two heads differ in their discretisation: the trend head's step dt starts small (long memory,
slow progression), the seasonal head's step starts large (fast, local patterns). Variates have no
natural order, so each head scans them in both directions (separate couplings) and sums.
All of it is computed by :func:`core.ops.scan2d.scan2d` (log-depth parallel scan over time),
never by a Python loop over time. Output gate (SiLU), projection, residual; a flatten head
maps each variate's T x d tokens to the horizon.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.ops.scan2d import scan2d

from .common import RevIN, patchify


class _SSM2DHeads(nn.Module):
    """Selective 2-D SSM heads on (B, T, V, E), one per step-size range, computed in one scan.

    Head i owns channels [i*E, (i+1)*E) of the scan with its own dt range; the reverse-variate
    direction is batched with the forward one (flipped input), so a block costs one scan2d call.
    """

    def __init__(self, d_inner: int, d_state: int, dt_ranges, bidirectional: bool):
        super().__init__()
        self.n_heads, self.bidirectional = len(dt_ranges), bidirectional
        E, H = d_inner, len(dt_ranges)
        self.dt_proj = nn.Linear(E, H * E)
        dt = torch.cat([torch.exp(torch.rand(E) * (math.log(hi) - math.log(lo)) + math.log(lo))
                        for lo, hi in dt_ranges])
        with torch.no_grad():  # softplus^-1(dt): each head's steps start in its own range
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.dt_proj.weight.mul_(0.1)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(H * E, 1))
        self.BC = nn.Linear(E, 2 * H * d_state, bias=False)
        n_dir = 2 if bidirectional else 1
        self.couple = nn.Linear(E, n_dir * H * E)                 # variate coupling gates, per direction
        nn.init.constant_(self.couple.bias, -1.0)
        self.D = nn.Parameter(torch.ones(E))

    def forward(self, x: Tensor, method: str = "variates") -> Tensor:
        """x: (B, T, V, E) -> (B, T, V, E), the heads summed."""
        B, T, V, E = x.shape
        H, N = self.n_heads, self.A_log.shape[1]
        gates = torch.sigmoid(self.couple(x))
        if self.bidirectional:  # second direction = first on flipped variates, batched
            g1, g2 = gates.chunk(2, -1)
            xs, gates = torch.cat([x, x.flip(2)]), torch.cat([g1, g2.flip(2)])
        else:
            xs = x
        dt = F.softplus(self.dt_proj(xs)).view(*xs.shape[:3], H, E)  # (B', T, V, H, E)
        A = -torch.exp(self.A_log).view(H, E, N)
        a = torch.exp(dt.unsqueeze(-1) * A)                       # (B', T, V, H, E, N) in (0, 1)
        Bm, Cm = self.BC(xs).view(*xs.shape[:3], H, 2, N).unbind(-2)  # (B', T, V, H, N)
        u = (dt * xs.unsqueeze(-2)).unsqueeze(-1) * Bm.unsqueeze(-2)
        c = gates.view(*xs.shape[:3], H, E).unsqueeze(-1) * (1 - a)  # a + c < 1
        h = scan2d(u, a, c, method=method)
        y = (h * Cm.unsqueeze(-2)).sum((-1, -3))                  # sum state and heads: (B', T, V, E)
        if self.bidirectional:
            y = y[:B] + y[B:].flip(2)
        return y + self.D * x


class Chimera2DBlock(nn.Module):
    """Pre-norm residual block: in-proj -> {trend, seasonal} 2-D SSM heads -> SiLU gate -> out-proj."""

    def __init__(self, d_model: int, d_state: int = 8, expand: int = 2, dropout: float = 0.1,
                 bidirectional: bool = True, trend_dt=(1e-3, 1e-2), seasonal_dt=(1e-1, 1.0)):
        super().__init__()
        E = expand * d_model
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * E)
        self.ssm = _SSM2DHeads(E, d_state, [trend_dt, seasonal_dt], bidirectional)
        self.out_proj = nn.Linear(E, d_model)
        self.drop = nn.Dropout(dropout)
        self.method = "variates"

    def forward(self, z: Tensor) -> Tensor:
        """z: (B, T, V, d_model) -> same."""
        x, gate = self.in_proj(self.norm(z)).chunk(2, -1)
        return z + self.drop(self.out_proj(self.ssm(x, self.method) * F.silu(gate)))


class Chimera(nn.Module):
    """forward(x_enc (B, L, C)) -> (B, H, c_out); c_out < C forecasts the last c_out channels."""

    def __init__(self, seq_len: int, pred_len: int, enc_in: int, c_out: int, d_model: int = 32,
                 d_state: int = 4, expand: int = 1, n_layers: int = 1, patch_len: int = 8,
                 dropout: float = 0.2, head_dropout: float = 0.1, bidirectional: bool = True,
                 linear_skip: bool = True, revin: bool = True, zero_init_head: bool = False):
        super().__init__()
        self.pred_len, self.c_out, self.patch_len = pred_len, c_out, patch_len
        self.revin = RevIN(enc_in) if revin else None
        T = math.ceil(seq_len / patch_len)
        self.embed = nn.Linear(patch_len, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(T, 1, d_model))
        self.var_emb = nn.Parameter(0.02 * torch.randn(1, enc_in, d_model))  # tells variates apart
        self.blocks = nn.ModuleList([Chimera2DBlock(d_model, d_state, expand, dropout, bidirectional)
                                     for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(T * d_model, pred_len)
        self.head_drop = nn.Dropout(head_dropout)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Linear(seq_len, pred_len) if linear_skip else None
        if self.skip is not None:
            nn.init.constant_(self.skip.weight, 1.0 / seq_len)
            nn.init.zeros_(self.skip.bias)
            if zero_init_head:  # start as the linear forecaster; the SSM path learns a residual
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)
        self.linear_only = False  # True: the skip path alone (see SpaceTime)

    def set_scan_method(self, method: str) -> None:
        """'variates' (default) or 'matrix' (fully parallel; see core.ops.scan2d)."""
        for b in self.blocks:
            b.method = method

    def forward(self, x_enc: Tensor) -> Tensor:
        B, L, C = x_enc.shape
        x = self.revin.norm(x_enc) if self.revin is not None else x_enc
        s = self.skip(x.transpose(1, 2)).transpose(1, 2) if self.skip is not None else None  # (B, H, C)
        if self.linear_only:
            y = s
        else:
            p = patchify(x, self.patch_len)                           # (B, C, T, P)
            z = self.drop(self.embed(p).transpose(1, 2) + self.pos + self.var_emb)  # (B, T, V, d)
            for blk in self.blocks:
                z = blk(z)
            z = self.norm(z).permute(0, 2, 1, 3).flatten(2)           # (B, V, T*d)
            y = self.head(self.head_drop(z)).transpose(1, 2)          # (B, H, C)
            if s is not None:
                y = y + s
        y = y[..., -self.c_out:]
        return self.revin.denorm(y) if self.revin is not None else y
