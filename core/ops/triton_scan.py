"""Triton selective scan ("triton" backend): forward and backward kernels of our own.

One program owns (batch b, a block of BLOCK_D channels) and walks time with the
(BLOCK_D, N) state in registers. The forward stores the state before every
K-th step; the backward walks the chunks in reverse, recomputes each chunk's
states from its checkpoint into a small scratch buffer and accumulates
gradients (gB/gC with atomics: the channels of a group share them).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the
tests do that with tiny shapes). Kernels are jitted on first use, so the
variable only has to be set before the first call, not before import. The SSD
scan runs on the same kernels (heads*headdim channels, see
:func:`core.ops.scan_common.ssd_scan_with`); the causal conv on CUDA uses
torch's grouped conv when causal_conv1d is missing.
"""
import os

import torch

from .dispatch import register_backend
from .scan_common import bc_layout, chunk_len, selective_scan_with, ssd_scan_with

try:  # importing triton.language does not read TRITON_INTERPRET; jitting does
    import triton
    import triton.language as tl
    _HAVE_TRITON = True
except ImportError:  # the kernels below are then never jitted
    class tl:  # noqa: N801  (just enough for the annotations)
        constexpr = None
    _HAVE_TRITON = False
_kernels = {}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fwd(u, dt, A, B, C, h0, y, last, ckpt, sidx, dim, L, N, nc, per_gb, per_gc,
         sb_b, sb_g, sb_t, sc_b, sc_g, sc_t,
         K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_H0: tl.constexpr,
         HAS_SEQ: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm, nm = d < dim, n < N
    m2 = dm[:, None] & nm[None, :]
    Ad = tl.load(A + d[:, None] * N + n[None, :], mask=m2, other=0.0)
    ch = (b * dim + d).to(tl.int64)  # flat offsets can pass 2**31
    if HAS_H0:
        h = tl.load(h0 + ch[:, None] * N + n[None, :], mask=m2, other=0.0)
    else:
        h = Ad * 0.0
    Bp = B + b * sb_b + (d // per_gb)[:, None] * sb_g + n[None, :]
    Cp = C + b * sc_b + (d // per_gc)[:, None] * sc_g + n[None, :]
    for c in range(nc):
        tl.store(ckpt + (ch[:, None] * nc + c) * N + n[None, :], h, mask=m2)
        for i in range(K):
            t = c * K + i
            tm = dm & ((d * 0 + t) < L)  # vector compare (the interpreter dislikes scalar masks)
            dt_t = tl.load(dt + ch * L + t, mask=tm, other=0.0)
            u_t = tl.load(u + ch * L + t, mask=tm, other=0.0)
            Bt = tl.load(Bp + t * sb_t, mask=tm[:, None] & nm[None, :], other=0.0)
            Ct = tl.load(Cp + t * sc_t, mask=tm[:, None] & nm[None, :], other=0.0)
            if HAS_SEQ:  # a new packed sequence starts from a zero state (t > 0, seq_idx changes)
                s_t = tl.load(sidx + b * L + t + d * 0, mask=tm, other=0)
                s_p = tl.load(sidx + b * L + t - 1 + d * 0, mask=tm & (d * 0 + t > 0), other=0)
                h = tl.where(((s_t == s_p) | (d * 0 + t == 0))[:, None], h, 0.0)
            h = tl.exp(dt_t[:, None] * Ad) * h + (dt_t * u_t)[:, None] * Bt
            tl.store(y + ch * L + t, tl.sum(h * Ct, axis=1), mask=tm)
    tl.store(last + ch[:, None] * N + n[None, :], h, mask=m2)


def _bwd(u, dt, A, B, C, ckpt, scratch, gy, glast, gu, gdt, gA, gB, gC, gh0, sidx,
         dim, L, N, nc, per_gb, per_gc, sb_b, sb_g, sb_t, sc_b, sc_g, sc_t,
         K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
         HAS_GLAST: tl.constexpr, HAS_SEQ: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm, nm = d < dim, n < N
    m2 = dm[:, None] & nm[None, :]
    Ad = tl.load(A + d[:, None] * N + n[None, :], mask=m2, other=0.0)
    ch = (b * dim + d).to(tl.int64)  # flat offsets can pass 2**31
    if HAS_GLAST:
        gh = tl.load(glast + ch[:, None] * N + n[None, :], mask=m2, other=0.0)
    else:
        gh = Ad * 0.0
    gAc = Ad * 0.0
    boff = b * sb_b + (d // per_gb)[:, None] * sb_g + n[None, :]
    coff = b * sc_b + (d // per_gc)[:, None] * sc_g + n[None, :]
    sp = scratch + (ch[:, None] * K) * N + n[None, :]
    for cc in range(nc):
        c = nc - 1 - cc
        h = tl.load(ckpt + (ch[:, None] * nc + c) * N + n[None, :], mask=m2, other=0.0)
        for i in range(K):                       # recompute: scratch[i] = h_{t-1}
            t = c * K + i
            tm = dm & ((d * 0 + t) < L)  # vector compare (the interpreter dislikes scalar masks)
            if HAS_SEQ:
                s_t = tl.load(sidx + b * L + t + d * 0, mask=tm, other=0)
                s_p = tl.load(sidx + b * L + t - 1 + d * 0, mask=tm & (d * 0 + t > 0), other=0)
                h = tl.where(((s_t == s_p) | (d * 0 + t == 0))[:, None], h, 0.0)
            tl.store(sp + i * N, h, mask=m2)
            dt_t = tl.load(dt + ch * L + t, mask=tm, other=0.0)
            u_t = tl.load(u + ch * L + t, mask=tm, other=0.0)
            Bt = tl.load(B + boff + t * sb_t, mask=tm[:, None] & nm[None, :], other=0.0)
            h = tl.exp(dt_t[:, None] * Ad) * h + (dt_t * u_t)[:, None] * Bt
        for ii in range(K):
            i = K - 1 - ii
            t = c * K + i
            tm = dm & ((d * 0 + t) < L)  # vector compare (the interpreter dislikes scalar masks)
            t2 = tm[:, None] & nm[None, :]
            hp = tl.load(sp + i * N, mask=m2, other=0.0)
            dt_t = tl.load(dt + ch * L + t, mask=tm, other=0.0)
            u_t = tl.load(u + ch * L + t, mask=tm, other=0.0)
            g_t = tl.load(gy + ch * L + t, mask=tm, other=0.0)
            Bt = tl.load(B + boff + t * sb_t, mask=t2, other=0.0)
            Ct = tl.load(C + coff + t * sc_t, mask=t2, other=0.0)
            da = tl.exp(dt_t[:, None] * Ad)
            x_t = dt_t * u_t
            hn = da * hp + x_t[:, None] * Bt
            gn = gh + g_t[:, None] * Ct
            tl.atomic_add(gC + coff + t * sc_t, g_t[:, None] * hn, mask=t2)
            tl.atomic_add(gB + boff + t * sb_t, gn * x_t[:, None], mask=t2)
            sB = tl.sum(gn * Bt, axis=1)
            q = gn * hp * da
            tl.store(gu + ch * L + t, sB * dt_t, mask=tm)
            tl.store(gdt + ch * L + t, sB * u_t + tl.sum(q * Ad, axis=1), mask=tm)
            gAc += q * dt_t[:, None]
            gprev = gn * da
            if HAS_SEQ:  # the state before a sequence start was dropped: no gradient
                s_t = tl.load(sidx + b * L + t + d * 0, mask=tm, other=0)
                s_p = tl.load(sidx + b * L + t - 1 + d * 0, mask=tm & (d * 0 + t > 0), other=0)
                gprev = tl.where(((s_t == s_p) | (d * 0 + t == 0))[:, None], gprev, 0.0)
            gh = tl.where(t2, gprev, gh)         # padded steps leave the carry alone
    tl.store(gA + ch[:, None] * N + n[None, :], gAc, mask=m2)
    tl.store(gh0 + ch[:, None] * N + n[None, :], gh, mask=m2)


def _get():
    """The jitted kernels for the current TRITON_INTERPRET setting."""
    key = _interpret()
    if key not in _kernels:
        _kernels[key] = (triton.jit(_fwd), triton.jit(_bwd))
    return _kernels[key]


def _launch_shape(dim, N, L):
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_D = max(1, min(32, 2048 // BLOCK_N, triton.next_power_of_2(dim)))
    K = min(chunk_len(N), max(1, L))
    return BLOCK_D, BLOCK_N, K


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, seq_idx):
        fwd, _ = _get()
        u, dt, A = u.contiguous(), dt.contiguous(), A.contiguous()
        batch, dim, L = u.shape
        N = A.shape[1]
        BLOCK_D, BLOCK_N, K = _launch_shape(dim, N, L)
        nc = -(-L // K)
        B2, Gb, *sb = bc_layout(B, dim)
        C2, Gc, *sc = bc_layout(C, dim)
        h0c = h0.contiguous() if h0 is not None else u
        y, last = torch.empty_like(u), u.new_empty(batch, dim, N)
        ckpt = u.new_empty(batch, dim, nc, N)
        grid = (batch, -(-dim // BLOCK_D))
        sq = seq_idx if seq_idx is not None else u
        fwd[grid](u, dt, A, B2, C2, h0c, y, last, ckpt, sq, dim, L, N, nc, dim // Gb, dim // Gc,
                  *sb, *sc, K=K, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, HAS_H0=h0 is not None,
                  HAS_SEQ=seq_idx is not None)
        ctx.save_for_backward(u, dt, A, B, C, ckpt)  # not B2/C2: re-laid out in backward
        ctx.seq_idx = seq_idx
        ctx.meta = (Gb, Gc, sb, sc, K, BLOCK_D, BLOCK_N, B.dim(), C.dim(), h0 is not None)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        _, bwd = _get()
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        Gb, Gc, sb, sc, K, BLOCK_D, BLOCK_N, bdim, cdim, has_h0 = ctx.meta
        B2, C2 = bc_layout(B, u.shape[1])[0], bc_layout(C, u.shape[1])[0]
        batch, dim, L = u.shape
        N, nc = A.shape[1], ckpt.shape[2]
        gy = gy.contiguous() if gy is not None else torch.zeros_like(u)
        gl = glast.contiguous() if glast is not None else u
        gu, gdt = torch.empty_like(u), torch.empty_like(u)
        gA, gh0 = u.new_empty(batch, dim, N), u.new_empty(batch, dim, N)
        gB, gC = torch.zeros_like(B2), torch.zeros_like(C2)
        scratch = u.new_empty(batch, dim, K, N)
        grid = (batch, -(-dim // BLOCK_D))
        sq = ctx.seq_idx if ctx.seq_idx is not None else u
        bwd[grid](u, dt, A, B2, C2, ckpt, scratch, gy, gl, gu, gdt, gA, gB, gC, gh0, sq,
                  dim, L, N, nc, dim // Gb, dim // Gc, *sb, *sc, K=K, BLOCK_D=BLOCK_D,
                  BLOCK_N=BLOCK_N, HAS_GLAST=glast is not None, HAS_SEQ=ctx.seq_idx is not None)
        gB = gB if bdim == 2 else gB.transpose(-1, -2)
        gC = gC if cdim == 2 else gC.transpose(-1, -2)
        return gu, gdt, gA.sum(0), gB, gC, (gh0 if has_h0 else None), None


def _triton_core(u, dt, A, B, C, h0, seq_idx=None):
    return _TritonScan.apply(u, dt, A, B, C, h0, seq_idx)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, seq_idx=None):
    """``selective_scan_fn`` with our Triton kernels. Shapes as :func:`core.ops.selective_scan`."""
    return selective_scan_with(_triton_core, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                               delta_softplus=delta_softplus, return_last_state=return_last_state,
                               initial_state=initial_state, seq_idx=seq_idx)


def ssd_scan_triton(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                    initial_states=None, return_final_states=False, dt_limit=(0.0, float("inf")),
                    seq_idx=None):
    """``mamba_chunk_scan_combined`` on the Triton selective-scan kernels (heads*headdim channels).

    Shapes as :func:`core.ops.ssd_scan`; ``chunk_size`` does not change the result.
    """
    return ssd_scan_with(_triton_core, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                         initial_states=initial_states, return_final_states=return_final_states,
                         dt_limit=dt_limit, seq_idx=seq_idx)


def can_run(t: torch.Tensor) -> bool:
    """CUDA tensors, or CPU tensors while TRITON_INTERPRET=1."""
    return t.is_cuda or (t.device.type == "cpu" and _interpret())


if _HAVE_TRITON:
    register_backend("selective_scan", "triton", selective_scan_triton, can_run)
    register_backend("ssd_scan", "triton", ssd_scan_triton, can_run)
