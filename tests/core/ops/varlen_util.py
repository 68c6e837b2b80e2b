"""Packed-sequence checks: a backend on packed rows (``seq_idx``) vs the float64 reference run
on every sequence alone, values and gradients (shared by the CPU tests and the Triton cases)."""
from __future__ import annotations

import torch

from core.ops import causal_conv1d, causal_conv1d_ref, selective_scan, selective_scan_ref, ssd_scan, ssd_scan_ref

from .util import grads, ss_inputs, ssd_inputs

# two packed rows of 13 steps; a length-1 sequence and boundaries off and on chunk edges (4)
ROWS = ([3, 5, 1, 4], [8, 5])


def seq_idx_of(rows=ROWS) -> torch.Tensor:
    return torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in rows]
                       ).to(torch.int32)


def _spans(rows):
    for b, r in enumerate(rows):
        s = 0
        for i, n in enumerate(r):
            yield b, i, s, s + n
            s += n


def ss_alone(x, rows=ROWS, softplus=True):
    """Reference on each sequence alone: (out (batch, dim, L), last state of each row's last sequence)."""
    outs, lasts = [[] for _ in rows], [None] * len(rows)
    for b, i, s, e in _spans(rows):
        t = lambda v: v[b:b + 1, ..., s:e]  # noqa: E731  (time is the last axis)
        kw = {"D": x.get("D"), "delta_bias": x.get("delta_bias"),
              "z": t(x["z"]) if "z" in x else None,
              "initial_state": x["initial_state"][b:b + 1] if ("initial_state" in x and i == 0) else None}
        B = x["B"] if x["B"].dim() == 2 else t(x["B"])
        C = x["C"] if x["C"].dim() == 2 else t(x["C"])
        y, last = selective_scan_ref(t(x["u"]), t(x["delta"]), x["A"], B, C, delta_softplus=softplus,
                                     return_last_state=True, **kw)
        outs[b].append(y)
        lasts[b] = last
    return torch.cat([torch.cat(o, -1) for o in outs]), torch.cat(lasts)


def check_ss_packed(backend, rows=ROWS, rtol=1e-9, atol=1e-9, **kw):
    x = ss_inputs(b=len(rows), L=sum(rows[0]), **kw)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = ss_alone(x64, rows)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    rest = {k: v for k, v in x.items() if k not in ("u", "delta", "A", "B", "C")}
    f = selective_scan_ref if backend == "reference" else (lambda *a, **k: selective_scan(*a, backend=backend, **k))
    out = f(*args, delta_softplus=True, return_last_state=True, seq_idx=seq_idx_of(rows), **rest)
    _compare(x, x64, out, ref, rtol, atol)


def ssd_alone(x, rows=ROWS, chunk_size=4):
    outs, lasts = [[] for _ in rows], [None] * len(rows)
    for b, i, s, e in _spans(rows):
        t = lambda v: v[b:b + 1, s:e]  # noqa: E731  (time is axis 1)
        kw = {"D": x.get("D"), "dt_bias": x.get("dt_bias"), "z": t(x["z"]) if "z" in x else None,
              "initial_states": x["initial_states"][b:b + 1] if ("initial_states" in x and i == 0) else None}
        y, last = ssd_scan_ref(t(x["x"]), t(x["dt"]), x["A"], t(x["B"]), t(x["C"]), chunk_size=chunk_size,
                               dt_softplus=True, return_final_states=True, **kw)
        outs[b].append(y)
        lasts[b] = last
    return torch.cat([torch.cat(o, 1) for o in outs]), torch.cat(lasts)


def check_ssd_packed(backend, rows=ROWS, chunk_size=4, rtol=1e-9, atol=1e-9, **kw):
    x = ssd_inputs(b=len(rows), L=sum(rows[0]), **kw)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = ssd_alone(x64, rows, chunk_size)
    args = (x["x"], x["dt"], x["A"], x["B"], x["C"])
    rest = {k: v for k, v in x.items() if k not in ("x", "dt", "A", "B", "C")}
    f = ssd_scan_ref if backend == "reference" else (lambda *a, **k: ssd_scan(*a, backend=backend, **k))
    out = f(*args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True,
            seq_idx=seq_idx_of(rows), **rest)
    _compare(x, x64, out, ref, rtol, atol)


def check_conv_packed(backend, rows=ROWS, activation="silu", bias=True, init=True, width=4,
                      rtol=1e-9, atol=1e-9):
    g = torch.Generator().manual_seed(3)
    L = sum(rows[0])
    x = {"x": torch.randn(len(rows), 3, L, generator=g, dtype=torch.float64),
         "weight": torch.randn(3, width, generator=g, dtype=torch.float64)}
    if bias:
        x["bias"] = torch.randn(3, generator=g, dtype=torch.float64)
    if init:
        x["initial_states"] = torch.randn(len(rows), 3, width - 1, generator=g, dtype=torch.float64)
    for v in x.values():
        v.requires_grad_()
    x64 = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    outs = [[] for _ in rows]
    for b, i, s, e in _spans(rows):
        h0 = x64["initial_states"][b:b + 1] if (init and i == 0) else None
        outs[b].append(causal_conv1d_ref(x64["x"][b:b + 1, :, s:e], x64["weight"], x64.get("bias"),
                                         activation=activation, initial_states=h0))
    ref = (torch.cat([torch.cat(o, -1) for o in outs]),)
    f = causal_conv1d_ref if backend == "reference" else (lambda *a, **k: causal_conv1d(*a, backend=backend, **k))
    out = (f(x["x"], x["weight"], x.get("bias"), activation=activation, initial_states=x.get("initial_states"),
             seq_idx=seq_idx_of(rows)),)
    _compare(x, x64, out, ref, rtol, atol)


def _compare(x, x64, out, ref, rtol, atol):
    for o, r in zip(out, ref):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol)
    for k, a, e in zip(x, grads(out, x), grads(ref, x64)):
        assert a is not None and a.shape == x[k].shape, k
        torch.testing.assert_close(a.double(), e, rtol=rtol, atol=atol, msg=lambda m: f"grad {k}: {m}")
