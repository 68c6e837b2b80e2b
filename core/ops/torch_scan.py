"""Pure-torch chunked scans: the "torch" backend (any device) and the CPU fallback.

* Mamba-1: time is cut into blocks of 256 steps, each run under activation
  checkpointing so backward keeps one (batch, dim, N) state per block; inside
  a block the steps are scanned in chunks of 16, vectorised over the chunks,
  then chunk boundaries are carried and the chunks corrected (decays as
  ``exp(A * cumsum(dt))``, never divided, so large ``dt`` cannot overflow).
* Mamba-2 (SSD): the chunked "dual" form of Mamba-2 (matmuls inside a chunk,
  a short recurrence over chunk states), with the within-chunk decays built by
  a masked cumsum so no two large cumsums are subtracted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .dispatch import register_backend
from .scan_common import check_ssd_args, selective_scan_with, ssd_epilogue, ssd_prologue
from .varlen import check_seq_idx, keep_mask

_BLOCK = 256   # time steps per checkpointed block
_SUB = 16      # steps per chunk inside a block


def _group_view(M, batch, G, dg):
    """B or C -> broadcastable to (batch, G, dg, L, N)."""
    if M.dim() == 2:                                   # (dim, N), time-invariant
        return M.reshape(1, G, dg, 1, M.shape[-1])
    if M.dim() == 3:                                   # (batch, N, L)
        return M.transpose(1, 2)[:, None, None]
    Gm = M.shape[1]                                    # (batch, Gm, N, L), Gm divides G
    M = M.transpose(2, 3)
    if Gm != G:
        M = M.repeat_interleave(G // Gm, dim=1)
    return M[:, :, None]


def _block(u, dt, A, Bx, Cx, h, keep=None):
    """One block: u, dt (b, G, dg, T); A (G, dg, N); Bx, Cx like _group_view; h (b, G, dg, N).

    ``keep`` (b, 1, 1, T) float or None: 0 where a packed sequence starts (the
    state entering that step is dropped), 1 elsewhere.
    """
    T = u.shape[-1]
    nk = -(-T // _SUB)
    pad = nk * _SUB - T
    if pad:  # dt = 0 and u = 0: the state passes through unchanged
        u, dt = F.pad(u, (0, pad)), F.pad(dt, (0, pad))
        if keep is not None:
            keep = F.pad(keep, (0, pad), value=1.0)
        if Bx.shape[-2] > 1:
            Bx = F.pad(Bx, (0, 0, 0, pad))
        if Cx.shape[-2] > 1:
            Cx = F.pad(Cx, (0, 0, 0, pad))
    shp = dt.shape[:3] + (nk, _SUB)
    dtc = dt.reshape(shp)
    Ae = A[:, :, None, None, :]
    dA = torch.exp(dtc[..., None] * Ae)                                 # (b,G,dg,nk,k,N)
    if keep is not None:
        kc = keep.reshape(keep.shape[:3] + (nk, _SUB))
        dA = dA * kc[..., None]
        alive = kc.cumprod(-1)[..., None]  # 0 from a chunk's first restart on: no carry-in
    Bc = Bx.reshape(Bx.shape[:3] + ((nk, _SUB) if Bx.shape[-2] > 1 else (1, 1)) + Bx.shape[-1:])
    Cc = Cx.reshape(Cx.shape[:3] + ((nk, _SUB) if Cx.shape[-2] > 1 else (1, 1)) + Cx.shape[-1:])
    xin = (dtc * u.reshape(shp))[..., None] * Bc
    # unbind, not indexing: its backward is one stack, not a zero-filled copy per step
    hl, hs = None, []
    for dA_j, x_j in zip(dA.unbind(-2), xin.unbind(-2)):  # local scan, all chunks at once
        hl = x_j if hl is None else dA_j * hl + x_j
        hs.append(hl)
    hl = torch.stack(hs, dim=-2)                                        # (b,G,dg,nk,k,N)
    P = torch.exp(dtc.cumsum(-1)[..., None] * Ae)                       # decay from chunk start
    if keep is not None:
        P = P * alive
    Hin = []
    for P_c, h_c in zip(P[..., -1, :].unbind(3), hs[-1].unbind(3)):
        Hin.append(h)                         # carry over chunk boundaries
        h = P_c * h + h_c
    Hin = torch.stack(Hin, dim=3)
    y = ((hl + P * Hin[..., None, :]) * Cc).sum(-1)
    return y.reshape(shp[:3] + (nk * _SUB,))[..., :T], h


def torch_scan_core(u, dt, A, B, C, h0, seq_idx=None):
    """Core recurrence (see scan_common): u, dt (batch, dim, L) -> (y, last state).

    ``seq_idx`` (batch, L) int or None: the state restarts where it changes.
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    G = 1
    for M in (B, C):
        if M.dim() == 4:
            G = G * M.shape[1] // math.gcd(G, M.shape[1])
    if dim % G:
        raise ValueError(f"dim {dim} is not divisible by the number of groups {G}")
    dg = dim // G
    Bx, Cx = _group_view(B, batch, G, dg), _group_view(C, batch, G, dg)
    u5, dt5 = u.reshape(batch, G, dg, L), dt.reshape(batch, G, dg, L)
    A3 = A.reshape(G, dg, N)
    h = (h0.reshape(batch, G, dg, N) if h0 is not None
         else u.new_zeros(batch, G, dg, N))
    use_ckpt = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, dt, A, B, C, h0))
    keep = (keep_mask(check_seq_idx(seq_idx, batch, L)).to(u.dtype)[:, None, None]
            if seq_idx is not None else None)                          # (batch, 1, 1, L)
    ys = []
    for t0 in range(0, L, _BLOCK):
        sl = slice(t0, min(L, t0 + _BLOCK))
        Bb = Bx[..., sl, :] if Bx.shape[-2] > 1 else Bx
        Cb = Cx[..., sl, :] if Cx.shape[-2] > 1 else Cx
        args = (u5[..., sl], dt5[..., sl], A3, Bb, Cb, h, None if keep is None else keep[..., sl])
        y, h = checkpoint(_block, *args, use_reentrant=False) if use_ckpt else _block(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if len(ys) > 1 else ys[0]
    return y.reshape(batch, dim, L), h.reshape(batch, dim, N)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, initial_state=None, seq_idx=None):
    """``selective_scan_fn`` in pure torch (any device). Shapes as :func:`core.ops.selective_scan`."""
    return selective_scan_with(torch_scan_core, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                               delta_softplus=delta_softplus, return_last_state=return_last_state,
                               initial_state=initial_state, seq_idx=seq_idx)


def _segsum_exp(a):
    """exp of segment sums: out[..., l, s] = exp(a[s+1] + ... + a[l]) for l >= s, else 0."""
    Q = a.shape[-1]
    x = a[..., None, :].expand(*a.shape, Q).transpose(-1, -2)          # x[..., l, s] = a[l]
    low = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), -1)
    seg = x.masked_fill(~low, 0).cumsum(-2)
    seg = seg.masked_fill(~torch.tril(torch.ones_like(low), 0), float("-inf"))
    return torch.exp(seg)


def ssd_scan_torch(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                   initial_states=None, return_final_states=False, dt_limit=(0.0, float("inf")),
                   seq_idx=None):
    """``mamba_chunk_scan_combined`` in pure torch, chunked dual form. Shapes as :func:`core.ops.ssd_scan`.

    With ``seq_idx`` (batch, L) the decays between positions of different
    sequences are zero (as mamba_ssm masks them), so states restart at each boundary.
    """
    check_ssd_args(x, dt, A, B, C, initial_states)
    dtype_in = x.dtype
    x_, dt_, work = ssd_prologue(x, dt, dt_bias, dt_softplus, dt_limit)
    batch, L, H, P = x_.shape
    G, N = B.shape[2], B.shape[3]
    hpg = H // G
    Q = max(1, min(int(chunk_size), L))
    nc = -(-L // Q)
    pad = nc * Q - L
    Bw, Cw, xdt = B.to(work), C.to(work), x_ * dt_[..., None]
    a = dt_ * A.to(work)
    if pad:  # zero dt and input: padded steps change nothing
        xdt, a = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        Bw, Cw = F.pad(Bw, (0, 0, 0, 0, 0, pad)), F.pad(Cw, (0, 0, 0, 0, 0, pad))
    a = a.reshape(batch, nc, Q, G, hpg).permute(0, 1, 3, 4, 2)        # (b, c, G, hpg, Q)
    acs = a.cumsum(-1)
    Lm = _segsum_exp(a)                                                # (b, c, G, hpg, Q, Q)
    if seq_idx is not None:
        sq = check_seq_idx(seq_idx, batch, L)
        if pad:  # the padding continues the last sequence: no boundary in it
            sq = torch.cat([sq, sq[:, -1:].expand(batch, pad)], dim=1)
        sq = sq.reshape(batch, nc, Q)
        # the state entering chunk c belongs to the sequence at its previous position
        prev = torch.cat([sq[:, :1, 0], sq[:, :-1, -1]], dim=1)       # (b, c)
        same = (sq[..., :, None] == sq[..., None, :]).to(work)         # (b, c, Q, Q)
        Lm = Lm * same[:, :, None, None]
        carry = (sq == prev[..., None]).to(work)                       # (b, c, Q): entering state reaches t
    Bc = Bw.reshape(batch, nc, Q, G, N).transpose(2, 3)                # (b, c, G, Q, N)
    Cc = Cw.reshape(batch, nc, Q, G, N).transpose(2, 3)
    X = xdt.reshape(batch, nc, Q, G, hpg, P).permute(0, 1, 3, 4, 2, 5).contiguous()  # (b,c,G,hpg,Q,P)
    CB = (Cc @ Bc.transpose(-1, -2))[:, :, :, None]                   # (b, c, G, 1, Q, Q)
    Y = (CB * Lm) @ X                                                  # within chunks
    # states in a (N, hpg*P) layout per group: the heads of a group share B and C, so
    # the matmuls need no broadcast copies of B/C
    Xq = xdt.reshape(batch, nc, Q, G, hpg, P).transpose(2, 3)         # (b, c, G, Q, hpg, P)
    Xs = (Xq * Lm[..., -1, :].transpose(-1, -2)[..., None]).reshape(batch, nc, G, Q, hpg * P)
    S = Bc.transpose(-1, -2) @ Xs                                      # (b, c, G, N, hpg*P)
    decay = torch.exp(acs[..., -1]).repeat_interleave(P, dim=-1)       # (b, c, G, hpg*P)
    if seq_idx is not None:
        decay = decay * carry[:, :, -1, None, None]
    s = (initial_states.to(work).reshape(batch, G, hpg, P, N).permute(0, 1, 4, 2, 3)
         .reshape(batch, G, N, hpg * P) if initial_states is not None
         else x_.new_zeros(batch, G, N, hpg * P))
    states = []
    for c in range(nc):
        states.append(s)
        s = decay[:, c, :, None, :] * s + S[:, c]
    Sin = torch.stack(states, dim=1)                                   # state entering each chunk
    dec_in = torch.exp(acs).transpose(-1, -2)[..., None]               # (b, c, G, Q, hpg, 1)
    if seq_idx is not None:
        dec_in = dec_in * carry[:, :, None, :, None, None]
    Yo = (Cc @ Sin).reshape(batch, nc, G, Q, hpg, P) * dec_in
    y = (Y.transpose(3, 4) + Yo).permute(0, 1, 3, 2, 4, 5).reshape(batch, nc * Q, H, P)[:, :L]
    s = s.reshape(batch, G, N, hpg, P).permute(0, 1, 3, 4, 2).reshape(batch, H, P, N)
    return ssd_epilogue(y, x_, D, z, dtype_in, s, return_final_states)


register_backend("selective_scan", "torch", selective_scan_torch)
register_backend("ssd_scan", "torch", ssd_scan_torch)
