"""Fast CPU backend ("cpu"): the C selective scan (csrc/scan.c) behind an autograd.Function.

The forward keeps only the state at every K-th step (K = max(64, 4N), so at
most batch*dim*L/4 numbers); the backward recomputes each chunk's states from
its checkpoint and walks it in reverse. Channels are split over
``torch.get_num_threads()`` Python threads (ctypes drops the GIL). If the C
code cannot be compiled, "cpu" is served by the pure-torch chunked scan
(core/ops/torch_scan.py) instead.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from . import cpu_build, torch_scan
from .dispatch import register_backend
from .scan_common import bc_layout, bc_unlayout, chunk_len, selective_scan_with, ssd_scan_with

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


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, seq_idx):
        lib = cpu_build.load()
        sfx = "f64" if u.dtype == torch.float64 else "f32"
        u, dt, A = u.contiguous(), dt.contiguous(), A.contiguous()
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
        ctx.save_for_backward(u, dt, A, B, C, ckpt)  # not B2/C2: re-laid out in backward
        ctx.seq_idx = seq_idx  # int32 (batch, L), never differentiated
        ctx.meta = (Gb, Gc, sb, sc, K, B.dim(), C.dim(), h0 is not None)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        lib = cpu_build.load()
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        Gb, Gc, sb, sc, K, bdim, cdim, has_h0 = ctx.meta
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
                                      gh0.data_ptr(), _ptr(ctx.seq_idx), lo, hi),
                  batch * dim)
        gB = bc_unlayout(gB.sum(0), bdim)
        gC = bc_unlayout(gC.sum(0), cdim)
        return gu, gdt, gA.sum(0), gB, gC, (gh0 if has_h0 else None), None


def _cpu_core(u, dt, A, B, C, h0, seq_idx=None):
    return _CpuScan.apply(u, dt, A, B, C, h0, seq_idx)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, seq_idx=None):
    """``selective_scan_fn`` on CPU tensors (C kernel; pure torch if it cannot be built).

    Shapes as :func:`core.ops.selective_scan`.
    """
    core = _cpu_core if cpu_build.load() is not None else torch_scan.torch_scan_core
    return selective_scan_with(core, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
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


register_backend("selective_scan", "cpu", selective_scan_cpu, _is_cpu)
register_backend("ssd_scan", "cpu", ssd_scan_cpu, _is_cpu)
