"""Backend registry and the public op entry points."""
from __future__ import annotations

import importlib.util
import inspect
import os
from typing import Callable, Dict, List, Optional

import torch

from . import reference
from .varlen import check_seq_idx

# op name -> backend name -> (implementation, can_run(tensor) -> bool, priority, auto, why_unavailable)
_REGISTRY: Dict[str, Dict[str, tuple]] = {
    "selective_scan": {}, "ssd_scan": {}, "causal_conv1d": {}, "causal_conv1d_update": {},
}
# Priority (higher first) and whether backend="auto" may choose it, for the backends shipped here;
# a backend registered under another name gets DEFAULT_PRIORITY (above torch, below the C scan).
# The Triton kernels are chosen by name only: they have not been measured on a GPU yet, so on
# CUDA tensors auto takes mamba_ssm / causal_conv1d if installed, else the torch forms.
_BUILTIN = {"mamba_ssm": (100, True), "causal_conv1d": (100, True), "cpu": (80, True), "torch": (40, True),
            "triton": (30, False), "reference": (0, True)}
DEFAULT_PRIORITY = 50


def _any_device(t: torch.Tensor) -> bool:
    return True


def register_backend(op: str, name: str, fn: Callable, can_run: Callable[[torch.Tensor], bool] = _any_device,
                     priority: Optional[int] = None, auto: Optional[bool] = None,
                     why_unavailable: Optional[Callable[[], Optional[str]]] = None):
    """Register ``fn`` as backend ``name`` of ``op``.

    ``can_run(first_tensor_arg)`` says whether it runs on those tensors; ``backend="auto"`` takes
    the highest ``priority`` backend that can run (default :data:`DEFAULT_PRIORITY`, so a newly
    registered backend is preferred to the pure-torch one); ``auto=False`` makes it by-name only;
    ``why_unavailable()`` returns None when it works here, else the reason (it is then hidden
    from :func:`available_backends` and refused by name with that reason).
    """
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; ops are {sorted(_REGISTRY)}")
    p, a = _BUILTIN.get(name, (DEFAULT_PRIORITY, True))
    _REGISTRY[op][name] = (fn, can_run, p if priority is None else int(priority), a if auto is None else bool(auto),
                           why_unavailable)


def unavailable_reason(op: str, name: str) -> Optional[str]:
    """None if backend ``name`` of ``op`` is registered and works here, else why not."""
    entry = _REGISTRY[op].get(name)
    if entry is None:
        return "not installed"
    return entry[4]() if entry[4] is not None else None


def available_backends(op: str = "selective_scan", device: Optional[torch.device | str] = None) -> List[str]:
    """Backends of ``op`` that can actually run here, highest priority first.

    With ``device`` only those that run on tensors of that device. The first one ``auto`` may
    choose (see :func:`resolve_backend`) is what ``backend="auto"`` uses.
    """
    names = [n for n in sorted(_REGISTRY[op], key=lambda n: -_REGISTRY[op][n][2])
             if unavailable_reason(op, n) is None]
    if device is None:
        return names
    probe = torch.empty(0, device=device) if str(device) != "meta" else torch.empty(0)
    return [n for n in names if _REGISTRY[op][n][1](probe)]


def resolve_backend(op: str, backend: str, tensor: torch.Tensor) -> str:
    """The backend name that ``backend`` ("auto" or a name) means for ``tensor``."""
    table = _REGISTRY[op]
    if backend != "auto":
        if backend not in table:
            raise ValueError(f"{op}: backend {backend!r} is not available here; "
                             f"available: {available_backends(op)}")
        why = unavailable_reason(op, backend)
        if why is not None:
            raise ValueError(f"{op}: backend {backend!r} cannot run here ({why}); "
                             f"available: {available_backends(op)}")
        if not table[backend][1](tensor):
            raise ValueError(f"{op}: backend {backend!r} cannot run on {tensor.device} tensors")
        return backend
    for name in available_backends(op):
        if table[name][3] and table[name][1](tensor):
            return name
    return "reference"


def _takes_seq_idx(op: str, name: str) -> bool:
    """Whether backend ``name`` of ``op`` accepts ``seq_idx`` (read from its signature)."""
    try:
        return "seq_idx" in inspect.signature(_REGISTRY[op][name][0]).parameters
    except (TypeError, ValueError):
        return False


def _pick(op: str, backend: str, tensor: torch.Tensor, seq_idx) -> tuple:
    """(implementation, extra kwargs): :func:`resolve_backend`, but with ``seq_idx`` only
    backends that take it (never one that would ignore it)."""
    name = resolve_backend(op, backend, tensor)
    if seq_idx is None:
        return _REGISTRY[op][name][0], {}
    if not _takes_seq_idx(op, name):
        ok = [n for n in available_backends(op) if _takes_seq_idx(op, n)]
        if backend != "auto":
            raise ValueError(f"{op}: backend {name!r} does not support seq_idx (packed sequences); "
                             f"backends that do: {ok}")
        name = next((n for n in ok if _REGISTRY[op][n][3] and _REGISTRY[op][n][1](tensor)), "reference")
    return _REGISTRY[op][name][0], {"seq_idx": seq_idx}


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, seq_idx=None, backend="auto"):
    """Mamba-1 selective scan (``selective_scan_fn`` semantics).

    Shapes: ``u, delta, z``: (batch, dim, L); ``A``: (dim, N); ``B, C``:
    (batch, N, L) or grouped (batch, G, N, L); ``D, delta_bias``: (dim,);
    ``initial_state``: (batch, dim, N); ``seq_idx``: (batch, L) int32, packed
    sequences (the state restarts from zero wherever it changes; ``initial_state``
    belongs to the first sequence, the last state to the last one). Returns out
    (batch, dim, L) and, with ``return_last_state``, the last state (batch, dim, N).
    """
    fn, kw = _pick("selective_scan", backend, u, seq_idx)
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=return_last_state, initial_state=initial_state, **kw)


def ssd_scan(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
             initial_states=None, return_final_states=False, dt_limit=(0.0, float("inf")),
             seq_idx=None, backend="auto"):
    """Mamba-2 SSD scan (``mamba_chunk_scan_combined`` semantics).

    Shapes: ``x``: (batch, L, heads, headdim); ``dt``: (batch, L, heads);
    ``A``: (heads,); ``B, C``: (batch, L, groups, N); ``D``: (heads,) or
    (heads, headdim); ``z``: like ``x``; ``initial_states``: (batch, heads,
    headdim, N); ``seq_idx``: (batch, L) int32, packed sequences (states restart
    wherever it changes). Returns out like ``x`` and, with ``return_final_states``,
    the final states (batch, heads, headdim, N).
    """
    fn, kw = _pick("ssd_scan", backend, x, seq_idx)
    return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
              dt_softplus=dt_softplus, initial_states=initial_states,
              return_final_states=return_final_states, dt_limit=dt_limit, **kw)


def causal_conv1d(x, weight, bias=None, activation=None, initial_states=None, seq_idx=None,
                  backend="auto"):
    """Depthwise causal conv: ``x`` (batch, dim, L), ``weight`` (dim, width) -> (batch, dim, L).

    ``initial_states`` (batch, dim, width - 1): the inputs before ``x``. ``seq_idx``
    (batch, L) int32, packed sequences: an output never sees inputs of another sequence.
    """
    fn, kw = _pick("causal_conv1d", backend, x, seq_idx)
    return fn(x, weight, bias=bias, activation=activation, initial_states=initial_states, **kw)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend="auto"):
    """One step: ``x`` (batch, dim), ``conv_state`` (batch, dim, width) updated in place -> (batch, dim)."""
    name = resolve_backend("causal_conv1d_update", backend, x)
    return _REGISTRY["causal_conv1d_update"][name][0](x, conv_state, weight, bias=bias,
                                                      activation=activation)


def _conv_torch(x, weight, bias=None, activation=None, initial_states=None, seq_idx=None):
    # CPU (and packed sequences anywhere): a sum over the few taps (torch's depthwise
    # conv1d backward on CPU is ~50x slower than these elementwise ops); elsewhere
    # one grouped conv call.
    width = weight.shape[1]
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if x.device.type == "cpu" or seq_idx is not None:
        batch, L = x.shape[0], x.shape[-1]
        pad = (initial_states.to(x.dtype) if initial_states is not None
               else x.new_zeros(x.shape[0], x.shape[1], width - 1))
        xp = torch.cat([pad, x], dim=-1)
        w = weight.to(x.dtype)
        if seq_idx is not None:  # tap k sees an input of the same sequence only
            sq = check_seq_idx(seq_idx, batch, L)
            sp = torch.cat([sq[:, :1].expand(batch, width - 1), sq], dim=1)
            masks = [(sp[:, k:k + L] == sq)[:, None].to(x.dtype) for k in range(width - 1)]
        out = xp[..., width - 1:] * w[:, width - 1, None]
        for k in range(width - 1):
            tap = xp[..., k:k + L] * w[:, k, None]
            out = out + (tap * masks[k] if seq_idx is not None else tap)
        if bias is not None:
            out = out + bias.to(x.dtype)[:, None]
        return torch.nn.functional.silu(out) if activation else out
    if initial_states is not None:
        xp = torch.cat([initial_states.to(x.dtype), x], dim=-1)
        out = torch.nn.functional.conv1d(xp, weight[:, None, :], bias, groups=x.shape[1])
    else:
        out = torch.nn.functional.conv1d(x, weight[:, None, :], bias, padding=width - 1,
                                         groups=x.shape[1])[..., : x.shape[-1]]
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return torch.nn.functional.silu(out) if activation else out


register_backend("selective_scan", "reference", reference.selective_scan_ref)
register_backend("ssd_scan", "reference", reference.ssd_scan_ref)
register_backend("causal_conv1d", "reference", reference.causal_conv1d_ref)
register_backend("causal_conv1d", "cpu", _conv_torch, lambda t: t.device.type == "cpu")
register_backend("causal_conv1d", "torch", _conv_torch)
register_backend("causal_conv1d_update", "reference", reference.causal_conv1d_update_ref)


def _load_optional_backends():
    """Import fast backends that register themselves; missing packages are fine."""
    for mod in ("core.ops.torch_scan", "core.ops.cpu_scan", "core.ops.triton_scan", "core.ops.triton_conv",
                "core.ops.cuda_ext"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


if os.environ.get("CORE_OPS_REFERENCE_ONLY") != "1":
    _load_optional_backends()
