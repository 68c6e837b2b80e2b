"""DLinear baseline (Zeng et al. 2023): moving-average trend + remainder, one linear map each."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .common import RevIN


class DLinear(nn.Module):
    """forward(x_enc (B, L, C)) -> (B, H, c_out); weights shared across channels.

    ``revin`` adds instance normalisation (off in the original DLinear).
    """

    def __init__(self, seq_len: int, pred_len: int, enc_in: int, c_out: int, kernel_size: int = 25,
                 revin: bool = False):
        super().__init__()
        self.c_out, self.k = c_out, kernel_size
        self.revin = RevIN(enc_in) if revin else None
        self.seasonal = nn.Linear(seq_len, pred_len)
        self.trend = nn.Linear(seq_len, pred_len)
        for lin in (self.seasonal, self.trend):  # start as "repeat the window mean"
            nn.init.constant_(lin.weight, 1.0 / seq_len)
            nn.init.zeros_(lin.bias)

    def forward(self, x_enc: Tensor) -> Tensor:
        x = (self.revin.norm(x_enc) if self.revin is not None else x_enc).transpose(1, 2)  # (B, C, L)
        front = x[..., :1].expand(*x.shape[:2], (self.k - 1) // 2)
        end = x[..., -1:].expand(*x.shape[:2], self.k // 2)
        trend = torch.nn.functional.avg_pool1d(torch.cat([front, x, end], -1), self.k, stride=1)
        y = self.seasonal(x - trend) + self.trend(trend)          # (B, C, H)
        y = y.transpose(1, 2)[..., -self.c_out:]
        return self.revin.denorm(y) if self.revin is not None else y
