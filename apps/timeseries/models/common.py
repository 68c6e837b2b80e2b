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
