"""Bidirectional mixers: Vim-style ``BiMamba`` and the quasiseparable ``Hydra``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.ops import ssd_scan

from .inference import fp32_at_least, op_backend
from .mamba import init_dt_bias
from .norm import RMSNormGated
from .ragged import Ragged, ragged


def _no_streaming(name: str):
    raise NotImplementedError(f"{name} is bidirectional: every output depends on the whole sequence, "
                              "so it has no step()/inference cache; use a causal mixer to stream")


class BiMamba(nn.Module):
    """Vim-style bidirectional mixer: ``fwd`` scans the sequence, ``bwd`` (own parameters) scans
    it flipped; the flipped-back outputs are combined.

    ``forward(x (B, L, d_model), *, seq_idx=None, cu_seqlens=None, lengths=None) -> (B, L, d_model)``;
    with packed sequences or a padded batch the backward scan starts at each sequence's own
    end (see core.layers.ragged). ``combine``: "add" (``y_f + y_b``),
    "mean" (``(y_f + y_b) / 2``) or "concat" (``proj(cat([y_f, y_b], -1))``, ``proj``:
    Linear(2 d_model, d_model)). ``mixer``: "mamba" or "mamba2" for both directions; other
    keyword arguments (d_state, expand, backend, ...) go to both.
    """

    def __init__(self, d_model: int, combine: str = "add", mixer: str = "mamba", layer_idx=None,
                 device=None, dtype=None, **mixer_kwargs):
        super().__init__()
        from .block import mixer_class  # late: block imports this module lazily
        if combine not in ("add", "mean", "concat"):
            raise ValueError(f"BiMamba: combine must be 'add', 'mean' or 'concat', got {combine!r}")
        if mixer not in ("mamba", "mamba2"):
            raise ValueError(f"BiMamba: mixer must be 'mamba' or 'mamba2', got {mixer!r}")
        cls = mixer_class(mixer)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.combine, self.layer_idx = d_model, combine, layer_idx
        self.fwd = cls(d_model, **mixer_kwargs, **factory)
        self.bwd = cls(d_model, **mixer_kwargs, **factory)
        if combine == "concat":
            self.proj = nn.Linear(2 * d_model, d_model, bias=False, **factory)

    def forward(self, hidden_states: torch.Tensor, inference_params=None, *, seq_idx=None,
                cu_seqlens=None, lengths=None, **kwargs) -> torch.Tensor:
        if inference_params is not None:
            _no_streaming("BiMamba")
        r = ragged(hidden_states, seq_idx, cu_seqlens, lengths)
        if r is None:
            y_f = self.fwd(hidden_states)
            y_b = self.bwd(hidden_states.flip(1)).flip(1)
        else:  # each sequence reversed within its own span, so its backward scan starts at its end
            y_f = self.fwd(hidden_states, **r.kwargs())
            y_b = r.flip(self.bwd(r.flip(hidden_states), **r.kwargs()))
        if self.combine == "add":
            y = y_f + y_b
        elif self.combine == "mean":
            y = (y_f + y_b) / 2
        else:
            y = self.proj(torch.cat([y_f, y_b], dim=-1))
        return r.zero_padding(y) if r is not None else y

    def allocate_inference_cache(self, *args, **kwargs):
        _no_streaming("BiMamba")

    def step(self, *args, **kwargs):
        _no_streaming("BiMamba")


class Hydra(nn.Module):
    """Hydra quasiseparable bidirectional mixer (Hwang et al. 2024, parameter names of goombalab/hydra).

    ``forward(u (B, L, d_model)) -> (B, L, d_model)``. Per head the sequence mixer is
    ``QS(x) = shift(SS_f(x)) + flip(shift(SS_b(flip(x)))) + diag(d) x``: two SSD scans with
    their own dt/B/C (shared ``A_log``, ``dt_bias``), each shifted one step so the diagonal is
    counted once, plus the diagonal ``d_t = fc_D(x_t) + D`` (per head). Input features come from
    a non-causal depthwise conv (``d_conv`` odd: centred window) with SiLU; the output passes a
    gated RMSNorm (``norm_before_gate=True``) and ``out_proj``.
    Parameters: ``in_proj`` (2 d_inner + 4 G N + 2 nheads, d_model) split [z, xBC, dt],
    xBC = [x, B_f, C_f, B_b, C_b]; ``conv1d`` (d_inner + 4 G N, 1, d_conv); ``dt_bias``,
    ``A_log``, ``D`` (nheads,); ``fc_D`` (nheads, d_inner); ``norm.weight``; ``out_proj``;
    ``init_states`` (nheads, headdim, d_state) with ``learnable_init_states``.
    """

    def __init__(self, d_model, d_state=64, d_conv=7, conv_init=None, expand=2, headdim=64, ngroups=1,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")),
                 learnable_init_states=False, activation="swish", bias=False, conv_bias=True,
                 chunk_size=256, use_mem_eff_path=False, layer_idx=None, device=None, dtype=None,
                 backend="auto"):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        if activation not in ("silu", "swish"):
            raise ValueError(f"Hydra: activation must be 'silu' or 'swish', got {activation!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"Hydra: d_inner {self.d_inner} is not a multiple of headdim {headdim}")
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"Hydra: nheads {self.nheads} is not a multiple of ngroups {ngroups}")
        self.dt_limit = tuple(dt_limit)
        self.learnable_init_states = learnable_init_states
        self.activation, self.chunk_size, self.layer_idx = activation, chunk_size, layer_idx
        self.use_mem_eff_path = use_mem_eff_path
        self.backend = backend

        GN = ngroups * d_state
        self.conv_dim = self.d_inner + 4 * GN
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 4 * GN + 2 * self.nheads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv // 2, bias=conv_bias, **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        if learnable_init_states:
            self.init_states = nn.Parameter(torch.zeros(self.nheads, headdim, d_state, **factory))
            self.init_states._no_weight_decay = True
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, **factory))
        self.dt_bias._no_weight_decay = True
        # Hydra starts every head at A = -1.
        self.A_log = nn.Parameter(torch.zeros(self.nheads, device=device, dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory)
        self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def project(self, u: torch.Tensor, r: Ragged | None = None) -> dict:
        """The mixer's inputs from u (B, L, d_model): ``z, x`` (B, L, d_inner); ``dt_f, dt_b``
        (B, L, nheads) after softplus(+dt_bias) and dt_limit; ``B_f, C_f, B_b, C_b``
        (B, L, G, N); ``diag`` (B, L, nheads) = fc_D(x) + D; ``A`` (nheads,).
        ``r``: ragged layout (the conv window then never crosses into padding or another sequence)."""
        batch, L, _ = u.shape
        GN, H = self.ngroups * self.d_state, self.nheads
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, 2 * H], dim=-1)
        if r is not None and r.packed:
            xBC = _centred_conv(xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, r.seq_idx)
        else:
            if r is not None:  # the window past a sequence's end sees zeros, as when run alone
                xBC = r.zero_padding(xBC)
            xBC = self.conv1d(xBC.transpose(1, 2))[..., :L]      # centred window, length L
        xBC = F.silu(xBC).transpose(1, 2)
        x, B_f, C_f, B_b, C_b = torch.split(xBC, [self.d_inner, GN, GN, GN, GN], dim=-1)
        # Both directions share dt_bias: (B, L, 2, H) + (H,).
        dt = F.softplus(dt.reshape(batch, L, 2, H) + self.dt_bias).reshape(batch, L, 2 * H)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        g = lambda t: t.reshape(batch, L, self.ngroups, self.d_state)  # noqa: E731
        return dict(z=z, x=x, dt_f=dt[..., :H], dt_b=dt[..., H:], B_f=g(B_f), C_f=g(C_f),
                    B_b=g(B_b), C_b=g(C_b), diag=F.linear(x, self.fc_D.weight, self.D),
                    A=-torch.exp(fp32_at_least(self.A_log)))

    def mix(self, p: dict, r: Ragged | None = None) -> torch.Tensor:
        """The quasiseparable mixing of ``project``'s outputs -> (B, L, d_inner), before the norm.

        ``r``: ragged layout; the backward direction then runs on each sequence reversed in place."""
        x = p["x"]
        batch, L, _ = x.shape
        flip = (lambda t: t.flip(1)) if r is None else r.flip
        # Both directions in one scan call: the backward one runs on flipped sequences.
        xs = torch.cat([x, flip(x)], 0).reshape(2 * batch, L, self.nheads, self.headdim)
        dts = torch.cat([p["dt_f"], flip(p["dt_b"])], 0)
        Bs = torch.cat([p["B_f"], flip(p["B_b"])], 0)
        Cs = torch.cat([p["C_f"], flip(p["C_b"])], 0)
        # a sequence keeps its seq_idx when reversed in place; padding only ever follows it
        sq = torch.cat([r.seq_idx, r.seq_idx], 0) if (r is not None and r.packed) else None
        init = (self.init_states.expand(2 * batch, *self.init_states.shape).contiguous()
                if self.learnable_init_states else None)
        y_init = None
        if init is not None and sq is not None:  # the scan would give it to each row's first sequence only
            y_init = _init_state_output(init, dts, p["A"], Cs, sq, self.nheads)
            init = None
        y = ssd_scan(xs, dts, p["A"], Bs, Cs, chunk_size=self.chunk_size, initial_states=init, seq_idx=sq,
                     backend=op_backend("ssd_scan", self.backend))
        if y_init is not None:
            y = y + y_init
        y = y.reshape(2 * batch, L, self.d_inner)
        # Shift by one step: position t sees strictly earlier (resp. later) positions.
        y = F.pad(y[:, :-1], (0, 0, 1, 0))
        if sq is not None:  # and nothing of the previous sequence
            y = y * (~r.starts()).repeat(2, 1)[..., None].to(y.dtype)
        y_f, y_b = y[:batch], flip(y[batch:])
        diag = p["diag"].repeat_interleave(self.headdim, dim=-1)
        return y_f + y_b + x * diag

    def forward(self, u: torch.Tensor, inference_params=None, *, seq_idx=None, cu_seqlens=None,
                lengths=None, **kwargs) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model); ragged input as :class:`BiMamba`."""
        if inference_params is not None:
            _no_streaming("Hydra")
        r = ragged(u, seq_idx, cu_seqlens, lengths)
        p = self.project(u, r)
        out = self.out_proj(self.norm(self.mix(p, r), p["z"]))
        return r.zero_padding(out) if r is not None else out

    def allocate_inference_cache(self, *args, **kwargs):
        _no_streaming("Hydra")

    def step(self, *args, **kwargs):
        _no_streaming("Hydra")


def _centred_conv(x: torch.Tensor, weight: torch.Tensor, bias, seq_idx: torch.Tensor) -> torch.Tensor:
    """Depthwise conv with a centred window (``nn.Conv1d(padding=W // 2)``) that never reaches
    into another packed sequence: x (B, D, L), weight (D, W), seq_idx (B, L) -> (B, D, L)."""
    W, L = weight.shape[1], x.shape[-1]
    left, right = W // 2, W - 1 - W // 2
    xp = F.pad(x, (left, right))
    lo = int(seq_idx.min()) - 1  # an id no sequence has: the zero padding beyond the row
    sp = F.pad(seq_idx, (left, right), value=lo)
    out = 0
    for k in range(W):
        same = (sp[:, k:k + L] == seq_idx)[:, None].to(x.dtype)
        out = out + xp[..., k:k + L] * weight[:, k, None] * same
    return out + bias[:, None] if bias is not None else out


def _init_state_output(init, dt, A, C, seq_idx, nheads):
    """What a learnt initial state (n, H, P, N) adds to the scan output at each position when
    every packed sequence starts from it: C_t . (exp(sum of dt*A since the sequence start) h0).
    dt (n, L, H), C (n, L, G, N), seq_idx (n, L) -> (n, L, H, P)."""
    a = (dt * A).double()
    cum = a.cumsum(1)
    start = torch.ones_like(seq_idx, dtype=torch.bool)
    start[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    pos = torch.arange(seq_idx.shape[1], device=seq_idx.device).expand_as(seq_idx)
    first = torch.where(start, pos, torch.zeros_like(pos)).cummax(1).values     # each run's start
    before = cum.gather(1, first[..., None].expand_as(cum)) - a.gather(1, first[..., None].expand_as(a))
    decay = torch.exp(cum - before).to(dt.dtype)                                  # (n, L, H)
    Ch = C.repeat_interleave(nheads // C.shape[2], dim=2)                         # (n, L, H, N)
    return decay[..., None] * torch.einsum("blhn,bhpn->blhp", Ch, init.to(C.dtype))
