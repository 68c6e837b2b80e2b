"""Time core.ops kernels and the Mamba block against mambapy and Hugging Face transformers.

Cases (batch 2, dim 256, N 16 by default; fp32):
  scan    Mamba-1 selective scan (delta_softplus, D, z): ours vs mambapy's parallel scan
          (mambapy.pscan.pscan, used the way mambapy.mamba does) vs transformers'
          MambaMixer slow path (its ``mamba_selective_scan`` torch loop)
  ssd     Mamba-2 SSD scan (heads 4 x headdim 64, 1 group, chunk 256): ours vs transformers'
          Mamba2 torch path (``mamba2_chunk_scan``)
  block   core.layers.Mamba(d_model=128, expand=2 -> d_inner 256) vs mambapy MambaBlock vs
          transformers MambaMixer (same sizes)
  ragged  core.layers.Mamba (same sizes) on 32 sequences with a long tail of short ones (one of
          length L, the rest L*u^4 for u ~ U(0, 1), at least 16): packed into one row
          (cu_seqlens) vs a padded batch (32, L) with lengths

Every (case, implementation, L, mode) runs in a fresh subprocess. Peak memory is
the child's peak resident set (ru_maxrss) during the first call minus its
resident set just before it: inputs and imports are excluded, everything the
call allocates (saved activations, temporaries, gradients) is included. Time
is the median of repeated calls after that first one.

    python bench/bench_core.py                  # full grid (slow: the peers take minutes at L=16384)
    python bench/bench_core.py --quick          # L=1024 only, one repeat
    python bench/bench_core.py --cases scan --lengths 4096 16384 --impls ours mambapy
    python bench/bench_core.py --device cuda    # GPU: torch / triton / mamba_ssm, achieved GB/s over the
                                                # bytes-moved floor (bench/gpu_check.sh runs it)
    python bench/bench_core.py --cases ragged --lengths 2048   # packed vs padded batch

On the CPU every row of ours for scan/ssd also shows its roofline (bench/roofline.py): the
fastest the call could be on this machine, from the scan's arithmetic measured with all
operands in registers (exp per state for Mamba-1, one decay per head for SSD, the reverse
step) and the bytes it must move over the measured copy bandwidth; "x roofline" is the
measured time over that ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ours_1ch: our C scan with its channel-vectorised path off (CORE_OPS_SCAN_LANES=0), i.e. the
# one-channel-at-a-time kernel it replaced
# ours_unfused: softplus/bias and the D/z gate as separate torch ops around the C scan (before the fusion)
IMPLS = {"scan": ["ours", "ours_1ch", "ours_unfused", "mambapy", "hf"], "ssd": ["ours", "ours_1ch", "hf"],
         "block": ["ours", "ours_1ch", "mambapy", "hf"], "ragged": ["packed", "padded"]}
BARE = os.environ.get("BENCH_CORE_BARE") == "1"   # set by --bare for the child processes
# GPU: our CUDA backends by name (auto takes torch until Triton has been measured) vs mamba_ssm
GPU_IMPLS = {"scan": ["torch", "triton", "mamba_ssm"], "ssd": ["torch", "triton", "mamba_ssm"], "block": ["ours", "mamba_ssm"],
             "ragged": ["packed", "padded"]}
CASES = list(IMPLS)


# ----------------------------------------------------------------------------- child side
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _leaf_maker(dev):
    """Seeded random leaf tensors on ``dev``: ``(mk(*shape, scale=1.0), rand(*shape))``, one stream."""
    import torch
    g = torch.Generator(device="cpu").manual_seed(0)

    def mk(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev).requires_grad_()

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    return mk, rand


def _our_backend(impl, dev, cuda_backend):
    """Backend name for ``impl`` "ours" (``cuda_backend`` on a GPU, else auto) or "mamba_ssm"."""
    if impl in ("mamba_ssm", "torch", "triton"):
        return impl
    return cuda_backend if dev == "cuda" else ("cpu" if impl == "ours_1ch" else "auto")


def _scan_fn(impl, L, dev, b=2, d=256, N=16):
    import torch
    import torch.nn.functional as F
    mk, rand = _leaf_maker(dev)
    u, delta, z = mk(b, d, L), mk(b, d, L, scale=0.5), mk(b, d, L)
    A = (-rand(d, N) - 0.1).to(dev).requires_grad_()
    B, C, D, bias = mk(b, N, L), mk(b, N, L), mk(d), mk(d, scale=0.1)
    params = [u, delta, z, A, B, C, D, bias]
    if impl == "ours_unfused":
        from core.ops import cpu_scan
        fn = lambda: cpu_scan.selective_scan_with(cpu_scan._cpu_core, u, delta, A, B, C, D=D, z=z,  # noqa: E731
                                                  delta_bias=bias, delta_softplus=True)
    elif impl in ("ours", "ours_1ch", "mamba_ssm", "torch", "triton"):
        from core.ops import selective_scan
        backend = _our_backend(impl, dev, "triton")
        if BARE:  # the recurrence alone: what the roofline bounds
            fn = lambda: selective_scan(u, delta.abs(), A, B, C, backend=backend)  # noqa: E731
        else:
            fn = lambda: selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,  # noqa: E731
                                        delta_softplus=True, backend=backend)
    elif impl == "mambapy":
        from mambapy.pscan import pscan

        def fn():  # mambapy.mamba.MambaBlock.selective_scan, in (B, L, D) layout
            x, dt = u.transpose(1, 2), F.softplus(delta + bias[:, None]).transpose(1, 2)
            dA = torch.exp(dt.unsqueeze(-1) * A)
            BX = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
            hs = pscan(dA, BX)
            y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
            return y * F.silu(z.transpose(1, 2))
    else:
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
        fn = lambda: mamba_selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,  # noqa: E731
                                          delta_softplus=True)
    return fn, params


def _ssd_fn(impl, L, dev, b=2, H=4, P=64, N=16, chunk=256):
    mk, rand = _leaf_maker(dev)
    x, dt, B, C = mk(b, L, H, P), mk(b, L, H, scale=0.5), mk(b, L, 1, N), mk(b, L, 1, N)
    A = (-rand(H) - 0.1).to(dev).requires_grad_()
    D, bias = mk(H), mk(H, scale=0.1)
    params = [x, dt, A, B, C, D, bias]
    if impl in ("ours", "ours_1ch", "mamba_ssm", "torch", "triton"):
        from core.ops import ssd_scan
        backend = _our_backend(impl, dev, "torch")
        if BARE:
            fn = lambda: ssd_scan(x, dt.abs(), A, B, C, chunk_size=chunk, backend=backend)  # noqa: E731
        else:
            fn = lambda: ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias,  # noqa: E731
                                  dt_softplus=True, backend=backend)
    else:
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
        fn = lambda: mamba2_chunk_scan(x, dt, A, B, C, chunk, D=D, dt_bias=bias, dt_softplus=True)  # noqa: E731
    return fn, params


def _block_fn(impl, L, dev, b=2, d_model=128, N=16):
    import torch
    torch.manual_seed(0)
    if impl in ("ours", "ours_1ch"):
        from core.layers import Mamba
        m = Mamba(d_model, d_state=N, expand=2)
    elif impl == "mamba_ssm":
        from mamba_ssm import Mamba as MambaSSM
        m = MambaSSM(d_model, d_state=N, expand=2)
    elif impl == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig
        m = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=N, expand_factor=2, pscan=True))
    else:
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
        m = MambaMixer(MambaConfig(hidden_size=d_model, state_size=N, expand=2), layer_idx=0)
    m = m.to(dev)
    x = torch.randn(b, L, d_model, device=dev, requires_grad=True)
    return (lambda: m(x)), [x, *m.parameters()]


def ragged_lengths(L, n=32):
    """A long tail: one sequence of length L, the others L * u^4 (u ~ U(0, 1), seeded), at least 16."""
    import torch
    g = torch.Generator().manual_seed(0)
    lens = (L * torch.rand(n, generator=g) ** 4).long().clamp(min=min(16, L), max=L)
    lens[0] = L
    return lens


def _ragged_fn(impl, L, dev, n=32, d_model=128, N=16):
    import torch
    from core.layers import Mamba
    from core.ops import pack_sequences, packed_to_padded
    torch.manual_seed(0)
    m = Mamba(d_model, d_state=N, expand=2).to(dev)
    x, cu = pack_sequences([torch.randn(int(k), d_model) for k in ragged_lengths(L, n)])
    if impl == "packed":
        x, cu = x.to(dev).requires_grad_(), cu.to(dev)
        return (lambda: m(x, cu_seqlens=cu)), [x, *m.parameters()]
    xp, lens = packed_to_padded(x, cu)
    xp, lens = xp.to(dev).requires_grad_(), lens.to(dev)
    return (lambda: m(xp, lengths=lens)), [xp, *m.parameters()]


def child(case, impl, L, mode, dev, threads, min_time, max_reps, clock="wall"):
    import torch
    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    fn, params = {"scan": _scan_fn, "ssd": _ssd_fn, "block": _block_fn, "ragged": _ragged_fn}[case](impl, L, dev)

    def call():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if mode == "fwd+bwd":
            out.sum().backward()
            for p in params:
                p.grad = None
        if dev == "cuda":
            torch.cuda.synchronize()

    ctx = torch.no_grad() if mode == "fwd" else torch.enable_grad()
    with ctx:
        if dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        # cpu: process CPU seconds, the honest measure on a machine shared with other jobs
        now = time.process_time if clock == "cpu" else time.perf_counter
        rss0 = _rss_bytes()
        t0 = now()
        call()
        first = now() - t0
        peak = (torch.cuda.max_memory_allocated() - base) if dev == "cuda" else _maxrss_bytes() - rss0
        times = []
        start = time.perf_counter()
        while len(times) < max_reps and (not times or time.perf_counter() - start < min_time):
            t0 = now()
            call()
            times.append(now() - t0)
    print(json.dumps({"time": statistics.median(times), "first": first, "peak": peak, "reps": len(times)}))


# ----------------------------------------------------------------------------- parent side
def _default_threads() -> int:
    import torch
    return torch.get_num_threads()


def bytes_floor(case, L, b=2, d=256, N=16, mode="fwd"):
    """Smallest number of bytes a fp32 kernel must move (inputs read once, outputs written once)."""
    if case == "scan":
        n = b * d * L * 4 + 2 * b * N * L   # u, delta, z, out + B, C
        return 4 * (n if mode == "fwd" else 2 * n + 3 * b * d * L + 2 * b * N * L)
    if case == "ssd":
        n = 2 * b * L * d + b * L * 4 + 2 * b * L * N
        return 4 * (n if mode == "fwd" else 2 * n + b * L * d + 2 * b * L * N)
    return None


def run_one(args, case, impl, L, mode):
    env = dict(os.environ, BENCH_CORE_BARE="1" if args.bare else "0")
    if impl == "ours_1ch":
        env["CORE_OPS_SCAN_LANES"] = "0"
    cmd = [sys.executable, __file__, "--child", case, impl, str(L), mode, "--device", args.device,
           "--threads", str(args.threads), "--min-time", str(args.min_time), "--max-reps", str(args.max_reps),
           "--clock", args.clock]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {args.timeout}s"}
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last[:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["scan", "ssd", "block"], choices=CASES)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--impls", nargs="+", default=None, help="subset of: ours mambapy hf mamba_ssm "
                   "(ragged: packed padded)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch default)")
    p.add_argument("--min-time", type=float, default=2.0, help="repeat calls for at least this long")
    p.add_argument("--max-reps", type=int, default=5)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per child")
    p.add_argument("--quick", action="store_true", help="L=1024, one timed repeat")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="time as wall seconds, or as process CPU seconds (for a busy machine; CPU only)")
    p.add_argument("--bare", action="store_true",
                   help="scan/ssd without D, z, bias and softplus: the recurrence alone, as the roofline counts it")
    p.add_argument("--no-roofline", action="store_true", help="skip the CPU roofline columns")
    p.add_argument("--child", nargs=4, metavar=("CASE", "IMPL", "L", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        case, impl, L, mode = args.child
        return child(case, impl, int(L), mode, args.device, args.threads, args.min_time, args.max_reps,
                     args.clock)
    if args.quick:
        args.lengths, args.max_reps, args.min_time = [1024], 1, 0.0
    table = GPU_IMPLS if args.device == "cuda" else IMPLS
    print(f"# bench_core device={args.device} threads={args.threads or 'default'} clock={args.clock} bare={args.bare} "
          f"python={sys.version.split()[0]}", flush=True)
    ceil = None
    if args.device == "cpu" and not args.no_roofline:
        sys.path.insert(0, str(ROOT))
        import roofline
        ceil = roofline.measure()
        threads = args.threads or _default_threads()
        print(f"# roofline ceilings (one thread, fp32): {ceil['exp']:.3f} ns per state update with exp, "
              f"{ceil['decay']:.3f} with one decay per step, {ceil['reverse']:.3f} per reverse step; "
              f"copy bandwidth {ceil['bandwidth'] / 1e9:.1f} GB/s; {threads} thread(s) in the runs", flush=True)
    if args.device == "cuda":  # achieved bandwidth: the bytes a kernel must move at least, over its time
        print("| case | L | mode | impl | time (s) | vs first | peak mem (MiB) | mem vs first | GB/s achieved | "
              "bytes-moved floor (MiB) |")
    else:
        print("| case | L | mode | impl | time (s) | vs ours | peak mem (MiB) | mem vs ours | roofline (s) | x roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for case in args.cases:
        for L in args.lengths:
            for mode in args.modes:
                res = {}
                base = table[case][0]  # the "vs ours" columns compare with the first impl
                if case == "ragged":
                    lens = [int(k) for k in ragged_lengths(L)]
                    print(f"| ragged | {L} | {mode} | 32 sequences, {sum(lens)} tokens, padded batch "
                          f"{32 * L} ({32 * L / sum(lens):.1f}x) | | | | |", flush=True)
                for impl in table[case]:
                    if args.impls and impl not in args.impls:
                        continue
                    res[impl] = r = run_one(args, case, impl, L, mode)
                    ours = res.get(base, {})
                    if "error" in r:
                        print(f"| {case} | {L} | {mode} | {impl} | - | - | - | {r['error']} | | |", flush=True)
                        continue
                    ratio = f"{r['time'] / ours['time']:.1f}x" if "time" in ours and impl != base else ""
                    mratio = (f"{r['peak'] / max(ours['peak'], 1):.1f}x" if "peak" in ours and impl != base
                              else "")
                    extra = ""
                    fl = bytes_floor(case, L, mode=mode)
                    roof = ""
                    if args.device == "cuda":
                        roof = f"{fl / r['time'] / 1e9:.0f} | {fl / 2**20:.0f}" if fl else " | "
                    elif ceil is not None and impl == "ours":
                        c = roofline.ceiling_seconds(case, L, mode, ceil, threads, fl)
                        roof = f"{c:.4f} | {r['time'] / c:.1f}x" if c else " | "
                    else:
                        roof = " | "
                    print(f"| {case} | {L} | {mode} | {impl} | {r['time']:.4f}{extra} | {ratio} | "
                          f"{r['peak'] / 2**20:.0f} | {mratio} | {roof} |", flush=True)


if __name__ == "__main__":
    main()
