"""Plain sequential references of every kernel: the test oracle.

They loop over time one step at a time in whatever dtype they are given
(float64 in tests), mirror mamba_ssm's argument names and layouts, and are
differentiable through autograd. They are slow and memory hungry on purpose:
no trick, nothing to get wrong.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .varlen import check_seq_idx, keep_mask


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, dim, N, L) (a broadcastable view)."""
    if M.dim() == 3:
        return M.unsqueeze(1)
    G = M.shape[1]
    if dim % G:
        raise ValueError(f"dim {dim} is not divisible by the number of groups {G}")
    return M.repeat_interleave(dim // G, dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False, initial_state=None,
                       seq_idx=None):
    """Mamba-1 selective scan, one time step after another.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N), real.
        B, C: (batch, N, L) or grouped (batch, G, N, L); also (dim, N) for a
            time-invariant B/C.
        D: (dim,) skip connection. z: (batch, dim, L) gate (``y * silu(z)``).
        delta_bias: (dim,). initial_state: (batch, dim, N).
        seq_idx: (batch, L) int, packed sequences: the state restarts from zero
            wherever ``seq_idx`` changes; ``initial_state`` belongs to the first.
    Returns:
        out (batch, dim, L) in ``u.dtype``; with ``return_last_state`` also the
        last state (batch, dim, N).
    """
    dtype_in = u.dtype
    dt = delta.float() if delta.dtype in (torch.float16, torch.bfloat16) else delta
    work = torch.float32 if dtype_in in (torch.float16, torch.bfloat16) else dtype_in
    u_, dt = u.to(work), dt.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    batch, dim, L = u_.shape
    A_ = A.to(work)
    N = A_.shape[1]
    if B.dim() == 2:  # time-invariant (dim, N)
        Bx = B.to(work)[None, :, :, None].expand(batch, dim, N, L)
    else:
        Bx = _expand_groups(B.to(work), dim)
    if C.dim() == 2:
        Cx = C.to(work)[None, :, :, None].expand(batch, dim, N, L)
    else:
        Cx = _expand_groups(C.to(work), dim)
    x = (initial_state.to(work) if initial_state is not None
         else u_.new_zeros(batch, dim, N))
    keep = _keeps(seq_idx, batch, L, work)
    ys = []
    # unbind rather than index per step: the backward of indexing writes a full
    # zero tensor per step, which makes long sequences quadratic
    for t, (dt_t, u_t, B_t, C_t) in enumerate(zip(dt.unbind(-1), u_.unbind(-1), Bx.unbind(-1),
                                                  Cx.unbind(-1))):
        if keep is not None:
            x = x * keep[t][:, None, None]
        dA = torch.exp(dt_t[..., None] * A_)                          # (batch, dim, N)
        x = dA * x + (dt_t * u_t)[..., None] * B_t
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u_ * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    out = y.to(dtype_in)
    return (out, x) if return_last_state else out


def ssd_scan_ref(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None,
                 dt_softplus=False, initial_states=None, return_final_states=False,
                 dt_limit=(0.0, float("inf")), seq_idx=None):
    """Mamba-2 (SSD) scan, one time step after another.

    Args:
        x: (batch, L, heads, headdim). dt: (batch, L, heads). A: (heads,).
        B, C: (batch, L, groups, N). D: (heads,) or (heads, headdim).
        z: (batch, L, heads, headdim). dt_bias: (heads,).
        initial_states: (batch, heads, headdim, N).
        seq_idx: (batch, L) int, packed sequences (states restart where it changes).
        chunk_size: accepted for signature compatibility; the result does not
            depend on it.
    Returns:
        out (batch, L, heads, headdim); with ``return_final_states`` also
        (batch, heads, headdim, N).
    """
    dtype_in = x.dtype
    work = torch.float32 if dtype_in in (torch.float16, torch.bfloat16) else dtype_in
    x_, dt_ = x.to(work), dt.to(work)
    if dt_bias is not None:
        dt_ = dt_ + dt_bias.to(work)
    if dt_softplus:
        dt_ = F.softplus(dt_)
    if dt_limit != (0.0, float("inf")):
        dt_ = dt_.clamp(dt_limit[0], dt_limit[1])
    batch, L, H, P = x_.shape
    G = B.shape[2]
    if H % G:
        raise ValueError(f"heads {H} not divisible by groups {G}")
    Bh = B.to(work).repeat_interleave(H // G, dim=2)  # (batch, L, H, N)
    Ch = C.to(work).repeat_interleave(H // G, dim=2)
    N = Bh.shape[-1]
    A_ = A.to(work)
    s = (initial_states.to(work) if initial_states is not None
         else x_.new_zeros(batch, H, P, N))
    keep = _keeps(seq_idx, batch, L, work)
    ys = []
    for t, (dt_t, x_t, B_t, C_t) in enumerate(zip(dt_.unbind(1), x_.unbind(1), Bh.unbind(1),
                                                  Ch.unbind(1))):
        if keep is not None:
            s = s * keep[t][:, None, None, None]
        dA = torch.exp(dt_t * A_)                                     # (batch, H)
        s = dA[..., None, None] * s + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append((s * C_t[:, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)                                       # (batch, L, H, P)
    if D is not None:
        Dw = D.to(work)
        y = y + x_ * (Dw[:, None] if Dw.dim() == 1 else Dw)
    if z is not None:
        y = y * F.silu(z.to(work))
    out = y.to(dtype_in)
    return (out, s) if return_final_states else out


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_states=None, seq_idx=None):
    """Depthwise causal 1-D convolution, written out tap by tap.

    Args:
        x: (batch, dim, L). weight: (dim, width). bias: (dim,).
        activation: None, "silu" or "swish".
        initial_states: (batch, dim, width - 1), the inputs before ``x``.
        seq_idx: (batch, L) int, packed sequences: output t only sees inputs with
            the same ``seq_idx``; ``initial_states`` belong to the first sequence.
    Returns:
        (batch, dim, L) in ``x.dtype``.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    width = weight.shape[1]
    batch, dim, L = x.shape
    pad = (initial_states.to(x.dtype) if initial_states is not None
           else x.new_zeros(batch, dim, width - 1))
    xp = torch.cat([pad, x], dim=-1)
    taps = [weight[:, k, None] * xp[:, :, k:k + L] for k in range(width)]
    if seq_idx is not None:
        sq = check_seq_idx(seq_idx, batch, L)
        sp = torch.cat([sq[:, :1].expand(batch, width - 1), sq], dim=1)
        taps = [tap * (sp[:, k:k + L] == sq)[:, None].to(x.dtype) for k, tap in enumerate(taps)]
    out = sum(taps)
    if bias is not None:
        out = out + bias[:, None]
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def _keeps(seq_idx, batch, L, dtype):
    """Per step (batch,) multipliers of the previous state: 0 where a new sequence starts."""
    if seq_idx is None:
        return None
    return keep_mask(check_seq_idx(seq_idx, batch, L)).to(dtype).unbind(1)


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One decoding step of :func:`causal_conv1d_ref`; updates ``conv_state`` in place.

    Args:
        x: (batch, dim) new input. conv_state: (batch, dim, width), the last
            ``width`` inputs (oldest first); shifted left and ``x`` appended.
        weight: (dim, width). bias: (dim,).
    Returns:
        (batch, dim).
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    out = (conv_state * weight.to(conv_state.dtype)).sum(-1)
    if bias is not None:
        out = out + bias
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)
