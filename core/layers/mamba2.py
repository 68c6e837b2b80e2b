"""Mamba-2 block with mamba_ssm's constructor, parameter names, init and streaming API."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.ops import causal_conv1d_update, ssd_scan

from .inference import InferenceParams, cached_causal_conv, cached_states, fp32_at_least, op_backend
from .ragged import ragged, streams_lengths, varlen_prefill
from .mamba import init_dt_bias
from .norm import RMSNormGated


class Mamba2(nn.Module):
    """Mamba-2 block (``mamba_ssm.modules.mamba2.Mamba2``).

    ``forward(hidden_states (batch, L, d_model), inference_params=None) -> (batch, L, d_model)``.
    With d_inner = expand * d_model, d_ssm (default d_inner), nheads = d_ssm / headdim,
    G = ngroups, N = d_state, conv_dim = d_ssm + 2 G N, parameters are
    ``in_proj`` (2*d_inner + 2 G N + nheads, d_model) split as [z0, x0, z, xBC, dt]
    (z0/x0 of size (d_inner - d_ssm) feed a gated MLP, empty by default), ``conv1d``
    (conv_dim, 1, d_conv), ``dt_bias`` (nheads,), ``A_log`` (nheads,), ``D`` (nheads,) or
    (d_ssm,) with ``D_has_hdim``, ``norm.weight`` (d_ssm,) (gated RMSNorm, groups of
    d_ssm / ngroups, ``norm_before_gate=False``), ``out_proj`` (d_model, d_inner).
    Hugging Face ``Mamba2Mixer`` state dicts load with strict=True. ``backend`` goes to core.ops.
    Accepted and ignored: ``use_mem_eff_path``, ``process_group``, ``sequence_parallel``.
    """

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64,
                 d_ssm=None, ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True,
                 norm_before_gate=False, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                 dt_limit=(0.0, float("inf")), bias=False, conv_bias=True, chunk_size=256,
                 use_mem_eff_path=True, layer_idx=None, process_group=None, sequence_parallel=True,
                 device=None, dtype=None, backend="auto"):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.conv_init = d_model, d_state, d_conv, conv_init
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        if self.d_ssm % headdim:
            raise ValueError(f"Mamba2: d_ssm {self.d_ssm} is not a multiple of headdim {headdim}")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: nheads {self.nheads} is not a multiple of ngroups {ngroups}")
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx
        self.backend = backend

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()

        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, **factory))
        self.dt_bias._no_weight_decay = True
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"Mamba2: A_init_range must be 0 < lo <= hi, got {A_init_range}")
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _split(self, zxbcdt: torch.Tensor):
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        return d_mlp, torch.split(zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _D(self) -> torch.Tensor:
        D = fp32_at_least(self.D)
        return D.reshape(self.nheads, self.headdim) if self.D_has_hdim else D

    def forward(self, u: torch.Tensor, inference_params: InferenceParams | None = None,
                *, seq_idx=None, cu_seqlens=None, lengths=None, **kwargs) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model); with ``inference_params`` the cached states
        are the initial states (zero at ``seqlen_offset == 0``) and are updated in place.

        Ragged input (see core.layers.ragged): ``seq_idx`` (batch, L) or ``cu_seqlens``
        (n + 1,) for packed sequences (mamba_ssm's keywords), or ``lengths`` (batch,) for a
        padded batch (padded outputs are zero). Streaming as :class:`Mamba`: per-row states end
        at ``lengths``; ``cu_seqlens`` caches one state per sequence (mamba_ssm's varlen states).
        """
        batch, seqlen, _ = u.shape
        r = ragged(u, seq_idx, cu_seqlens, lengths)
        if inference_params is not None and cu_seqlens is not None:  # as mamba_ssm, even with seq_idx
            return varlen_prefill(self, u, inference_params, cu_seqlens)
        by_len = streams_lengths(r, inference_params)  # each row's state must end at its length
        conv_state, ssm_state, fresh = cached_states(self, inference_params, batch)
        if not fresh and seqlen == 1:  # decoding: one recurrent step
            return self.step(u, conv_state, ssm_state)[0]
        sq = r.seq_idx if r is not None else None  # a padded batch needs none: padding comes last

        d_mlp, (z0, x0, z, xBC, dt) = self._split(self.in_proj(u))
        xBC_t = xBC.transpose(1, 2).contiguous()                        # (B, conv_dim, L)
        xBC = cached_causal_conv(self, xBC_t, conv_state, fresh, seq_idx=sq,
                                 lengths=r.lengths if by_len else None).transpose(1, 2)
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        A = -torch.exp(fp32_at_least(self.A_log))
        dt_bias, softplus, dt_limit = fp32_at_least(self.dt_bias), True, self.dt_limit
        if by_len:  # dt = 0 past each row's end: the state passes the padding unchanged
            dt = F.softplus(fp32_at_least(dt) + dt_bias)
            if dt_limit != (0.0, float("inf")):
                dt = dt.clamp(*dt_limit)
            dt = dt * r.mask[..., None].to(dt.dtype)
            dt_bias, softplus, dt_limit = None, False, (0.0, float("inf"))
        y = ssd_scan(
            x.reshape(batch, seqlen, self.nheads, self.headdim), dt, A,
            B.reshape(batch, seqlen, self.ngroups, self.d_state),
            C.reshape(batch, seqlen, self.ngroups, self.d_state),
            chunk_size=self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.reshape(batch, seqlen, self.nheads, self.headdim),
            dt_bias=dt_bias, dt_softplus=softplus,
            initial_states=None if (ssm_state is None or fresh) else ssm_state.clone(),
            return_final_states=ssm_state is not None, dt_limit=dt_limit, seq_idx=sq,
            backend=op_backend("ssd_scan", self.backend))
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state.detach())
        y = y.reshape(batch, seqlen, self.d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        out = self.out_proj(y)
        return r.zero_padding(out) if r is not None else out

    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One token: hidden_states (batch, 1, d_model); conv_state (batch, conv_dim, d_conv) and
        ssm_state (batch, nheads, headdim, d_state) updated in place.
        Returns (out (batch, 1, d_model), conv_state, ssm_state)."""
        if hidden_states.shape[1] != 1:
            raise ValueError(f"Mamba2.step takes one token, got L={hidden_states.shape[1]}; "
                             "use forward(x, inference_params) for chunks")
        dtype = hidden_states.dtype
        d_mlp, (z0, x0, z, xBC, dt) = self._split(self.in_proj(hidden_states.squeeze(1)))
        xBC = causal_conv1d_update(xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   activation=self.activation,
                                   backend=op_backend("causal_conv1d_update", self.backend))
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        work = ssm_state.dtype
        rep = self.nheads // self.ngroups
        B = B.to(work).reshape(-1, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)  # (b, h, N)
        C = C.to(work).reshape(-1, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)
        dt = F.softplus(dt.to(work) + self.dt_bias.to(work))                                 # (b, h)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        A = -torch.exp(self.A_log.to(work))
        xh = x.to(work).reshape(-1, self.nheads, self.headdim)                               # (b, h, p)
        dA = torch.exp(dt * A)
        ssm_state.copy_(ssm_state * dA[..., None, None]
                        + (dt[..., None] * xh)[..., None] * B[:, :, None, :])
        y = (ssm_state * C[:, :, None, :]).sum(-1)                                           # (b, h, p)
        D = self._D().to(work)
        y = y + xh * (D[:, None] if D.dim() == 1 else D)
        y = y.reshape(-1, self.d_ssm)
        if not self.rmsnorm:
            y = y * F.silu(z.to(work))
        y = y.to(dtype)
        if self.rmsnorm:
            y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """Zero states: conv_state (batch, conv_dim, d_conv), ssm_state (batch, nheads, headdim, d_state)."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=ssm_dtype)
        return conv_state, ssm_state
