"""Mamba-1 block with mamba_ssm's constructor, parameter names, init and streaming API."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.ops import causal_conv1d_update, selective_scan

from .inference import InferenceParams, cached_causal_conv, cached_states, fp32_at_least, op_backend
from .ragged import ragged, streams_lengths, varlen_prefill


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(inverse_softplus(x)) == x`` for x > 0 (stable form)."""
    return x + torch.log(-torch.expm1(-x))


def init_dt_bias(n: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None,
                 dtype=None) -> torch.Tensor:
    """mamba_ssm's dt bias: dt ~ log-uniform[dt_min, dt_max], floored, through inverse softplus. -> (n,)"""
    dt = torch.exp(torch.rand(n, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return inverse_softplus(dt)


class Mamba(nn.Module):
    """Mamba-1 block (``mamba_ssm.modules.mamba_simple.Mamba``).

    ``forward(hidden_states (batch, L, d_model), inference_params=None) -> (batch, L, d_model)``.
    Parameters (d_inner = expand * d_model, R = dt_rank, N = d_state):
    ``in_proj`` (2*d_inner, d_model), ``conv1d`` (d_inner, 1, d_conv), ``x_proj`` (R + 2N, d_inner),
    ``dt_proj`` (d_inner, R) + bias, ``A_log`` (d_inner, N), ``D`` (d_inner,), ``out_proj``
    (d_model, d_inner), so mamba_ssm / Hugging Face ``MambaMixer`` state dicts load with strict=True.

    ``backend`` ("auto", "reference", "cpu", ...) is passed to ``core.ops``; it can be changed
    on the instance at any time. ``use_fast_path`` is accepted for compatibility and ignored.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True,
                 bias=False, use_fast_path=True, layer_idx=None, device=None, dtype=None,
                 backend="auto"):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.backend = backend
        self.activation = "silu"

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj weight: keeps the variance of dt at init (mamba_ssm's "random"/"constant").
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(dt_init_std)
            elif dt_init == "random":
                self.dt_proj.weight.uniform_(-dt_init_std, dt_init_std)
            else:
                raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
            self.dt_proj.bias.copy_(init_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, **factory))
        self.dt_proj.bias._no_reinit = True  # a model-wide "zero all biases" init must skip it

        # S4D-real init, kept in fp32 like mamba_ssm.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # -- full sequence ---------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, inference_params: InferenceParams | None = None,
                *, seq_idx=None, cu_seqlens=None, lengths=None, **kwargs) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model); with ``inference_params`` the states
        in its cache are the initial states (zero at ``seqlen_offset == 0``) and are updated.

        Ragged input (see core.layers.ragged): ``seq_idx`` (batch, L) or ``cu_seqlens``
        (n + 1,) for packed sequences, or ``lengths`` (batch,) for a padded batch (padded
        outputs are zero). Streaming (``inference_params``): with ``lengths`` each row's state
        ends at its length; with ``cu_seqlens`` (and no ``seq_idx``) one state per sequence is
        cached (cache batch n, mamba_ssm's varlen states); with ``seq_idx`` alone each row keeps its
        last sequence's state.
        """
        batch, seqlen, _ = hidden_states.shape
        r = ragged(hidden_states, seq_idx, cu_seqlens, lengths)
        if inference_params is not None and cu_seqlens is not None:  # as mamba_ssm, even with seq_idx
            return varlen_prefill(self, hidden_states, inference_params, cu_seqlens)
        by_len = streams_lengths(r, inference_params)  # each row's state must end at its length
        conv_state, ssm_state, fresh = cached_states(self, inference_params, batch)
        if not fresh and seqlen == 1:  # decoding: one recurrent step
            return self.step(hidden_states, conv_state, ssm_state)[0]
        sq = r.seq_idx if r is not None else None  # a padded batch needs none: padding comes last

        xz = self.in_proj(hidden_states).transpose(1, 2)          # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = cached_causal_conv(self, x.contiguous(), conv_state, fresh, seq_idx=sq,
                               lengths=r.lengths if by_len else None)

        x_dbl = self.x_proj(x.transpose(1, 2))                    # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)       # (B, d_inner, L), bias in the scan
        A = -torch.exp(fp32_at_least(self.A_log))
        dt_bias, softplus = fp32_at_least(self.dt_proj.bias), True
        if by_len:  # dt = 0 past each row's end: the state passes the padding unchanged
            dt = F.softplus(fp32_at_least(dt) + dt_bias[:, None]) * r.mask[:, None].to(dt.dtype)
            dt_bias, softplus = None, False
        y = selective_scan(
            x, dt, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            D=fp32_at_least(self.D), z=z.contiguous(), delta_bias=dt_bias,
            delta_softplus=softplus, return_last_state=ssm_state is not None,
            initial_state=None if (ssm_state is None or fresh) else ssm_state.clone(), seq_idx=sq,
            backend=op_backend("selective_scan", self.backend))
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state.detach())
        out = self.out_proj(y.transpose(1, 2))
        return r.zero_padding(out) if r is not None else out

    # -- recurrent inference ----------------------------------------------------------------
    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One token: hidden_states (batch, 1, d_model), conv_state (batch, d_inner, d_conv),
        ssm_state (batch, d_inner, d_state), both updated in place.
        Returns (out (batch, 1, d_model), conv_state, ssm_state)."""
        if hidden_states.shape[1] != 1:
            raise ValueError(f"Mamba.step takes one token, got L={hidden_states.shape[1]}; "
                             "use forward(x, inference_params) for chunks")
        dtype = hidden_states.dtype
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)   # (B, d_inner) each
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                 activation=self.activation,
                                 backend=op_backend("causal_conv1d_update", self.backend))
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        work = ssm_state.dtype
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(work) + self.dt_proj.bias.to(work))
        A = -torch.exp(self.A_log.to(work))                                 # (d_inner, N)
        dA = torch.exp(dt[..., None] * A)                                    # (B, d_inner, N)
        ssm_state.copy_(ssm_state * dA + (dt * x.to(work))[..., None] * B.to(work)[:, None, :])
        y = (ssm_state * C.to(work)[:, None, :]).sum(-1) + self.D.to(work) * x.to(work)
        y = (y * F.silu(z.to(work))).to(dtype)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """Zero states: conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state
