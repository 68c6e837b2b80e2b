"""Bidirectional mixers: Vim-style ``BiMamba`` and the quasiseparable ``Hydra``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.ops import ssd_scan

from .inference import fp32_at_least, op_backend
from .mamba import init_dt_bias
from .norm import RMSNormGated


def _no_streaming(name: str):
    raise NotImplementedError(f"{name} is bidirectional: every output depends on the whole sequence, "
                              "so it has no step()/inference cache; use a causal mixer to stream")


class BiMamba(nn.Module):
    """Vim-style bidirectional mixer: ``fwd`` scans the sequence, ``bwd`` (own parameters) scans
    it flipped; the flipped-back outputs are combined.

    ``forward(x (B, L, d_model)) -> (B, L, d_model)``. ``combine``: "add" (``y_f + y_b``),
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

    def forward(self, hidden_states: torch.Tensor, inference_params=None, **kwargs) -> torch.Tensor:
        if inference_params is not None:
            _no_streaming("BiMamba")
        y_f = self.fwd(hidden_states)
        y_b = self.bwd(hidden_states.flip(1)).flip(1)
        if self.combine == "add":
            return y_f + y_b
        if self.combine == "mean":
            return (y_f + y_b) / 2
        return self.proj(torch.cat([y_f, y_b], dim=-1))

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

    def project(self, u: torch.Tensor) -> dict:
        """The mixer's inputs from u (B, L, d_model): ``z, x`` (B, L, d_inner); ``dt_f, dt_b``
        (B, L, nheads) after softplus(+dt_bias) and dt_limit; ``B_f, C_f, B_b, C_b``
        (B, L, G, N); ``diag`` (B, L, nheads) = fc_D(x) + D; ``A`` (nheads,)."""
        batch, L, _ = u.shape
        GN, H = self.ngroups * self.d_state, self.nheads
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, 2 * H], dim=-1)
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :L]          # centred window, length L
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

    def mix(self, p: dict) -> torch.Tensor:
        """The quasiseparable mixing of ``project``'s outputs -> (B, L, d_inner), before the norm."""
        x = p["x"]
        batch, L, _ = x.shape
        # Both directions in one scan call: the backward one runs on flipped sequences.
        xs = torch.cat([x, x.flip(1)], 0).reshape(2 * batch, L, self.nheads, self.headdim)
        dts = torch.cat([p["dt_f"], p["dt_b"].flip(1)], 0)
        Bs = torch.cat([p["B_f"], p["B_b"].flip(1)], 0)
        Cs = torch.cat([p["C_f"], p["C_b"].flip(1)], 0)
        init = (self.init_states.expand(2 * batch, *self.init_states.shape).contiguous()
                if self.learnable_init_states else None)
        y = ssd_scan(xs, dts, p["A"], Bs, Cs, chunk_size=self.chunk_size, initial_states=init,
                     backend=op_backend("ssd_scan", self.backend))
        y = y.reshape(2 * batch, L, self.d_inner)
        # Shift by one step: position t sees strictly earlier (resp. later) positions.
        y = F.pad(y[:, :-1], (0, 0, 1, 0))
        y_f, y_b = y[:batch], y[batch:].flip(1)
        diag = p["diag"].repeat_interleave(self.headdim, dim=-1)
        return y_f + y_b + x * diag

    def forward(self, u: torch.Tensor, inference_params=None, **kwargs) -> torch.Tensor:
        if inference_params is not None:
            _no_streaming("Hydra")
        p = self.project(u)
        return self.out_proj(self.norm(self.mix(p), p["z"]))

    def allocate_inference_cache(self, *args, **kwargs):
        _no_streaming("Hydra")

    def step(self, *args, **kwargs):
        _no_streaming("Hydra")
