"""Pieces shared by the fast selective-scan backends.

Every backend implements only the core recurrence ``h_t = exp(dt_t A) h_{t-1} +
dt_t u_t B_t``, ``y_t = <C_t, h_t>`` as an autograd.Function on already
softplus'd ``dt``; :func:`selective_scan_with` adds the cheap (batch, dim, L)
parts around it (delta_bias, softplus, D, z, dtype casts) with plain autograd,
which keeps only (batch, dim, L)-sized tensors for backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .varlen import check_seq_idx


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed (and accumulated) in fp32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def bc_layout(M: torch.Tensor, dim: int):
    """B or C as a contiguous (.., L, N)-last tensor plus element strides.

    Returns ``(M2, G, s_b, s_g, s_t)`` with element (b, g, t, n) of M2 at
    ``b*s_b + g*s_g + t*s_t + n``. Accepts (batch, N, L), (batch, G, N, L) and
    time-invariant (dim, N).
    """
    if M.dim() == 2:
        M2 = M.contiguous()
        return M2, dim, 0, M2.shape[1], 0
    if M.dim() == 3:
        M2 = M.transpose(1, 2).contiguous()          # (batch, L, N)
        L, N = M2.shape[1:]
        return M2, 1, L * N, 0, N
    G = M.shape[1]
    if dim % G:
        raise ValueError(f"dim {dim} is not divisible by the number of groups {G}")
    M2 = M.transpose(2, 3).contiguous()              # (batch, G, L, N)
    L, N = M2.shape[2:]
    return M2, G, G * L * N, L * N, N


def bc_unlayout(g2: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`bc_layout` for a gradient laid out like ``M2``; ``ndim`` of the original."""
    if ndim == 2:
        return g2
    return g2.transpose(-1, -2)


def check_scan_args(u, delta, A, B, C, initial_state):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N); got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = ((M.dim() == 2 and tuple(M.shape) == (dim, N))
              or (M.dim() == 3 and tuple(M.shape) == (batch, N, L))
              or (M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (N, L)))
        if not ok:
            raise ValueError(f"{name} must be (batch, N, L), (batch, G, N, L) or (dim, N) with "
                             f"batch={batch}, N={N}, L={L}; got {tuple(M.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, N):
        raise ValueError(f"initial_state must be (batch, dim, N)=({batch}, {dim}, {N}); "
                         f"got {tuple(initial_state.shape)}")


def selective_scan_with(core, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False, return_last_state=False, initial_state=None,
                        seq_idx=None):
    """``selective_scan_fn`` semantics around ``core(u, dt, A, B, C, h0, seq_idx) -> (y, h_last)``.

    ``core`` gets tensors in the working dtype (fp32 for half inputs); ``h0``
    may be None, ``seq_idx`` is None or a contiguous (batch, L) int32 tensor
    (the state restarts from zero wherever it changes). Returns out (batch, dim, L) in ``u.dtype`` and, with
    ``return_last_state``, the last state (batch, dim, N) in the working dtype.
    """
    check_scan_args(u, delta, A, B, C, initial_state)
    dtype_in = u.dtype
    work = work_dtype(dtype_in)
    u_, dt = u.to(work), delta.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h0 = initial_state.to(work) if initial_state is not None else None
    sq = check_seq_idx(seq_idx, u.shape[0], u.shape[2]) if seq_idx is not None else None
    y, last = core(u_, dt, A.to(work), B.to(work), C.to(work), h0, sq)
    if D is not None:
        y = y + u_ * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    out = y.to(dtype_in)
    return (out, last) if return_last_state else out


def chunk_len(N: int) -> int:
    """Checkpoint spacing: K >= 4N keeps the saved states at <= L/4 per channel."""
    return max(64, 4 * N)


def ssd_prologue(x, dt, dt_bias, dt_softplus, dt_limit):
    """Inputs in the working dtype and the effective step: (x_, dt_, work).

    ``dt_ = clamp(softplus?(dt + dt_bias), *dt_limit)``, all (batch, L, heads).
    """
    work = work_dtype(x.dtype)
    x_, dt_ = x.to(work), dt.to(work)
    if dt_bias is not None:
        dt_ = dt_ + dt_bias.to(work)
    if dt_softplus:
        dt_ = torch.nn.functional.softplus(dt_)
    if tuple(dt_limit) != (0.0, float("inf")):
        dt_ = dt_.clamp(dt_limit[0], dt_limit[1])
    return x_, dt_, work


def ssd_epilogue(y, x_, D, z, dtype_in, final, return_final_states):
    """Skip term ``D`` ((heads,) or (heads, headdim)), gate ``silu(z)`` and the output dtype."""
    work = y.dtype
    if D is not None:
        Dw = D.to(work)
        y = y + x_ * (Dw[:, None] if Dw.dim() == 1 else Dw)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(work))
    out = y.to(dtype_in)
    return (out, final) if return_final_states else out


def check_ssd_args(x, dt, A, B, C, initial_states):
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, L, heads, headdim); got {tuple(x.shape)}")
    batch, L, H, P = x.shape
    if tuple(dt.shape) != (batch, L, H):
        raise ValueError(f"dt must be (batch, L, heads)=({batch}, {L}, {H}); got {tuple(dt.shape)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"A must be (heads,)=({H},); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, L) or C.shape != B.shape or H % B.shape[2]:
        raise ValueError(f"B and C must be (batch, L, groups, N) with heads {H} divisible by groups; "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    if initial_states is not None and tuple(initial_states.shape) != (batch, H, P, B.shape[3]):
        raise ValueError(f"initial_states must be (batch, heads, headdim, N); got {tuple(initial_states.shape)}")


def ssd_scan_with(core, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_states=None, return_final_states=False, dt_limit=(0.0, float("inf")),
                  seq_idx=None):
    """``mamba_chunk_scan_combined`` semantics on a Mamba-1 ``core`` (see :func:`selective_scan_with`).

    SSD is the Mamba-1 recurrence over dim = heads*headdim channels with A and
    dt shared by a head's channels and B/C grouped, so any selective-scan core
    runs it: x (batch, L, H, P) -> u (batch, H*P, L), A (H,) -> (H*P, N).
    Gradients of A and dt flow back through the expansion by autograd.
    """
    check_ssd_args(x, dt, A, B, C, initial_states)
    dtype_in = x.dtype
    x_, dt_, work = ssd_prologue(x, dt, dt_bias, dt_softplus, dt_limit)
    batch, L, H, P = x_.shape
    N = B.shape[-1]
    u = x_.permute(0, 2, 3, 1).reshape(batch, H * P, L)
    delta = dt_.permute(0, 2, 1)[:, :, None, :].expand(batch, H, P, L).reshape(batch, H * P, L)
    A2 = A.to(work)[:, None, None].expand(H, P, N).reshape(H * P, N)
    Bm, Cm = B.to(work).permute(0, 2, 3, 1), C.to(work).permute(0, 2, 3, 1)   # (batch, G, N, L)
    h0 = initial_states.to(work).reshape(batch, H * P, N) if initial_states is not None else None
    sq = check_seq_idx(seq_idx, batch, L) if seq_idx is not None else None
    y, last = core(u, delta, A2, Bm, Cm, h0, sq)
    y = y.reshape(batch, H, P, L).permute(0, 3, 1, 2)
    return ssd_epilogue(y, x_, D, z, dtype_in, last.reshape(batch, H, P, N), return_final_states)
