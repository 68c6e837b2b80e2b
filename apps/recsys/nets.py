"""Sequential recommenders behind one signature: TiM4Rec, Mamba4Rec, SASRec.

Every network maps right-padded histories ``items`` (B, L) int64 (0 = padding) and ``gaps`` (B, L) float
(seconds since the user's previous interaction) to hidden states (B, L, d_model); the score of item i at a
position is the dot product with the tied item embedding ``item_embedding.weight[i]`` (RecBole's heads).
The causal ones (TiM4Rec with ``time_mix="causal"``, Mamba4Rec) also ``step`` one interaction at a time from a
carried state, equal to the full forward.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.layers import Mamba, Mamba2
from core.ops import causal_conv1d, causal_conv1d_update, ssd_scan
from core.layers.inference import fp32_at_least, op_backend

from .config import MODEL_DEFAULTS  # noqa: F401  (re-exported)


class FeedForward(nn.Module):
    """RecBole's point-wise FFN with post-LN: LN(x + drop(W2 drop(act(W1 x))))."""

    def __init__(self, d_model: int, inner: int, dropout: float, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, inner), nn.Linear(inner, d_model)
        self.act = nn.GELU() if act == "gelu" else nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x):
        h = self.fc2(self.dropout(self.act(self.fc1(x))))
        return self.layer_norm(self.dropout(h) + x)


def _init_recbole(module: nn.Module) -> None:
    # RecBole's init: N(0, 0.02) linear/embedding weights, zero biases, unit LayerNorm
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()


class SeqRecNet(nn.Module):
    """Common parts: the tied item embedding, last-position gathering and scoring."""

    causal_step = False

    def __init__(self, n_items: int, d_model: int):
        super().__init__()
        self.n_items, self.d_model = n_items, d_model
        self.item_embedding = nn.Embedding(n_items + 1, d_model, padding_idx=0)

    def forward(self, items: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, items: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(B, L), (B, L) -> (B, d_model): the hidden state at each row's last real item."""
        h = self.forward(items, gaps)
        last = (items != 0).sum(1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d_model) -> (B, n_items + 1) logits (column 0 is padding)."""
        return h @ self.item_embedding.weight.t()

    def init_state(self, batch_size: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is not recurrent: re-encode the history instead")

    def step(self, item: torch.Tensor, gap: torch.Tensor, state: Any):
        raise NotImplementedError(f"{type(self).__name__} is not recurrent: re-encode the history instead")


# ---------------------------------------------------------------------------------------------- SASRec
class SASRec(SeqRecNet):
    """SASRec as in RecBole: learned positions, post-LN Transformer with GELU, causal attention."""

    def __init__(self, n_items: int, max_len: int = 50, d_model: int = 64, n_layers: int = 2, n_heads: int = 2,
                 inner_size: int = 256, dropout: float = 0.5, attn_dropout: float = 0.5, eps: float = 1e-12):
        super().__init__(n_items, d_model)
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            layer = nn.TransformerEncoderLayer(d_model, n_heads, inner_size, dropout, activation="gelu",
                                               layer_norm_eps=eps, batch_first=True, norm_first=False)
            layer.self_attn.dropout = attn_dropout
            layer.dropout = nn.Identity()  # RecBole's FeedForward has no dropout between its two linears
            self.layers.append(layer)
        self.apply(_init_recbole)
        for layer in self.layers:
            nn.init.normal_(layer.self_attn.in_proj_weight, 0.0, 0.02)
            nn.init.zeros_(layer.self_attn.in_proj_bias)

    def forward(self, items, gaps):
        """items (B, L), gaps (B, L) (unused) -> (B, L, d_model)."""
        L = items.shape[1]
        if L > self.max_len:
            raise ValueError(f"SASRec was built for histories of at most {self.max_len} items, got {L}")
        pos = torch.arange(L, device=items.device)
        x = self.dropout(self.layer_norm(self.item_embedding(items) + self.position_embedding(pos)[None]))
        mask = torch.triu(torch.full((L, L), float("-inf"), device=items.device), 1)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return x


# ------------------------------------------------------------------------------------------- Mamba4Rec
class Mamba4Rec(SeqRecNet):
    """Mamba4Rec: embedding -> dropout -> LN -> [Mamba -> dropout (+ residual) -> LN -> FFN] x n_layers."""

    causal_step = True

    def __init__(self, n_items: int, max_len: int = 50, d_model: int = 64, n_layers: int = 1, d_state: int = 32,
                 d_conv: int = 4, expand: int = 2, dropout: float = 0.2, eps: float = 1e-12, backend: str = "auto"):
        super().__init__(n_items, d_model)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.mixers = nn.ModuleList(Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
                                    for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model, eps=eps) for _ in range(n_layers))
        self.ffns = nn.ModuleList(FeedForward(d_model, 4 * d_model, dropout, "gelu", eps) for _ in range(n_layers))
        self.item_embedding.apply(_init_recbole)

    def _block(self, i, x, h):
        h = self.dropout(h) if len(self.mixers) == 1 else self.dropout(h) + x
        return self.ffns[i](self.norms[i](h))

    def forward(self, items, gaps):
        """items (B, L), gaps (B, L) (unused) -> (B, L, d_model)."""
        x = self.layer_norm(self.dropout(self.item_embedding(items)))
        for i, m in enumerate(self.mixers):
            x = self._block(i, x, m(x))
        return x

    def init_state(self, batch_size: int) -> List:
        return [list(m.allocate_inference_cache(batch_size, 1)) for m in self.mixers]

    def step(self, item, gap, state):
        """item (B,), gap (B,) -> (hidden (B, d_model), state updated in place)."""
        x = self.layer_norm(self.dropout(self.item_embedding(item)))[:, None]
        for i, m in enumerate(self.mixers):
            h, _, _ = m.step(x, *state[i])
            x = self._block(i, x, h)
        return x[:, 0], state


# --------------------------------------------------------------------------------------------- TiM4Rec
class TimeAwareMamba2(Mamba2):
    """Mamba-2 (SSD) whose step sizes are multiplied per head by a time factor (the time-aware structured
    masked matrix: the decay between positions s < t is exp(A * sum dt_k * m_k)). Parameters as Mamba2."""

    def forward(self, u: torch.Tensor, dt_scale: torch.Tensor) -> torch.Tensor:
        """u (B, L, d_model), dt_scale (B, L, nheads) > 0 -> (B, L, d_model)."""
        batch, seqlen, _ = u.shape
        d_mlp, (z0, x0, z, xBC, dt) = self._split(self.in_proj(u))
        xBC = causal_conv1d(xBC.transpose(1, 2).contiguous(), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                            activation="silu", backend=op_backend("causal_conv1d", self.backend)).transpose(1, 2)
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        dt = F.softplus(dt + fp32_at_least(self.dt_bias)) * dt_scale
        y = ssd_scan(x.reshape(batch, seqlen, self.nheads, self.headdim), dt, -torch.exp(fp32_at_least(self.A_log)),
                     B.reshape(batch, seqlen, self.ngroups, self.d_state),
                     C.reshape(batch, seqlen, self.ngroups, self.d_state), chunk_size=self.chunk_size, D=self._D(),
                     backend=op_backend("ssd_scan", self.backend))
        y = self.norm(y.reshape(batch, seqlen, self.d_ssm), z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def step_scaled(self, u: torch.Tensor, dt_scale: torch.Tensor, conv_state, ssm_state) -> torch.Tensor:
        """One interaction: u (B, d_model), dt_scale (B, nheads) -> (B, d_model); states updated in place."""
        d_mlp, (z0, x0, z, xBC, dt) = self._split(self.in_proj(u))
        xBC = causal_conv1d_update(xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   activation="silu", backend=op_backend("causal_conv1d_update", self.backend))
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        rep = self.nheads // self.ngroups
        B = B.reshape(-1, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)
        C = C.reshape(-1, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)
        dt = F.softplus(dt + self.dt_bias) * dt_scale                                    # (B, h)
        xh = x.reshape(-1, self.nheads, self.headdim)
        dA = torch.exp(dt * -torch.exp(self.A_log))
        ssm_state.copy_(ssm_state * dA[..., None, None] + (dt[..., None] * xh)[..., None] * B[:, :, None, :])
        y = (ssm_state * C[:, :, None, :]).sum(-1)
        D = self._D()
        y = (y + xh * (D[:, None] if D.dim() == 1 else D)).reshape(-1, self.d_ssm)
        y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)


class TimeGate(nn.Module):
    """Per-layer time path: time features tau (B, L, H) -> mixing MLP -> causal depthwise conv -> a (B, L, H).

    dt is multiplied by exp(4 tanh(a / 4)) (1 at init: the conv starts at zero) and tau + a goes to the next
    layer (the time residual). ``mix="sequence"``: the paper's MLP over the sequence axis (Linear(L, L), sees
    later gaps, so no incremental update); ``mix="causal"``: an MLP over the feature axis at each position.
    """

    def __init__(self, nheads: int, max_len: int, mix: str, width: int = 4):
        super().__init__()
        self.mix, self.width = mix, width
        if mix == "sequence":
            self.seq_mlp = nn.Linear(max_len, max_len)
            with torch.no_grad():  # start as the identity: the paper's LN'd gaps pass through
                self.seq_mlp.weight.copy_(torch.eye(max_len) + 0.02 * torch.randn(max_len, max_len))
                self.seq_mlp.bias.zero_()
        elif mix == "causal":
            self.mlp = nn.Sequential(nn.Linear(nheads, 4 * nheads), nn.SiLU(), nn.Linear(4 * nheads, nheads))
        else:
            raise ValueError(f"time_mix must be 'causal' or 'sequence', got {mix!r}")
        self.conv_weight = nn.Parameter(torch.zeros(nheads, width))
        self.conv_bias = nn.Parameter(torch.zeros(nheads))

    def forward(self, tau: torch.Tensor):
        """tau (B, L, H) -> (dt_scale (B, L, H), next tau (B, L, H))."""
        if self.mix == "sequence":
            L = tau.shape[1]
            s = F.linear(tau.transpose(1, 2), self.seq_mlp.weight[:L, :L], self.seq_mlp.bias[:L]).transpose(1, 2)
        else:
            s = self.mlp(tau)
        a = causal_conv1d(s.transpose(1, 2).contiguous(), self.conv_weight, self.conv_bias,
                          backend="auto").transpose(1, 2)
        return torch.exp(4 * torch.tanh(a / 4)), tau + a

    def step(self, tau: torch.Tensor, conv_state: torch.Tensor):
        """tau (B, H), conv_state (B, H, width) updated in place -> (dt_scale (B, H), next tau (B, H))."""
        a = causal_conv1d_update(self.mlp(tau), conv_state, self.conv_weight, self.conv_bias)
        return torch.exp(4 * torch.tanh(a / 4)), tau + a


class TiM4Rec(SeqRecNet):
    """TiM4Rec: Mamba4Rec's layer layout with time-aware SSD (``TimeAwareMamba2``) mixers and a Hardswish FFN.

    Gaps (seconds) are normalised: ``time_mix="causal"``: z = (log1p(gap / 60) - mean) / std with the training
    set's statistics, then a linear map to one feature per head; ``"sequence"`` (the paper): LayerNorm of the
    raw gaps over the sequence axis, repeated per head.
    """

    def __init__(self, n_items: int, max_len: int = 50, d_model: int = 64, n_layers: int = 2, d_state: int = 32,
                 d_conv: int = 4, expand: int = 2, headdim: int = 32, chunk_size: int = 64, dropout: float = 0.2,
                 time_mix: str = "causal", gap_mean: float = 0.0, gap_std: float = 1.0, eps: float = 1e-12,
                 backend: str = "auto"):
        super().__init__(n_items, d_model)
        self.time_mix, self.max_len = time_mix, max_len
        self.causal_step = time_mix == "causal"
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.mixers = nn.ModuleList(
            TimeAwareMamba2(d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                            chunk_size=chunk_size, bias=True, backend=backend) for _ in range(n_layers))
        H = self.mixers[0].nheads
        self.gates = nn.ModuleList(TimeGate(H, max_len, time_mix, d_conv) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model, eps=eps) for _ in range(n_layers))
        self.ffns = nn.ModuleList(FeedForward(d_model, 4 * d_model, dropout, "hardswish", eps)
                                  for _ in range(n_layers))
        if time_mix == "causal":
            self.time_in = nn.Linear(1, H)
        else:
            self.time_norm = nn.LayerNorm(max_len, eps=1e-5)
        self.register_buffer("gap_stats", torch.tensor([gap_mean, max(gap_std, 1e-6)]), persistent=True)
        self.item_embedding.apply(_init_recbole)

    def _tau(self, gaps: torch.Tensor) -> torch.Tensor:
        if self.time_mix == "causal":
            z = (torch.log1p(gaps.clamp(min=0) / 60.0) - self.gap_stats[0]) / self.gap_stats[1]
            return self.time_in(z[..., None])
        L = gaps.shape[1]
        if L > self.max_len:
            raise ValueError(f"time_mix='sequence' was built for histories of at most {self.max_len} items, got {L}")
        g = F.pad(gaps, (0, self.max_len - L))  # the sequence-axis LayerNorm and MLP have a fixed width
        tau = self.time_norm(torch.log1p(g.clamp(min=0) / 60.0))[:, :L]
        return tau[..., None].expand(-1, -1, self.mixers[0].nheads)

    def _block(self, i, x, h):
        h = self.dropout(h) if len(self.mixers) == 1 else self.dropout(h) + x
        return self.ffns[i](self.norms[i](h))

    def forward(self, items, gaps):
        """items (B, L), gaps (B, L) seconds -> (B, L, d_model)."""
        x = self.layer_norm(self.dropout(self.item_embedding(items)))
        tau = self._tau(gaps.to(x.dtype))
        for i, (m, g) in enumerate(zip(self.mixers, self.gates)):
            scale, tau = g(tau)
            x = self._block(i, x, m(x, scale))
        return x

    def init_state(self, batch_size: int) -> List:
        if not self.causal_step:
            raise NotImplementedError("TiM4Rec with time_mix='sequence' mixes gaps across the whole window: "
                                      "re-encode the history instead")
        dev = self.item_embedding.weight.device
        return [list(m.allocate_inference_cache(batch_size, 1)) +
                [torch.zeros(batch_size, m.nheads, g.width, device=dev)] for m, g in zip(self.mixers, self.gates)]

    def step(self, item, gap, state):
        """item (B,), gap (B,) seconds -> (hidden (B, d_model), state updated in place)."""
        if not self.causal_step:
            self.init_state(0)
        x = self.layer_norm(self.dropout(self.item_embedding(item)))
        tau = self._tau(gap.to(x.dtype)[:, None])[:, 0]
        for i, (m, g) in enumerate(zip(self.mixers, self.gates)):
            conv_state, ssm_state, tconv = state[i]
            scale, tau = g.step(tau, tconv)
            x = self._block(i, x, m.step_scaled(x, scale, conv_state, ssm_state))
        return x, state


MODELS = {"tim4rec": TiM4Rec, "mamba4rec": Mamba4Rec, "sasrec": SASRec}

def build_net(name: str, n_items: int, max_len: int, **cfg) -> SeqRecNet:
    """``MODELS[name](n_items, max_len, **cfg)``."""
    return MODELS[name](n_items, max_len=max_len, **cfg)


def gap_stats(gaps) -> tuple:
    """(mean, std) of log1p(gap / 60) over training gaps (numpy array of seconds)."""
    import numpy as np

    z = np.log1p(np.clip(np.asarray(gaps, dtype=np.float64), 0, None) / 60.0)
    return float(z.mean()), float(z.std() + 1e-6)
