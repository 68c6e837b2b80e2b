"""Streaming state shared by every layer: ``InferenceParams`` and small helpers.

Every causal layer follows mamba_ssm's convention: ``forward(x, inference_params)``
keeps its states in ``inference_params.key_value_memory_dict[layer_idx]``; the
caller advances ``seqlen_offset`` by the number of tokens it fed. At offset 0 the
states start from zero (stale contents are ignored), later calls continue from
them, with any number of tokens (chunked prefill) or one token (decoding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from core.ops import available_backends, causal_conv1d

_HALF = (torch.float16, torch.bfloat16)


@dataclass
class InferenceParams:
    """Decoding state like ``mamba_ssm.utils.generation.InferenceParams``.

    Attributes:
        max_seqlen, max_batch_size: sizes the caches are allocated for.
        seqlen_offset: tokens already consumed; the caller adds L after each forward.
        key_value_memory_dict: ``layer_idx`` -> that layer's state tensors.
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        """Start a new sequence: offset back to 0 (states are re-zeroed on the next forward)."""
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def fp32_at_least(t: torch.Tensor) -> torch.Tensor:
    """Half tensors to fp32; fp32/fp64 unchanged (so float64 tests stay float64)."""
    return t.float() if t.dtype in _HALF else t


def op_backend(op: str, backend: str) -> str:
    """``backend`` if ``op`` has it, else "auto" (a scan backend name may not exist for the conv)."""
    if backend == "auto" or backend in available_backends(op):
        return backend
    return "auto"


def cache_key(module: nn.Module) -> Any:
    """The ``key_value_memory_dict`` key of a layer: its ``layer_idx``, or the module itself."""
    idx = getattr(module, "layer_idx", None)
    return module if idx is None else idx


def get_states_from_cache(module: nn.Module, inference_params: InferenceParams, batch_size: int):
    """The layer's cached states, allocated (zeros) on first use."""
    key = cache_key(module)
    states = inference_params.key_value_memory_dict.get(key)
    if states is None:
        states = module.allocate_inference_cache(batch_size, inference_params.max_seqlen)
        inference_params.key_value_memory_dict[key] = states
    return states


def cached_states(module: nn.Module, inference_params: Optional[InferenceParams], batch_size: int):
    """(conv_state, ssm_state, fresh) for a full-sequence forward.

    The states are ``None`` without ``inference_params``; ``fresh`` means the
    scan starts from zero (no cache, or ``seqlen_offset == 0``).
    """
    if inference_params is None:
        return None, None, True
    conv_state, ssm_state = get_states_from_cache(module, inference_params, batch_size)
    return conv_state, ssm_state, inference_params.seqlen_offset == 0


def cached_causal_conv(module: nn.Module, x: torch.Tensor, conv_state: Optional[torch.Tensor],
                       fresh: bool, seq_idx: Optional[torch.Tensor] = None,
                       lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The layer's ``conv1d`` as a causal conv of x (batch, dim, L) -> (batch, dim, L).

    Continues from ``conv_state`` (batch, dim, d_conv) unless ``fresh``, and
    leaves the last ``d_conv`` inputs in it (in place). ``seq_idx`` (batch, L):
    packed sequences; the state kept is then the last sequence's only.
    ``lengths`` (batch,): a padded batch; the state kept ends at each row's length.
    """
    # Clone: the kernels may save their inputs for backward while the cache changes in place.
    init_conv = None if (conv_state is None or fresh) else conv_state[..., 1:].clone()
    if conv_state is not None:
        new = conv_state_after(None if fresh else conv_state, x.detach(), module.d_conv, lengths)
        if seq_idx is not None:  # inputs of earlier sequences must not feed the next steps
            W = module.d_conv
            sq = torch.cat([seq_idx[:, :1].expand(-1, W), seq_idx], dim=1)[:, -W:]
            new = new * (sq == seq_idx[:, -1:])[:, None].to(new.dtype)
        conv_state.copy_(new)
    return causal_conv1d(x, module.conv1d.weight.squeeze(1), module.conv1d.bias, activation=module.activation,
                         initial_states=init_conv, seq_idx=seq_idx,
                         backend=op_backend("causal_conv1d", module.backend))


def conv_state_after(conv_state: Optional[torch.Tensor], x: torch.Tensor, width: int,
                     lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The last ``width`` conv inputs after feeding ``x`` (batch, dim, L) on top of ``conv_state``
    (only the first ``lengths[b]`` steps of row b when ``lengths`` is given)."""
    if lengths is not None:
        prev = (conv_state.to(x.dtype) if conv_state is not None
                else x.new_zeros(x.shape[0], x.shape[1], width))
        full = torch.cat([prev, x], dim=-1)                   # x[t] sits at width + t
        idx = lengths.to(x.device)[:, None] + torch.arange(width, device=x.device)
        return full.gather(2, idx[:, None].expand(-1, x.shape[1], -1))
    if conv_state is None:
        return nn.functional.pad(x, (width - x.shape[-1], 0)) if x.shape[-1] < width else x[..., -width:]
    return torch.cat([conv_state.to(x.dtype), x], dim=-1)[..., -width:]


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` on every submodule that has one (e.g. "reference" in tests); returns ``module``."""
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module
