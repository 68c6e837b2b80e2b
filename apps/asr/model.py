"""Samba-ASR networks: conv subsampling (x4), a Mamba encoder (bidirectional offline, causal for
streaming), a Mamba decoder conditioned on the encoder without attention, and a CTC head.

Layouts follow mamba_ssm: every sequence tensor is ``(batch, L, d_model)``. The decoder is the
"Mamba cross-connection": one causal Mamba stack runs over ``[encoder states; token embeddings]``
of each utterance, so every token position has read the whole utterance first; only the token
positions are scored. The Conformer/Transformer baseline lives in ``baseline.py``.
"""
from __future__ import annotations

import copy
import inspect
from functools import partial
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from core.layers import BiMamba, Block, GatedMLP, InferenceParams, Mamba, RMSNorm

# arch "samba": Mamba encoder + Mamba decoder; arch "conformer": the attention baseline.
PRESETS: Dict[str, dict] = {
    "tiny": dict(arch="samba", d_model=96, enc_layers=6, dec_layers=2, d_state=16, expand=2, d_intermediate=0,
                 subsample_channels=32, causal=False, dropout=0.1),
    "small": dict(arch="samba", d_model=256, enc_layers=12, dec_layers=4, d_state=16, expand=2, d_intermediate=0,
                  subsample_channels=128, causal=False, dropout=0.1),
    "base": dict(arch="samba", d_model=512, enc_layers=12, dec_layers=6, d_state=16, expand=2, d_intermediate=0,
                 subsample_channels=256, causal=False, dropout=0.1),
    "large": dict(arch="samba", d_model=768, enc_layers=24, dec_layers=8, d_state=16, expand=2, d_intermediate=0,
                  subsample_channels=256, causal=False, dropout=0.1),
    "conformer-tiny": dict(arch="conformer", d_model=96, enc_layers=4, dec_layers=2, heads=4, ff_mult=4,
                           conv_kernel=15, subsample_channels=32, dropout=0.1),
    "conformer-small": dict(arch="conformer", d_model=256, enc_layers=12, dec_layers=6, heads=4, ff_mult=4,
                            conv_kernel=31, subsample_channels=256, dropout=0.1),
}


def model_config(preset: str = "small", **overrides) -> dict:
    """A preset's config with ``overrides`` applied (unknown preset or key -> ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model keys {unknown} for preset {preset!r}; known: {sorted(cfg)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after two k=3, s=2 valid convolutions: ``((T - 1) // 2 - 1) // 2``."""
    return torch.div(torch.div(lengths - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor").clamp(min=0)


class Conv2dSubsampling(nn.Module):
    """ESPnet's Conv2dSubsampling: two 3x3 stride-2 convs + ReLU over (time, mel), then Linear.

    ``(B, T, n_mels)`` -> ``(B, ((T - 1) // 2 - 1) // 2, d_model)``; no padding in time, so the
    output at frame j reads input frames 4j .. 4j + 6 only (streams exactly, see ``SubsampleStream``).
    """

    def __init__(self, n_mels: int, d_model: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 2)
        self.conv2 = nn.Conv2d(channels, channels, 3, 2)
        f = ((n_mels - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * f, d_model)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Conv2 output (B, C, T', F') -> (B, T', d_model)."""
        b, c, t, f = h.shape
        return self.out(h.transpose(1, 2).reshape(b, t, c * f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x[:, None]))
        return self.head(torch.relu(self.conv2(h)))


class SubsampleStream:
    """Streaming state of :class:`Conv2dSubsampling`: feed feature frames, get the output frames
    whose whole receptive field has arrived (identical to the offline convolution)."""

    def __init__(self, sub: Conv2dSubsampling):
        self.sub = sub
        self.buf1: Optional[torch.Tensor] = None   # (1, 1, t, F) input frames not consumed yet
        self.buf2: Optional[torch.Tensor] = None   # (1, C, t, F1) conv1 outputs not consumed yet

    @staticmethod
    def _run(conv: nn.Conv2d, buf: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        n = buf.shape[2]
        if n < 3:
            return None, buf
        k = (n - 3) // 2 + 1
        y = conv(buf[:, :, : 2 * (k - 1) + 3])
        return y, buf[:, :, 2 * k:]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (1, t, n_mels) -> (1, t', d_model) (t' may be 0)."""
        x = frames[:, None]
        self.buf1 = x if self.buf1 is None else torch.cat([self.buf1, x], 2)
        y1, self.buf1 = self._run(self.sub.conv1, self.buf1)
        if y1 is not None:
            y1 = torch.relu(y1)
            self.buf2 = y1 if self.buf2 is None else torch.cat([self.buf2, y1], 2)
        if self.buf2 is None:
            return frames.new_zeros(1, 0, self.sub.out.out_features)
        y2, self.buf2 = self._run(self.sub.conv2, self.buf2)
        if y2 is None:
            return frames.new_zeros(1, 0, self.sub.out.out_features)
        return self.sub.head(torch.relu(y2))


class MambaStack(nn.Module):
    """Pre-norm residual stack of core ``Block``s (RMSNorm, optional GatedMLP) + final norm.

    ``forward(x (B, L, d), lengths=None, inference_params=None) -> (B, L, d)``; causal stacks stream
    through ``inference_params`` (mamba_ssm's convention: the caller advances ``seqlen_offset``).
    """

    def __init__(self, d_model: int, n_layer: int, bidirectional: bool, d_state: int = 16, expand: int = 2,
                 d_intermediate: int = 0, dropout: float = 0.0):
        super().__init__()
        from core.layers.block import _init_weights

        # core's BiMamba with ``lengths`` reverses each utterance within its own length, so the
        # backward scan never starts on padding
        mixer = partial(BiMamba, combine="add") if bidirectional else Mamba
        norm = partial(RMSNorm, eps=1e-5)
        mlp = partial(GatedMLP, hidden_features=d_intermediate, out_features=d_model) if d_intermediate else None
        self.layers = nn.ModuleList(
            Block(d_model, partial(mixer, layer_idx=i, d_state=d_state, expand=expand), mlp, norm_cls=norm)
            for i in range(n_layer))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm_f = norm(d_model)
        for layer in self.layers:
            for name, m in layer.named_modules():
                if name.endswith("out_proj") or name.endswith("fc2"):
                    m._is_residual_out = True
        self.apply(partial(_init_weights, n_layer=n_layer, n_residuals_per_layer=2 if d_intermediate else 1))

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                inference_params: Optional[InferenceParams] = None) -> torch.Tensor:
        residual = None
        kw = {} if lengths is None else {"lengths": lengths}
        for layer in self.layers:
            x, residual = layer(x, residual, inference_params=inference_params, **kw)
            x = self.drop(x)
        return self.norm_f(x + residual)


def _init_keys(cls) -> set:
    """The keyword arguments ``cls`` takes."""
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


class SambaEncoder(nn.Module):
    """Features ``(B, T, n_mels)`` + lengths -> encoder states ``(B, T', d_model)`` + lengths (T' ~ T/4)."""

    def __init__(self, n_mels: int, d_model: int, enc_layers: int, d_state: int = 16, expand: int = 2,
                 d_intermediate: int = 0, subsample_channels: int = 64, causal: bool = False,
                 dropout: float = 0.1):
        super().__init__()
        self.causal = causal
        self.subsample = Conv2dSubsampling(n_mels, d_model, subsample_channels)
        self.drop = nn.Dropout(dropout)
        self.stack = MambaStack(d_model, enc_layers, not causal, d_state, expand, d_intermediate, dropout)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(self.subsample(feats))
        out_len = subsampled_lengths(lengths).clamp(max=h.shape[1])
        return self.stack(h, None if self.causal else out_len), out_len


class EncoderStream:
    """Chunk-by-chunk causal encoder: subsampling buffers + the Mamba states (no recomputation).
    ``__call__(frames (1, t, n_mels)) -> (1, t', d_model)``; outputs equal the offline encoder's."""

    def __init__(self, encoder: SambaEncoder):
        if not encoder.causal:
            raise NotImplementedError("this model's encoder is bidirectional and cannot stream; "
                                      "train one with model.causal=true")
        self.enc = encoder
        self.sub = SubsampleStream(encoder.subsample)
        self.params = InferenceParams(max_seqlen=1, max_batch_size=1)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.sub(frames)
        if h.shape[1] == 0:
            return h
        out = self.enc.stack(h, inference_params=self.params)
        self.params.seqlen_offset += h.shape[1]
        return out


class SambaDecoder(nn.Module):
    """Mamba decoder over ``[encoder states; token embeddings]`` (no attention).

    ``forward(enc (B, T, d), enc_lens (B,), ys_in (B, U) token ids, ys_lens (B,)) -> logits (B, U, V)``:
    utterance b is laid out as its ``enc_lens[b]`` encoder states then its ``ys_lens[b]`` tokens, and
    the causal stack's outputs at the token positions score the next token.
    """

    def __init__(self, vocab_size: int, d_model: int, dec_layers: int, d_state: int = 16, expand: int = 2,
                 d_intermediate: int = 0, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.enc_proj = nn.Linear(d_model, d_model)
        self.segment = nn.Embedding(2, d_model)           # 0: encoder position, 1: token position
        self.stack = MambaStack(d_model, dec_layers, False, d_state, expand, d_intermediate, dropout)
        self.out = nn.Linear(d_model, vocab_size)

    def _enc_part(self, enc: torch.Tensor) -> torch.Tensor:
        return self.enc_proj(enc) + self.segment.weight[0]

    def _tok_part(self, ys: torch.Tensor) -> torch.Tensor:
        return self.embed(ys) + self.segment.weight[1]

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor, ys_in: torch.Tensor,
                ys_lens: torch.Tensor) -> torch.Tensor:
        B, T, _ = enc.shape
        U = ys_in.shape[1]
        e, t = self._enc_part(enc), self._tok_part(ys_in.clamp(min=0))
        L = T + U
        pos = torch.arange(L, device=enc.device)[None].expand(B, L)
        el = enc_lens.to(enc.device)[:, None]
        is_enc = pos < el
        e_idx = pos.clamp(max=T - 1)
        t_idx = (pos - el).clamp(min=0, max=U - 1)
        seq = torch.where(is_enc[..., None], e.gather(1, e_idx[..., None].expand(B, L, e.shape[2])),
                          t.gather(1, t_idx[..., None].expand(B, L, t.shape[2])))
        h = self.stack(seq)
        out_idx = (el + torch.arange(U, device=enc.device)[None]).clamp(max=L - 1)   # (B, U)
        return self.out(h.gather(1, out_idx[..., None].expand(B, U, h.shape[2])))

    # -- incremental decoding (beam search) --------------------------------------------------------
    @torch.no_grad()
    def init_state(self, enc: torch.Tensor) -> InferenceParams:
        """Read one utterance's encoder states ``(1, T, d)``; returns the decoding state."""
        params = InferenceParams(max_seqlen=enc.shape[1] + 1, max_batch_size=1)
        self.stack(self._enc_part(enc), inference_params=params)
        params.seqlen_offset += enc.shape[1]
        return params

    @torch.no_grad()
    def step(self, state: InferenceParams, tokens: torch.Tensor) -> Tuple[torch.Tensor, InferenceParams]:
        """Feed the last token of each hypothesis ``(n,)`` -> next-token log-probs ``(n, V)``."""
        h = self.stack(self._tok_part(tokens[:, None]), inference_params=state)
        state.seqlen_offset += 1
        return torch.log_softmax(self.out(h[:, -1]).float(), -1), state

    @staticmethod
    def reorder(state: InferenceParams, idx: torch.Tensor) -> InferenceParams:
        """Keep hypotheses ``idx`` (n',) of the batch (beam pruning / expansion)."""
        state.key_value_memory_dict = {k: tuple(s.index_select(0, idx) for s in v)
                                       for k, v in state.key_value_memory_dict.items()}
        return state


class ASRNet(nn.Module):
    """Encoder + CTC head + decoder (``arch`` "samba" or the "conformer" baseline).

    ``encode(feats (B, T, n_mels), lengths) -> (enc (B, T', d), enc_lens)``; ``ctc_logits(enc) -> (B, T', V)``;
    ``decoder(enc, enc_lens, ys_in, ys_lens) -> (B, U, V)`` plus ``init_state``/``step``/``reorder``.
    """

    def __init__(self, vocab_size: int, n_mels: int = 80, **cfg):
        super().__init__()
        arch = cfg.get("arch", "samba")
        if arch == "samba":
            enc_cls, dec_cls = SambaEncoder, SambaDecoder
        elif arch == "conformer":
            from .baseline import ConformerEncoder, TransformerDecoder

            enc_cls, dec_cls = ConformerEncoder, TransformerDecoder
        else:
            raise ValueError(f"unknown arch {arch!r} (samba or conformer)")
        # one config for both halves: each takes its own keys; a key neither takes is an error
        enc_keys, dec_keys = _init_keys(enc_cls), _init_keys(dec_cls)
        unused = sorted(set(cfg) - enc_keys - dec_keys - {"arch"})
        if unused:
            raise ValueError(f"model keys {unused} are not used by the {arch} model")
        self.encoder = enc_cls(n_mels, **{k: v for k, v in cfg.items() if k in enc_keys})
        self.decoder = dec_cls(vocab_size, **{k: v for k, v in cfg.items() if k in dec_keys})
        self.ctc = nn.Linear(cfg["d_model"], vocab_size)

    @property
    def causal(self) -> bool:
        return bool(getattr(self.encoder, "causal", False))

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(feats, lengths)

    def ctc_logits(self, enc: torch.Tensor) -> torch.Tensor:
        return self.ctc(enc)


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
