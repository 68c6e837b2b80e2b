"""Pieces shared by the forecasters: instance normalisation (RevIN) and patching."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class RevIN(nn.Module):
    """Per-window, per-channel normalisation (Kim et al. 2022), undone on the forecast.

    ``norm(x (B, L, C))`` stores mean/std over time; ``denorm(y (B, H, C'), cols)`` rescales the
    forecast with the statistics of the given input channels (default: the last C').
    """

    def __init__(self, num_features: int, affine: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self._mean = self._std = None

    def norm(self, x: Tensor) -> Tensor:
        self._mean = x.mean(1, keepdim=True).detach()
        self._std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - self._mean) / self._std
        return x * self.weight + self.bias if self.affine else x

    def denorm(self, y: Tensor) -> Tensor:
        c = y.shape[-1]
        if self.affine:
            y = (y - self.bias[-c:]) / (self.weight[-c:] + self.eps * self.eps)
        return y * self._std[..., -c:] + self._mean[..., -c:]


def patchify(x: Tensor, patch_len: int) -> Tensor:
    """(B, L, C) -> (B, C, T, patch_len), T = ceil(L / patch_len); the front is padded by repetition."""
    B, L, C = x.shape
    pad = (-L) % patch_len
    if pad:
        x = torch.cat([x[:, :1].expand(B, pad, C), x], 1)
    return x.transpose(1, 2).reshape(B, C, -1, patch_len)


class ResidualCycle(nn.Module):
    """Residual cycle forecasting (RCF, Lin et al., NeurIPS 2024 "CycleNet") around any forecaster.

    A learnable cycle ``Q`` (cycle_len, C), shared by all windows, holds each variate's recurring
    pattern (for example its daily profile). The backbone sees the input minus the cycle aligned to
    the window's calendar position and forecasts the residual; the cycle is added back on the
    horizon. Order as in the paper: RevIN first (when ``revin``), so ``Q`` is a shape in
    instance-normalised units, then cycle removal; the backbone must run without its own RevIN.

    ``forward(x_enc (B, L, C), t_index (B,) int64) -> (B, H, c_out)``; ``t_index`` is the step
    index of each window's first row (``data.step_index``); only its residue mod cycle_len is used.
    """

    def __init__(self, backbone: nn.Module, seq_len: int, pred_len: int, enc_in: int, c_out: int,
                 cycle_len: int, revin: bool = True):
        super().__init__()
        if cycle_len < 1:
            raise ValueError(f"cycle_len must be positive, got {cycle_len}")
        self.backbone = backbone
        self.seq_len, self.pred_len, self.c_out, self.cycle_len = seq_len, pred_len, c_out, cycle_len
        self.revin = RevIN(enc_in) if revin else None
        self.Q = nn.Parameter(torch.zeros(cycle_len, enc_in))  # zero start: the backbone alone

    def cycle(self, t_index: Tensor, length: int) -> Tensor:
        """(B,) step indices -> (B, length, C): the cycle from each index on, wrapped mod cycle_len."""
        idx = (t_index.long()[:, None] + torch.arange(length, device=self.Q.device)) % self.cycle_len
        return self.Q[idx]

    def forward(self, x_enc: Tensor, t_index: Tensor) -> Tensor:
        x = self.revin.norm(x_enc) if self.revin is not None else x_enc
        y = self.backbone(x - self.cycle(t_index, x.shape[1]))
        y = y + self.cycle(t_index + x.shape[1], self.pred_len)[..., -y.shape[-1]:]
        return self.revin.denorm(y) if self.revin is not None else y
