"""Normalisation layers with mamba_ssm's names: ``RMSNorm`` and the gated ``RMSNormGated``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # Half inputs are normalised in fp32; fp32/fp64 keep their own precision.
    return torch.float32 if t.dtype in _HALF else t.dtype


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension (``mamba_ssm.ops.triton.layer_norm.RMSNorm``).

    ``y = x / sqrt(mean(x**2, -1) + eps) * weight``. Input (..., d) -> (..., d).
    Its only parameter is ``weight`` (d,), so mamba_ssm state dicts load as is.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_work_dtype(x))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """Gated, grouped RMSNorm (``mamba_ssm.ops.triton.layernorm_gated.RMSNorm``).

    ``forward(x, z=None)`` with ``x, z``: (..., d) -> (..., d). With
    ``norm_before_gate=False`` (Mamba2's setting) it computes
    ``rmsnorm(x * silu(z)) * weight``; with ``True`` ``rmsnorm(x) * weight * silu(z)``.
    The statistics are taken over groups of ``group_size`` channels (default: all).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.group_size = hidden_size if group_size is None else group_size
        if hidden_size % self.group_size:
            raise ValueError(f"RMSNormGated: hidden_size {hidden_size} is not a multiple of "
                             f"group_size {self.group_size}")
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        work = _work_dtype(x)
        xf = x.to(work)
        if z is not None and not self.norm_before_gate:
            xf = xf * F.silu(z.to(work))
        shape = xf.shape
        g = xf.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        y = g.reshape(shape) * self.weight.to(work)
        if z is not None and self.norm_before_gate:
            y = y * F.silu(z.to(work))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
