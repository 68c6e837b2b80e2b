"""SSM kernels with mamba_ssm's argument names and layouts, several backends each.

Backends, per op:
    ``reference``  plain sequential recurrence (any dtype, the test oracle)
    ``cpu``        fast path for CPU tensors
    ``triton``     our Triton kernels (CUDA tensors, or the CPU under TRITON_INTERPRET=1)
    ``mamba_ssm`` / ``causal_conv1d``  the CUDA packages, when importable

``scan1d``/``scan2d`` are parallel scans of diagonal linear recurrences in 1-D and 2-D
(time x variates, Chimera); their sequential references sit beside them.

Packed (ragged) sequences follow mamba_ssm: ``seq_idx`` (batch, L) int32 on the
three ops restarts the state at every change and keeps the conv from looking
across; :mod:`core.ops.varlen` packs/unpacks lists and padded batches
(``pack_sequences``, ``cu_seqlens``, ``seq_idx_from_cu_seqlens``, ...).

``backend="auto"`` picks the fastest one that can run on the given tensors;
:func:`available_backends` and :func:`resolve_backend` show the choice.
"""
from __future__ import annotations

from .dispatch import (
    available_backends,
    causal_conv1d,
    causal_conv1d_update,
    register_backend,
    resolve_backend,
    selective_scan,
    ssd_scan,
)
from .reference import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    selective_scan_ref,
    ssd_scan_ref,
)
from .scan2d import scan1d, scan2d
from .varlen import (
    cu_seqlens_from_lengths,
    lengths_from_cu_seqlens,
    lengths_mask,
    pack_sequences,
    packed_to_padded,
    padded_to_packed,
    seq_idx_from_cu_seqlens,
    seq_idx_from_lengths,
    unpack_sequences,
)
from .scan2d_ref import scan1d_ref, scan2d_ref

__all__ = [
    "available_backends", "causal_conv1d", "causal_conv1d_update", "register_backend",
    "resolve_backend", "selective_scan", "ssd_scan", "causal_conv1d_ref",
    "causal_conv1d_update_ref", "selective_scan_ref", "ssd_scan_ref", "scan1d", "scan2d",
    "scan1d_ref", "scan2d_ref", "cu_seqlens_from_lengths", "lengths_from_cu_seqlens", "lengths_mask",
    "pack_sequences", "packed_to_padded", "padded_to_packed", "seq_idx_from_cu_seqlens",
    "seq_idx_from_lengths", "unpack_sequences",
]
