"""Residual block (mamba_ssm's ``Block``), ``GatedMLP``, a mixer registry and ``SSMBackbone``."""
from __future__ import annotations

import importlib
import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inference import InferenceParams
from .norm import RMSNorm
from .ragged import ragged

# mixer name -> "module:Class"; imported lazily so the registry never cycles.
MIXERS = {
    "mamba": "core.layers.mamba:Mamba",
    "mamba2": "core.layers.mamba2:Mamba2",
    "s4d": "core.layers.s4d:S4D",
    "bimamba": "core.layers.bidirectional:BiMamba",
    "hydra": "core.layers.bidirectional:Hydra",
}
BIDIRECTIONAL = {"bimamba", "hydra"}


def mixer_class(name: str) -> type:
    """The layer class registered under ``name`` (one of ``MIXERS``)."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    mod, cls = MIXERS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def make_mixer(name: str, d_model: int, layer_idx: Optional[int] = None, **kwargs) -> nn.Module:
    """Build mixer ``name`` ("mamba", "mamba2", "s4d", "bimamba", "hydra"): (B, L, d_model) -> same."""
    return mixer_class(name)(d_model, layer_idx=layer_idx, **kwargs)


class GatedMLP(nn.Module):
    """mamba_ssm's ``GatedMLP``: ``fc2(y * act(gate))`` with ``y, gate = fc1(x).chunk(2)``.

    (..., in_features) -> (..., out_features). ``hidden_features`` defaults to 8/3 * in and
    is rounded up to a multiple of ``multiple_of``.
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, activation=F.silu,
                 bias=False, multiple_of=128, device=None, dtype=None):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        out_features = out_features if out_features is not None else in_features
        hidden = hidden_features if hidden_features is not None else int(8 * in_features / 3)
        hidden = (hidden + multiple_of - 1) // multiple_of * multiple_of
        self.activation = activation
        self.fc1 = nn.Linear(in_features, 2 * hidden, bias=bias, **factory)
        self.fc2 = nn.Linear(hidden, out_features, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * self.activation(gate))


class Block(nn.Module):
    """mamba_ssm's pre-norm residual block with the (hidden_states, residual) interface.

    ``forward(hidden_states (B, L, dim), residual=None, inference_params=None)`` returns
    ``(hidden_states, residual)``, both (B, L, dim): ``residual = hidden_states + residual``,
    ``hidden_states = mixer(norm(residual))``; with an MLP the same again with ``norm2``/``mlp``.
    ``mixer_cls``, ``mlp_cls`` and ``norm_cls`` are called with ``dim``; ``mlp_cls`` None or
    ``nn.Identity`` means no MLP. ``fused_add_norm`` is accepted for compatibility (same maths).
    """

    def __init__(self, dim: int, mixer_cls: Callable, mlp_cls: Optional[Callable] = None,
                 norm_cls: Callable = nn.LayerNorm, fused_add_norm: bool = False,
                 residual_in_fp32: bool = False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        if mlp_cls is not None and mlp_cls is not nn.Identity:
            self.norm2 = norm_cls(dim)
            self.mlp = mlp_cls(dim)
        else:
            self.mlp = None

    def forward(self, hidden_states: torch.Tensor, residual: Optional[torch.Tensor] = None,
                inference_params: Optional[InferenceParams] = None, **mixer_kwargs):
        residual = hidden_states + residual if residual is not None else hidden_states
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        if inference_params is not None:
            mixer_kwargs["inference_params"] = inference_params
        hidden_states = self.mixer(hidden_states, **mixer_kwargs)
        if self.mlp is not None:
            residual = hidden_states + residual
            hidden_states = self.norm2(residual.to(dtype=self.norm2.weight.dtype))
            if self.residual_in_fp32:
                residual = residual.to(torch.float32)
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """The mixer's states (see its ``allocate_inference_cache``)."""
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)


def _init_weights(module: nn.Module, n_layer: int, rescale_prenorm_residual: bool = True,
                  n_residuals_per_layer: int = 1) -> None:
    """mamba_ssm's ``_init_weights``: zero Linear biases (unless ``_no_reinit``) and shrink the
    output projections by 1/sqrt(n_residuals_per_layer * n_layer) (GPT-2 style)."""
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and getattr(module, "_is_residual_out", False):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)


class SSMBackbone(nn.Module):
    """A stack of ``Block``s and a final norm: a generic (B, L, d_model) -> (B, L, d_model) backbone.

    Args:
        mixer: "mamba", "mamba2", "s4d", "bimamba" or "hydra"; ``mixer_kwargs`` go to its constructor.
        d_intermediate: hidden size of a ``GatedMLP`` after each mixer (0: no MLP).
        norm: "rms" (``RMSNorm``) or "layer" (``nn.LayerNorm``), eps ``norm_epsilon``.
        dropout: applied to each block's output branch before it joins the residual stream.
    Parameter names follow mamba_ssm's ``MixerModel`` (``layers.{i}.norm``, ``layers.{i}.mixer.*``,
    ``layers.{i}.norm2``/``mlp.fc1``/``mlp.fc2``, ``norm_f``): its state dict (or a Hugging Face
    ``MambaModel``/``Mamba2Model``'s) without the embedding loads with strict=True.
    Streaming (causal mixers only): ``allocate_inference_cache`` / ``forward(x, inference_params)``
    as in mamba_ssm, or ``step(x (B, l, d_model), inference_params)`` which also advances the offset.
    """

    def __init__(self, d_model: int, n_layer: int, mixer: str = "mamba", mixer_kwargs: dict | None = None,
                 d_intermediate: int = 0, norm: str = "rms", dropout: float = 0.0,
                 norm_epsilon: float = 1e-5, residual_in_fp32: bool = False,
                 rescale_prenorm_residual: bool = True, device=None, dtype=None):
        super().__init__()
        if norm not in ("rms", "layer"):
            raise ValueError(f"SSMBackbone: norm must be 'rms' or 'layer', got {norm!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_layer, self.mixer_name = d_model, n_layer, mixer
        mixer_kwargs = dict(mixer_kwargs or {})
        norm_cls = partial(RMSNorm if norm == "rms" else nn.LayerNorm, eps=norm_epsilon, **factory)
        cls = mixer_class(mixer)
        self.layers = nn.ModuleList()
        for i in range(n_layer):
            mixer_cls = partial(cls, layer_idx=i, **mixer_kwargs, **factory)
            mlp_cls = (partial(GatedMLP, hidden_features=d_intermediate, out_features=d_model, **factory)
                       if d_intermediate > 0 else None)
            self.layers.append(Block(d_model, mixer_cls, mlp_cls, norm_cls=norm_cls,
                                     residual_in_fp32=residual_in_fp32))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm_f = norm_cls(d_model)
        for layer in self.layers:
            for name, m in layer.named_modules():
                if name.endswith("out_proj") or name.endswith("fc2"):
                    m._is_residual_out = True
        self.apply(partial(_init_weights, n_layer=n_layer, rescale_prenorm_residual=rescale_prenorm_residual,
                           n_residuals_per_layer=1 if d_intermediate == 0 else 2))

    @property
    def causal(self) -> bool:
        """True when the mixer only looks back (streaming works)."""
        return self.mixer_name not in BIDIRECTIONAL

    def forward(self, hidden_states: torch.Tensor, inference_params: Optional[InferenceParams] = None,
                *, seq_idx=None, cu_seqlens=None, lengths=None, **mixer_kwargs) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model).

        Ragged input (core.layers.ragged): ``seq_idx`` (B, L) / ``cu_seqlens`` (n + 1,) for
        packed sequences, or ``lengths`` (B,) for a padded batch; every mixer gets it, and
        padded output positions are zero.
        """
        r = ragged(hidden_states, seq_idx, cu_seqlens, lengths)  # checks them once
        # handed on as given: cu_seqlens alone with inference_params caches one state per sequence
        mixer_kwargs.update({k: v for k, v in (("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens),
                                               ("lengths", lengths)) if v is not None})
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params,
                                            **mixer_kwargs)
            hidden_states = self.drop(hidden_states)
        residual = hidden_states + residual if residual is not None else hidden_states
        out = self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
        return r.zero_padding(out) if r is not None else out

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs) -> dict:
        """{layer_idx: states} for ``InferenceParams.key_value_memory_dict``."""
        return {i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
                for i, layer in enumerate(self.layers)}

    def step(self, hidden_states: torch.Tensor, inference_params: InferenceParams) -> torch.Tensor:
        """Feed the next tokens (B, l, d_model) (l >= 1) and advance ``inference_params.seqlen_offset``."""
        if not self.causal:
            raise NotImplementedError(f"SSMBackbone: mixer {self.mixer_name!r} is bidirectional and "
                                      "needs the whole sequence; streaming needs a causal mixer")
        out = self.forward(hidden_states, inference_params=inference_params)
        inference_params.seqlen_offset += hidden_states.shape[1]
        return out
