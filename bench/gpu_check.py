"""Our kernels on CUDA tensors (the real Triton compiler, not the interpreter) vs the float64 reference,
values AND gradients, and vs mamba_ssm / causal_conv1d where they are installed.

    python bench/gpu_check.py            # run by bench/gpu_check.sh; exit 1 if any case fails

One line per (op, backend, case): the largest error of the output and of the input gradients,
relative to the reference's largest magnitude, and PASS/FAIL against the dtype's tolerance.
"""
from __future__ import annotations

import os
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ops import available_backends, causal_conv1d, selective_scan, ssd_scan  # noqa: E402
from core.ops.reference import causal_conv1d_ref, selective_scan_ref, ssd_scan_ref  # noqa: E402

TOL = {torch.float64: 1e-8, torch.float32: 3e-3, torch.bfloat16: 6e-2}


def _leaves(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, kind) in shapes.items():
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if kind == "neg":
            t = -torch.rand(*shape, generator=g, dtype=torch.float64) - 0.1
        elif kind == "small":
            t = 0.5 * t
        out[name] = t
    return out


def _rel(a, e):
    a, e = a.detach().double(), e.detach().double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-6))


def _reference(ref_fn, base, dev, seed=1):
    """float64 outputs, the random weights of a linear functional of them, and its input gradients."""
    x64 = {k: v.to(dev).requires_grad_() for k, v in base.items()}
    ref = ref_fn(**x64)
    ref = ref if isinstance(ref, tuple) else (ref,)
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(dev) for r in ref]
    gr = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, ws)), list(x64.values()), allow_unused=True)
    return ref, ws, gr


def _check(fn, reference, base, dtype, dev):
    """(output error, gradient error) of ``fn`` on ``dtype`` leaves on ``dev`` vs the float64 reference."""
    ref, ws, gr = reference
    x = {k: v.to(dev, dtype).requires_grad_() for k, v in base.items()}
    out = fn(**x)
    out = out if isinstance(out, tuple) else (out,)
    go = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(out, ws)), list(x.values()),
                             allow_unused=True)
    e_out = max(_rel(o, r) for o, r in zip(out, ref))
    e_grad = max((_rel(a, b) for a, b in zip(go, gr) if b is not None and a is not None), default=0.0)
    if any(a is None and b is not None for a, b in zip(go, gr)):
        e_grad = float("inf")
    return e_out, e_grad


def scan_cases():
    b, d, N = 2, 64, 16
    for L, groups, h0 in [(1, None, False), (257, None, True), (4096, None, False), (1000, 2, False)]:
        bc = (b, groups, N, L) if groups else (b, N, L)
        shapes = {"u": ((b, d, L), "n"), "delta": ((b, d, L), "small"), "A": ((d, N), "neg"), "B": (bc, "n"),
                  "C": (bc, "n"), "D": ((d,), "n"), "z": ((b, d, L), "n"), "delta_bias": ((d,), "small")}
        if h0:
            shapes["initial_state"] = ((b, d, N), "n")
        yield f"L={L} groups={groups} h0={h0}", shapes, dict(delta_softplus=True, return_last_state=h0)


def ssd_cases():
    b, H, P, N = 2, 4, 32, 16
    for L, G, chunk in [(300, 1, 64), (1024, 2, 256)]:
        shapes = {"x": ((b, L, H, P), "n"), "dt": ((b, L, H), "small"), "A": ((H,), "neg"),
                  "B": ((b, L, G, N), "n"), "C": ((b, L, G, N), "n"), "D": ((H,), "n"), "dt_bias": ((H,), "small")}
        yield f"L={L} groups={G} chunk={chunk}", shapes, dict(chunk_size=chunk, dt_softplus=True)


def conv_cases():
    b, d = 2, 64
    for L, W, init in [(1, 4, False), (130, 4, True), (4096, 3, False), (777, 2, False)]:
        shapes = {"x": ((b, d, L), "n"), "weight": ((d, W), "n"), "bias": ((d,), "n")}
        if init:
            shapes["initial_states"] = ((b, d, W - 1), "n")
        yield f"L={L} width={W} init={init}", shapes, dict(activation="silu")


OPS = {
    "selective_scan": (selective_scan, selective_scan_ref, scan_cases, ["triton", "torch", "mamba_ssm"]),
    "ssd_scan": (ssd_scan, ssd_scan_ref, ssd_cases, ["triton", "torch", "mamba_ssm"]),
    "causal_conv1d": (causal_conv1d, causal_conv1d_ref, conv_cases, ["triton", "torch", "causal_conv1d"]),
}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a self-test of this script on the CPU backends (no Triton)")
    dev = p.parse_args(argv).device
    if dev == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device; nothing to check")
        return 0
    if dev == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_check.py: unset TRITON_INTERPRET to test the compiled Triton kernels")
        return 2
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU self-test"
    print(f"# {name} torch {torch.__version__} cuda {torch.version.cuda}; backends: "
          + ", ".join(f"{op}={available_backends(op, dev)}" for op in OPS), flush=True)
    failed = 0
    for op, (fn, ref_fn, cases, backends) in OPS.items():
        have = available_backends(op, dev)
        if dev == "cpu":
            backends = [b for b in have if b not in ("triton", "reference")]
        for name, shapes, kw in cases():
            base = _leaves(shapes, seed=zlib.crc32(name.encode()))
            reference = _reference(lambda **a: ref_fn(**a, **kw), base, dev)
            for backend in backends:
                if backend not in have:
                    print(f"SKIP {op:15s} {backend:13s} {name}: not installed", flush=True)
                    continue
                for dtype in (torch.float32, torch.float64) if backend == "triton" else (torch.float32,):
                    if backend in ("mamba_ssm", "causal_conv1d") and ("initial_state" in shapes
                                                                      or "initial_states" in shapes):
                        continue  # the packages lack these; the call would go to our torch fallback
                    t0 = time.perf_counter()
                    try:
                        e_out, e_grad = _check(lambda **a: fn(**a, **kw, backend=backend),
                                               reference, base, dtype, dev)
                    except Exception as e:  # report and go on: one broken kernel must not hide the rest
                        failed += 1
                        print(f"FAIL {op:15s} {backend:13s} {name} {str(dtype)[6:]}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:150]}", flush=True)
                        continue
                    ok = e_out <= TOL[dtype] and e_grad <= 10 * TOL[dtype]
                    failed += not ok
                    print(f"{'PASS' if ok else 'FAIL'} {op:15s} {backend:13s} {name} {str(dtype)[6:]}: "
                          f"out {e_out:.1e} grad {e_grad:.1e} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"# {failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
