"""The attention baseline of similar size: Conformer encoder (ESPnet layout, absolute sinusoidal
positions) and Transformer decoder, with the same interface as the Samba-ASR parts."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn

from .model import Conv2dSubsampling, subsampled_lengths


def sinusoid(L: int, d: int, device=None) -> torch.Tensor:
    """(L, d) sinusoidal positional encoding."""
    pos = torch.arange(L, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(L, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


class FeedForward(nn.Sequential):
    def __init__(self, d: int, mult: int, dropout: float):
        super().__init__(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(mult * d, d), nn.Dropout(dropout))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm, SiLU, pointwise conv. (B, L, d) -> (B, L, d)."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).masked_fill(pad_mask[..., None], 0.0).transpose(1, 2)
        h = nn.functional.glu(self.pw1(h), dim=1)
        h = self.pw2(nn.functional.silu(self.bn(self.dw(h))))
        return self.drop(h.transpose(1, 2))


class ConformerBlock(nn.Module):
    """Macaron FFN/2, MHSA, conv module, FFN/2, LayerNorm (Gulati et al. 2020)."""

    def __init__(self, d: int, heads: int, ff_mult: int, conv_kernel: int, dropout: float):
        super().__init__()
        self.ff1, self.ff2 = FeedForward(d, ff_mult, dropout), FeedForward(d, ff_mult, dropout)
        self.norm_att = nn.LayerNorm(d)
        self.att = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.conv = ConvModule(d, conv_kernel, dropout)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.norm_att(x)
        x = x + self.drop(self.att(h, h, h, key_padding_mask=pad_mask, need_weights=False)[0])
        x = x + self.conv(x, pad_mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """Features ``(B, T, n_mels)`` + lengths -> ``(B, T', d_model)`` + lengths; offline only."""

    causal = False

    def __init__(self, n_mels: int, d_model: int, enc_layers: int, heads: int = 4, ff_mult: int = 4,
                 conv_kernel: int = 15, subsample_channels: int = 64, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.subsample = Conv2dSubsampling(n_mels, d_model, subsample_channels)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(ConformerBlock(d_model, heads, ff_mult, conv_kernel, dropout)
                                    for _ in range(enc_layers))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.subsample(feats)
        B, L, d = h.shape
        out_len = subsampled_lengths(lengths).clamp(max=L)
        h = self.drop(h * math.sqrt(d) + sinusoid(L, d, h.device))
        pad = torch.arange(L, device=h.device)[None] >= out_len.to(h.device)[:, None]
        for layer in self.layers:
            h = layer(h, pad)
        return h, out_len


class TransformerDecoder(nn.Module):
    """Pre-norm Transformer decoder with cross-attention. ``forward(enc, enc_lens, ys_in, ys_lens)
    -> (B, U, V)``; ``init_state``/``step``/``reorder`` recompute the prefix (no cache)."""

    def __init__(self, vocab_size: int, d_model: int, dec_layers: int, heads: int = 4, ff_mult: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        layer = nn.TransformerDecoderLayer(d_model, heads, ff_mult * d_model, dropout, batch_first=True,
                                           norm_first=True)
        self.dec = nn.TransformerDecoder(layer, dec_layers, norm=nn.LayerNorm(d_model))
        self.out = nn.Linear(d_model, vocab_size)

    def _run(self, enc, enc_pad, ys):
        U, d = ys.shape[1], self.embed.embedding_dim
        x = self.embed(ys.clamp(min=0)) * math.sqrt(d) + sinusoid(U, d, ys.device)
        causal = torch.triu(torch.full((U, U), float("-inf"), device=ys.device), 1)
        return self.out(self.dec(x, enc, tgt_mask=causal, memory_key_padding_mask=enc_pad))

    def forward(self, enc, enc_lens, ys_in, ys_lens):
        pad = torch.arange(enc.shape[1], device=enc.device)[None] >= enc_lens.to(enc.device)[:, None]
        return self._run(enc, pad, ys_in)

    @torch.no_grad()
    def init_state(self, enc: torch.Tensor) -> dict:
        return {"enc": enc, "ys": torch.zeros(1, 0, dtype=torch.long, device=enc.device)}

    @torch.no_grad()
    def step(self, state: dict, tokens: torch.Tensor):
        ys = torch.cat([state["ys"], tokens[:, None]], 1)
        enc = state["enc"].expand(ys.shape[0], -1, -1)
        logits = self._run(enc, None, ys)[:, -1]
        return torch.log_softmax(logits.float(), -1), {"enc": state["enc"], "ys": ys}

    @staticmethod
    def reorder(state: dict, idx: torch.Tensor) -> dict:
        return {"enc": state["enc"], "ys": state["ys"].index_select(0, idx)}
