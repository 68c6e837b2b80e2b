"""Input builders and comparisons against the float64 references."""
from __future__ import annotations

import torch

from core.ops import selective_scan, selective_scan_ref, ssd_scan, ssd_scan_ref

F64 = torch.float64


def ss_inputs(b=2, d=4, L=9, N=3, groups=None, dtype=F64, D=True, z=True, bias=True, h0=True,
              delta_scale=1.0, seed=0, C_groups="same"):
    """Random Mamba-1 scan inputs as a dict of leaf tensors requiring grad.

    groups: None -> B/C (b, N, L); int -> (b, G, N, L); "inv" -> (d, N).
    C_groups: "same" or another value of the same kind for C.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype)

    def bc(kind):
        if kind is None:
            return r(b, N, L)
        if kind == "inv":
            return r(d, N)
        return r(b, kind, N, L)

    x = {
        "u": r(b, d, L),
        "delta": (torch.rand(b, d, L, generator=g, dtype=F64) * delta_scale).to(dtype),
        "A": (-torch.rand(d, N, generator=g, dtype=F64) * 2 - 0.1).to(dtype),
        "B": bc(groups),
        "C": bc(groups if C_groups == "same" else C_groups),
    }
    if D:
        x["D"] = r(d)
    if z:
        x["z"] = r(b, d, L)
    if bias:
        x["delta_bias"] = r(d, scale=0.5)
    if h0:
        x["initial_state"] = r(b, d, N)
    for t in x.values():
        t.requires_grad_()
    return x


def run_ss(backend, x, softplus=True, ref=False):
    kw = {k: v for k, v in x.items() if k not in ("u", "delta", "A", "B", "C")}
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    if ref:
        return selective_scan_ref(*args, delta_softplus=softplus, return_last_state=True, **kw)
    return selective_scan(*args, delta_softplus=softplus, return_last_state=True, backend=backend, **kw)


def grads(outs, inputs, seed=1):
    """Gradients of a random linear functional of all outputs (so every output matters)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=F64)).sum() for o in outs)
    return torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)


def assert_close_to_ref(x, out, ref, gref, rtol, atol, grad_rtol, grad_atol):
    """Finite outputs/gradients of ``out`` (for inputs ``x``) close to float64 ``ref``/``gref``."""
    for o, r in zip(out, ref):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol)
    for k, a, e in zip(x, grads(out, x), gref):
        assert torch.isfinite(a).all(), k
        torch.testing.assert_close(a.double(), e, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"{k}: {m}")


def check_against_ref(backend, x, softplus=True, rtol=1e-9, atol=1e-9, grad=True):
    """Outputs and gradients of ``backend`` vs the reference on float64 copies of ``x``."""
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = run_ss(None, x64, softplus, ref=True)
    out = run_ss(backend, x, softplus)
    assert out[0].dtype == x["u"].dtype
    for o, r in zip(out, ref):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol)
    if grad:
        gr, go = grads(ref, x64), grads(out, x)
        for k, a, e in zip(x, go, gr):
            assert a is not None, k
            assert a.dtype == x[k].dtype and a.shape == x[k].shape, k
            torch.testing.assert_close(a.double(), e, rtol=rtol, atol=atol, msg=lambda m: f"grad {k}: {m}")


def ssd_inputs(b=2, L=11, H=4, P=3, G=2, N=3, dtype=F64, D="vec", z=True, bias=True, h0=True,
               dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype)

    x = {
        "x": r(b, L, H, P),
        "dt": (torch.rand(b, L, H, generator=g, dtype=F64) * dt_scale).to(dtype),
        "A": (-torch.rand(H, generator=g, dtype=F64) * 2 - 0.1).to(dtype),
        "B": r(b, L, G, N),
        "C": r(b, L, G, N),
    }
    if D == "vec":
        x["D"] = r(H)
    elif D == "mat":
        x["D"] = r(H, P)
    if z:
        x["z"] = r(b, L, H, P)
    if bias:
        x["dt_bias"] = r(H, scale=0.5)
    if h0:
        x["initial_states"] = r(b, H, P, N)
    for t in x.values():
        t.requires_grad_()
    return x


def run_ssd(backend, x, chunk_size=4, softplus=True, dt_limit=(0.0, float("inf")), ref=False):
    kw = {k: v for k, v in x.items() if k not in ("x", "dt", "A", "B", "C")}
    args = (x["x"], x["dt"], x["A"], x["B"], x["C"])
    f = ssd_scan_ref if ref else (lambda *a, **k: ssd_scan(*a, backend=backend, **k))
    return f(*args, chunk_size=chunk_size, dt_softplus=softplus, return_final_states=True,
             dt_limit=dt_limit, **kw)


def check_ssd_against_ref(backend, x, chunk_size=4, softplus=True, dt_limit=(0.0, float("inf")),
                          rtol=1e-9, atol=1e-9):
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = run_ssd(None, x64, chunk_size, softplus, dt_limit, ref=True)
    out = run_ssd(backend, x, chunk_size, softplus, dt_limit)
    assert out[0].dtype == x["x"].dtype
    for o, r in zip(out, ref):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol)
    gr, go = grads(ref, x64), grads(out, x)
    for k, a, e in zip(x, go, gr):
        assert a is not None and a.shape == x[k].shape, k
        torch.testing.assert_close(a.double(), e, rtol=rtol, atol=atol, msg=lambda m: f"grad {k}: {m}")


def saved_numel(fn):
    """Elements of the distinct storages autograd keeps while ``fn()`` runs (views count once)."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
