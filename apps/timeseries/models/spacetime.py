"""SpaceTime (Zhang et al., ICLR 2023): companion-matrix SSM encoder + closed-loop SSM decoder.

Layout: RevIN -> input embedding (causal linear map of the last ``embed_lags`` values) ->
``n_layers`` encoder blocks (companion SSM by FFT convolution, GELU, linear, residual) ->
closed-loop companion decoder that rolls the state forward ``pred_len`` steps by feeding back
its own predicted inputs -> linear read-out -> RevIN undone.

Channels: ``channel_mixing=False`` (default) runs every variate as its own sequence with shared
weights (channel independence, best on ETT); ``True`` embeds all variates of a time step together
and reads all outputs out of one decoder (multivariate in and out in one sequence).
``linear_skip`` adds a linear lookback->horizon map on the normalised input (an AR skip path the
SSM then corrects); it costs L*H parameters and helps on small data sets such as ETT. Setting the
attribute ``linear_only = True`` runs that path alone (the SSM branch is skipped, not just zeroed):
training fits it first that way when ``linear_stage`` is on.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.layers.companion import ClosedLoopCompanionSSM, CompanionSSM

from .common import RevIN


class _EncoderBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ssm = CompanionSSM(d_model, d_state)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.out(F.gelu(self.ssm(self.norm(x)))))


class SpaceTime(nn.Module):
    """forward(x_enc (B, L, C)) -> (B, H, c_out); c_out < C forecasts the last c_out channels."""

    def __init__(self, seq_len: int, pred_len: int, enc_in: int, c_out: int, d_model: int = 32,
                 d_state: int = 16, n_layers: int = 2, embed_lags: int = 8, dropout: float = 0.1,
                 channel_mixing: bool = False, linear_skip: bool = True, revin: bool = True,
                 zero_init_head: bool = False):
        super().__init__()
        self.seq_len, self.pred_len, self.c_out = seq_len, pred_len, c_out
        self.channel_mixing = channel_mixing
        self.revin = RevIN(enc_in) if revin else None
        c_tok = enc_in if channel_mixing else 1
        self.embed_lags = embed_lags
        self.embed = nn.Linear(c_tok * embed_lags, d_model)
        self.encoder = nn.ModuleList([_EncoderBlock(d_model, d_state, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.decoder = ClosedLoopCompanionSSM(d_model, d_state)
        self.head = nn.Linear(d_model, c_out if channel_mixing else 1)
        if zero_init_head:  # start as the linear skip path alone; the SSM learns a correction
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Linear(seq_len, pred_len) if linear_skip else None
        if self.skip is not None:
            nn.init.constant_(self.skip.weight, 1.0 / seq_len)
            nn.init.zeros_(self.skip.bias)
        self.linear_only = False

    def _lags(self, x: Tensor) -> Tensor:
        """(B, L, c) -> (B, L, c * embed_lags): each step sees its last embed_lags values (causal)."""
        k = self.embed_lags
        xp = torch.cat([x[:, :1].expand(-1, k - 1, -1), x], 1)
        return xp.unfold(1, k, 1).flatten(2)                      # (B, L, c*k)

    def forward(self, x_enc: Tensor) -> Tensor:
        B, L, C = x_enc.shape
        x = self.revin.norm(x_enc) if self.revin is not None else x_enc
        s = self.skip(x.transpose(1, 2)).transpose(1, 2) if self.skip is not None else None  # (B, H, C)
        if self.linear_only:
            y = s
        else:
            seq = x if self.channel_mixing else x.transpose(1, 2).reshape(B * C, L, 1)
            z = self.embed(self._lags(seq))
            for blk in self.encoder:
                z = blk(z)
            # decoder + read-out in one product (no (B', H, d_model) tensor); dropout on the final state
            y = self.decoder.forward_projected(self.norm(z), self.pred_len, self.head.weight, self.head.bias,
                                               self.drop)                # (B', H, c)
            if not self.channel_mixing:
                y = y.reshape(B, C, self.pred_len).transpose(1, 2)      # (B, H, C)
            if s is not None:
                y = y + s[..., -y.shape[-1]:]
        y = y[..., -self.c_out:]
        return self.revin.denorm(y) if self.revin is not None else y
