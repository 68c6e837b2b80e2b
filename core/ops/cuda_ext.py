"""The CUDA packages as backends: "mamba_ssm" (selective scan, SSD) and "causal_conv1d".

Registered only when the packages import; ``can_run`` is ``tensor.is_cuda``.
Where a package lacks a feature our API has, the call goes to the next
backend instead (pure torch: our Triton kernels are chosen by name only until they
have been measured on a GPU), so results never silently differ:

* ``selective_scan_fn`` has no initial state and ignores the last state's
  gradient: with ``initial_state`` or ``return_last_state`` we use torch.
* float64 inputs (the kernels support fp32/fp16/bf16 only) go to torch.
* ``causal_conv1d_fn`` supports widths 2..4 and needs channel-last ``x`` with
  ``initial_states`` or ``seq_idx``; other widths use torch's grouped conv.
* Packed sequences (``seq_idx``): ``selective_scan_fn`` has none, so torch runs
  them; ``mamba_chunk_scan_combined`` and ``causal_conv1d_fn`` take ``seq_idx``
  but not together with initial states, which then go to torch as well.

Not testable on a machine without a GPU; written against the packages'
documented signatures (mamba_ssm >= 2.2, causal-conv1d >= 1.4).
"""
from __future__ import annotations

import torch

from .dispatch import _REGISTRY, register_backend
from .varlen import check_seq_idx

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _ss_fn
except Exception:  # ImportError, or a broken CUDA build
    _ss_fn = None
try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _ssd_fn
except Exception:
    _ssd_fn = None
try:
    from causal_conv1d import causal_conv1d_fn as _conv_fn
    from causal_conv1d import causal_conv1d_update as _conv_update_fn
except Exception:
    _conv_fn = _conv_update_fn = None

_HALF_OR_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


def _fallback(op: str, *args, **kwargs):
    """Run ``op`` with the best backend for these tensors other than the packages."""
    t = args[0]
    if kwargs.get("seq_idx") is None:
        kwargs.pop("seq_idx", None)
    for name in ("torch", "reference"):  # not Triton: unmeasured on a GPU, by name only (dispatch._BUILTIN)
        entry = _REGISTRY[op].get(name)
        if entry is not None and entry[1](t):
            return entry[0](*args, **kwargs)
    raise RuntimeError(f"{op}: no fallback backend registered")


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False, initial_state=None,
                             seq_idx=None):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (same argument names)."""
    if (initial_state is not None or return_last_state or seq_idx is not None
            or u.dtype not in _HALF_OR_FLOAT):
        return _fallback("selective_scan", u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                         delta_softplus=delta_softplus, return_last_state=return_last_state,
                         initial_state=initial_state, seq_idx=seq_idx)
    # the CUDA kernel wants A, D and delta_bias in fp32
    return _ss_fn(u, delta, A.float(), B, C, D=None if D is None else D.float(), z=z,
                  delta_bias=None if delta_bias is None else delta_bias.float(),
                  delta_softplus=delta_softplus, return_last_state=False)


def ssd_scan_mamba_ssm(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None,
                       dt_softplus=False, initial_states=None, return_final_states=False,
                       dt_limit=(0.0, float("inf")), seq_idx=None):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` (same argument names)."""
    if x.dtype not in _HALF_OR_FLOAT or (seq_idx is not None and initial_states is not None):
        return _fallback("ssd_scan", x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z,
                         dt_bias=dt_bias, dt_softplus=dt_softplus, initial_states=initial_states,
                         return_final_states=return_final_states, dt_limit=dt_limit, seq_idx=seq_idx)
    kw = {} if seq_idx is None else {"seq_idx": check_seq_idx(seq_idx, x.shape[0], x.shape[1])}
    return _ssd_fn(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                   initial_states=initial_states, dt_softplus=dt_softplus,
                   dt_limit=tuple(dt_limit), return_final_states=return_final_states, **kw)


def causal_conv1d_cuda(x, weight, bias=None, activation=None, initial_states=None, seq_idx=None):
    """``causal_conv1d.causal_conv1d_fn``; x (batch, dim, L), weight (dim, width)."""
    width = weight.shape[1]
    if (not 2 <= width <= 4 or x.dtype not in _HALF_OR_FLOAT
            or (seq_idx is not None and initial_states is not None)):
        return _fallback("causal_conv1d", x, weight, bias=bias, activation=activation,
                         initial_states=initial_states, seq_idx=seq_idx)
    if seq_idx is not None:  # the kernel takes seq_idx only with channel-last x
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        return _conv_fn(x, weight, bias=bias, seq_idx=check_seq_idx(seq_idx, x.shape[0], x.shape[-1]),
                        activation=activation)
    if initial_states is not None:
        # the kernel takes initial states only with channel-last x (stride(1) == 1)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        initial_states = initial_states.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    return _conv_fn(x, weight, bias=bias, initial_states=initial_states, activation=activation)


def causal_conv1d_update_cuda(x, conv_state, weight, bias=None, activation=None):
    """``causal_conv1d.causal_conv1d_update``; x (batch, dim), conv_state (batch, dim, width) in place."""
    if x.dtype not in _HALF_OR_FLOAT or conv_state.dtype not in _HALF_OR_FLOAT:
        return _REGISTRY["causal_conv1d_update"]["reference"][0](x, conv_state, weight, bias=bias,
                                                                 activation=activation)
    return _conv_update_fn(x, conv_state, weight, bias=bias, activation=activation)


def _is_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


if _ss_fn is not None:
    register_backend("selective_scan", "mamba_ssm", selective_scan_mamba_ssm, _is_cuda)
if _ssd_fn is not None:
    register_backend("ssd_scan", "mamba_ssm", ssd_scan_mamba_ssm, _is_cuda)
if _conv_fn is not None:
    register_backend("causal_conv1d", "causal_conv1d", causal_conv1d_cuda, _is_cuda)
    register_backend("causal_conv1d_update", "causal_conv1d", causal_conv1d_update_cuda, _is_cuda)
