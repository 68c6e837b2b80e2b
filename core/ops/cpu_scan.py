"""Fast CPU backend ("cpu"): the C selective scan (csrc/scan.c) behind an autograd.Function.

The forward keeps only the state at every K-th step (K = max(64, 4N), so at
most batch*dim*L/4 numbers); the backward recomputes each chunk's states from
its checkpoint and walks it in reverse. Channels are split over
``torch.get_num_threads()`` Python threads (ctypes drops the GIL). If the C
code cannot be compiled, one warning says why, "cpu" is no longer listed by
``available_backends`` and ``auto`` takes the pure-torch chunked scan
(core/ops/torch_scan.py, backend "torch") instead.
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch

from . import cpu_build, torch_scan
from .dispatch import register_backend
from .scan_common import (bc_layout, bc_unlayout, check_scan_args, chunk_len, selective_scan_with, ssd_scan_with,
                          work_dtype)
from .varlen import check_seq_idx

_pool = None


def _parallel(fn, nch: int, bufs_per_thread=None):
    """Run ``fn(lo, hi, i)`` over channel ranges on up to get_num_threads() threads."""
    global _pool
    nt = max(1, min(torch.get_num_threads(), nch))
    bounds = [(nch * i) // nt for i in range(nt + 1)]
    if nt == 1:
        fn(0, nch, 0)
        return 1
    if _pool is None or _pool._max_workers < nt:
        _pool = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="core-ops-scan")
    list(_pool.map(lambda i: fn(bounds[i], bounds[i + 1], i), range(nt)))
    return nt


def _ptr(t):
    return t.data_ptr() if t is not None else None


def _nthreads(nch):
    return max(1, min(torch.get_num_threads(), nch))


def _scan_fwd(u, dt, A, B, C, h0, seq_idx):
    """The C forward on contiguous work-dtype tensors: (y, last, ckpt, meta)."""
    lib = cpu_build.load()
    sfx = "f64" if u.dtype == torch.float64 else "f32"
    h0c = h0.contiguous() if h0 is not None else None
    batch, dim, L = u.shape
    N = A.shape[1]
    K = chunk_len(N)
    nc = (L + K - 1) // K
    B2, Gb, *sb = bc_layout(B, dim)
    C2, Gc, *sc = bc_layout(C, dim)
    y = u.new_empty(batch, dim, L)
    last = u.new_empty(batch, dim, N)
    ckpt = u.new_empty(batch, dim, nc, N)
    f = getattr(lib, f"ss_fwd_{sfx}")
    _parallel(lambda lo, hi, i: f(dim, L, N, Gb, Gc, u.data_ptr(), dt.data_ptr(), A.data_ptr(),
                                  B2.data_ptr(), *sb, C2.data_ptr(), *sc, _ptr(h0c),
                                  y.data_ptr(), last.data_ptr(), ckpt.data_ptr(), K, _ptr(seq_idx),
                                  lo, hi),
              batch * dim)
    return y, last, ckpt, (Gb, Gc, sb, sc, K, B.dim(), C.dim(), h0 is not None)


def _scan_bwd(u, dt, A, B, C, ckpt, meta, seq_idx, gy, glast):
    """The C backward: (gu, gdt, gA, gB, gC, gh0 or None)."""
    lib = cpu_build.load()
    Gb, Gc, sb, sc, K, bdim, cdim, has_h0 = meta
    B2, C2 = bc_layout(B, u.shape[1])[0], bc_layout(C, u.shape[1])[0]
    sfx = "f64" if u.dtype == torch.float64 else "f32"
    batch, dim, L = u.shape
    N = A.shape[1]
    gy = gy.contiguous() if gy is not None else torch.zeros_like(u)
    glast = glast.contiguous() if glast is not None else None
    gu, gdt = torch.empty_like(u), torch.empty_like(u)
    gA = u.new_empty(batch, dim, N)
    gh0 = u.new_empty(batch, dim, N)
    nt = _nthreads(batch * dim)
    gB = B2.new_zeros((nt,) + B2.shape)      # one accumulator per thread: no races
    gC = C2.new_zeros((nt,) + C2.shape)
    f = getattr(lib, f"ss_bwd_{sfx}")
    _parallel(lambda lo, hi, i: f(dim, L, N, Gb, Gc, u.data_ptr(), dt.data_ptr(), A.data_ptr(),
                                  B2.data_ptr(), *sb, C2.data_ptr(), *sc, ckpt.data_ptr(), K,
                                  gy.data_ptr(), _ptr(glast), gu.data_ptr(), gdt.data_ptr(),
                                  gA.data_ptr(), gB[i].data_ptr(), gC[i].data_ptr(),
                                  gh0.data_ptr(), _ptr(seq_idx), lo, hi),
              batch * dim)
    gB = bc_unlayout(gB.sum(0), bdim)
    gC = bc_unlayout(gC.sum(0), cdim)
    return gu, gdt, gA.sum(0), gB, gC, (gh0 if has_h0 else None)


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, seq_idx):
        u, dt, A = u.contiguous(), dt.contiguous(), A.contiguous()
        y, last, ckpt, ctx.meta = _scan_fwd(u, dt, A, B, C, h0, seq_idx)
        ctx.save_for_backward(u, dt, A, B, C, ckpt)  # not B2/C2: re-laid out in backward
        ctx.seq_idx = seq_idx  # int32 (batch, L), never differentiated
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        return (*_scan_bwd(u, dt, A, B, C, ckpt, ctx.meta, ctx.seq_idx, gy, glast), None)


_I64, _P = ctypes.c_int64, ctypes.c_void_p
_ELEM = {  # csrc/scan_elem.h signatures
    "ss_pre": [_I64, _I64, _P, _P, _I64, _P, _I64, _I64],
    "ss_pre_bwd": [_I64, _I64, _P, _P, _P, _I64, _P, _P, _I64, _I64],
    "ss_post": [_I64, _I64] + [_P] * 5 + [_I64, _I64],
    "ss_post_bwd": [_I64, _I64] + [_P] * 9 + [_I64, _I64],
}


def _elem(name, dtype):
    """One of the fused element-wise passes of csrc/scan_elem.h, its ctypes signature set once."""
    f = getattr(cpu_build.load(), f"{name}_{'f64' if dtype == torch.float64 else 'f32'}")
    if f.restype is not None:
        f.argtypes, f.restype = _ELEM[name], None
    return f


class _CpuScanFused(torch.autograd.Function):
    """The whole ``selective_scan_fn``: softplus(delta + bias) and the (y + D u) * silu(z) gate run
    as single C passes around the scan instead of separate autograd ops (fewer passes over
    (batch, dim, L), fewer saved tensors)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, seq_idx, softplus):
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        z = z.contiguous() if z is not None else None
        batch, dim, L = u.shape
        dt = torch.empty_like(u)
        pre = _elem("ss_pre", u.dtype)
        _parallel(lambda lo, hi, i: pre(dim, L, delta.data_ptr(), _ptr(bias), int(softplus), dt.data_ptr(),
                                        lo, hi), batch * dim)
        y, last, ckpt, ctx.meta = _scan_fwd(u, dt, A, B, C, h0, seq_idx)
        del dt  # recomputed in backward: one cheap pass instead of a saved (batch, dim, L)
        out = y
        if D is not None or z is not None:
            out = torch.empty_like(y)
            post = _elem("ss_post", u.dtype)
            _parallel(lambda lo, hi, i: post(dim, L, y.data_ptr(), u.data_ptr(), _ptr(D), _ptr(z),
                                             out.data_ptr(), lo, hi), batch * dim)
        ctx.save_for_backward(u, delta, A, B, C, ckpt, y if z is not None else None, D, z, bias)
        ctx.seq_idx, ctx.softplus = seq_idx, softplus
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        u, delta, A, B, C, ckpt, y, D, z, bias = ctx.saved_tensors
        batch, dim, L = u.shape
        gout = gout.contiguous() if gout is not None else torch.zeros_like(u)
        gz = gD = gbias = None
        if D is not None or z is not None:
            gy, gskip = torch.empty_like(u), torch.empty_like(u)
            gz = torch.empty_like(u) if z is not None else None
            gDp = u.new_empty(batch * dim)
            post_bwd = _elem("ss_post_bwd", u.dtype)
            _parallel(lambda lo, hi, i: post_bwd(dim, L, gout.data_ptr(), _ptr(y), u.data_ptr(), _ptr(D),
                                                 _ptr(z), gy.data_ptr(), gskip.data_ptr(), _ptr(gz),
                                                 gDp.data_ptr(), lo, hi), batch * dim)
            gD = gDp.view(batch, dim).sum(0) if D is not None else None
        else:
            gy, gskip = gout, None
        dt = torch.empty_like(u)
        pre = _elem("ss_pre", u.dtype)
        _parallel(lambda lo, hi, i: pre(dim, L, delta.data_ptr(), _ptr(bias), int(ctx.softplus),
                                        dt.data_ptr(), lo, hi), batch * dim)
        gu, gdt, gA, gB, gC, gh0 = _scan_bwd(u, dt, A, B, C, ckpt, ctx.meta, ctx.seq_idx, gy, glast)
        if D is not None:
            gu += gskip
        gdelta, gbp = torch.empty_like(u), u.new_empty(batch * dim)
        pre_bwd = _elem("ss_pre_bwd", u.dtype)
        _parallel(lambda lo, hi, i: pre_bwd(dim, L, gdt.data_ptr(), delta.data_ptr(), _ptr(bias),
                                            int(ctx.softplus), gdelta.data_ptr(), gbp.data_ptr(), lo, hi),
                  batch * dim)
        if bias is not None:
            gbias = gbp.view(batch, dim).sum(0)
        return gu, gdelta, gA, gB, gC, gD, gz, gbias, gh0, None, None


def _fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
           return_last_state=False, initial_state=None, seq_idx=None):
    """``selective_scan_fn`` semantics on :class:`_CpuScanFused` (dtype handling as selective_scan_with)."""
    check_scan_args(u, delta, A, B, C, initial_state)
    dtype_in = u.dtype
    work = work_dtype(dtype_in)
    cast = lambda t: t.to(work) if t is not None else None  # noqa: E731
    sq = check_seq_idx(seq_idx, u.shape[0], u.shape[2]) if seq_idx is not None else None
    D_ = cast(D).contiguous() if D is not None else None
    b_ = cast(delta_bias).contiguous() if delta_bias is not None else None
    out, last = _CpuScanFused.apply(cast(u), cast(delta), cast(A), cast(B), cast(C), D_, cast(z), b_,
                                    cast(initial_state), sq, bool(delta_softplus))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


def _cpu_core(u, dt, A, B, C, h0, seq_idx=None):
    return _CpuScan.apply(u, dt, A, B, C, h0, seq_idx)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, seq_idx=None):
    """``selective_scan_fn`` on CPU tensors (C kernel; pure torch if it cannot be built).

    Shapes as :func:`core.ops.selective_scan`.
    """
    if cpu_build.load() is not None:
        return _fused(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                      return_last_state=return_last_state, initial_state=initial_state, seq_idx=seq_idx)
    return selective_scan_with(torch_scan.torch_scan_core, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                               delta_softplus=delta_softplus, return_last_state=return_last_state,
                               initial_state=initial_state, seq_idx=seq_idx)


def ssd_scan_cpu(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                 initial_states=None, return_final_states=False, dt_limit=(0.0, float("inf")),
                 seq_idx=None):
    """``mamba_chunk_scan_combined`` on CPU tensors. Shapes as :func:`core.ops.ssd_scan`.

    SSD is the Mamba-1 recurrence with dim = heads*headdim channels, A and dt
    shared over a head's channels and B/C grouped, so it runs on the same C
    kernel (a sequential scan does P*N work per step; the chunked matmul form
    does chunk_size times more, which only pays off on GPUs). ``chunk_size``
    does not change the result. Without the C kernel: the torch chunked form.
    """
    if cpu_build.load() is None:
        return torch_scan.ssd_scan_torch(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                                         dt_softplus=dt_softplus, initial_states=initial_states,
                                         return_final_states=return_final_states, dt_limit=dt_limit,
                                         seq_idx=seq_idx)
    return ssd_scan_with(_cpu_core, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                         initial_states=initial_states, return_final_states=return_final_states,
                         dt_limit=dt_limit, seq_idx=seq_idx)


def _is_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _c_missing():
    # compiles on first call; None when the C kernel is there, else why not (then "auto" takes "torch")
    return None if cpu_build.load() is not None else (cpu_build.error() or "the C scan could not be built")


register_backend("selective_scan", "cpu", selective_scan_cpu, _is_cpu, why_unavailable=_c_missing)
register_backend("ssd_scan", "cpu", ssd_scan_cpu, _is_cpu, why_unavailable=_c_missing)
