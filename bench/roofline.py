"""Roofline for the CPU scans in bench/bench_core.py (bench-only).

The ceiling of a scan is set by its arithmetic, not by GEMM peak: every state update
of Mamba-1 needs one exp(dt*A) and three fused multiply-adds, and the state recurrence
cannot be turned into matrix products on a CPU without doing chunk_size times more work.
So the ceilings are measured, on this machine, by bench/roofline.c: the kernel's own
arithmetic (its vector exp included) with every operand in registers. Memory is the
other bound: the bytes a kernel must move at least, over the measured copy bandwidth.

    ceiling(call) = max(updates x ns_per_update / threads, bytes_floor / bandwidth)
"""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"exp": 0, "decay": 1, "reverse": 2}


def _build() -> ctypes.CDLL:
    from core.ops import cpu_build
    cc = cpu_build._compiler()
    if cc is None:
        raise RuntimeError("no C compiler: the roofline needs one")
    out = Path(tempfile.mkdtemp(prefix="roofline-")) / "roofline.so"
    cmd = [cc, *cpu_build._FLAGS, "-march=native", str(ROOT / "bench" / "roofline.c"), "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    lib = ctypes.CDLL(str(out))
    lib.roofline_ns_per_update.restype = ctypes.c_double
    lib.roofline_ns_per_update.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def _bandwidth_bytes_per_s(nbytes: int = 256 * 2**20, reps: int = 3) -> float:
    """Copy bandwidth (bytes read + written per second) of one thread on a buffer far beyond cache."""
    import torch
    a = torch.empty(nbytes // 4)
    a.fill_(1.0)
    b = torch.empty_like(a)
    best = float("inf")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            b.copy_(a)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * nbytes / best


def measure(steps: int = 200_000, reps: int = 3) -> dict:
    """{'exp'|'decay'|'reverse': ns per state update (fp32, one thread), 'bandwidth': bytes/s}."""
    lib = _build()
    out = {k: min(lib.roofline_ns_per_update(v, steps) for _ in range(reps)) for k, v in KINDS.items()}
    out["bandwidth"] = _bandwidth_bytes_per_s()
    return out


def ceiling_seconds(case: str, L: int, mode: str, ceil: dict, threads: int, bytes_floor: int | None,
                    b: int = 2, d: int = 256, N: int = 16) -> float | None:
    """Fastest possible time of one bench_core call: compute bound vs memory bound.

    scan: Mamba-1, b*d*L*N updates, each with its own exp; the backward recomputes the
    forward from checkpoints, then runs the reverse step. ssd: d = heads*headdim channels,
    one decay per step and head. The (batch, dim, L) element-wise work around the scan
    (softplus, D, gate) is not counted: the ceiling is the scan's alone.
    """
    if case not in ("scan", "ssd"):
        return None
    updates = b * d * L * N
    fwd = ceil["exp"] if case == "scan" else ceil["decay"]
    per = fwd if mode == "fwd" else 2 * fwd + ceil["reverse"]
    compute = updates * per * 1e-9 / max(threads, 1)
    memory = (bytes_floor or 0) / ceil["bandwidth"]
    return max(compute, memory)
