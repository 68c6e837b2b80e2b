"""Training cost of the time-series forecasters vs a Transformer encoder as the input grows.

For each input length (96, 720, 2880 by default) and model (chimera, spacetime, dlinear and a
vanilla Transformer encoder forecaster, all in the same run) it times ``--steps`` training steps
(Adam, batch ``--batch-size``, 7 variates, horizon 96) after one warm-up step, extrapolates to one
ETTh1 training epoch (8640 - L - 96 + 1 windows) and reports peak memory: on CUDA
``max_memory_allocated`` during the timed steps; on CPU how far the process's peak RSS rises
above its level after building model and batch (each configuration runs in a fresh subprocess
so peaks do not mix).

    python bench/bench_timeseries.py                      # all models, L = 96 720 2880
    python bench/bench_timeseries.py --lengths 96 720 --models chimera transformer
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("chimera", "spacetime", "dlinear", "transformer")


def _transformer(seq_len, pred_len, enc_in, d_model=64, n_heads=4, n_layers=2, dropout=0.0):
    """Vanilla Transformer encoder forecaster: one token per time step (all variates embedded
    together), sinusoidal positions, 2 encoder layers, then a linear map over time L -> H."""
    import torch
    import torch.nn as nn

    class TransformerForecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(enc_in, d_model)
            pos = torch.arange(seq_len)[:, None] / (10000 ** (torch.arange(0, d_model, 2) / d_model))
            pe = torch.zeros(seq_len, d_model)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos)
            self.register_buffer("pe", pe)
            layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.time = nn.Linear(seq_len, pred_len)
            self.out = nn.Linear(d_model, enc_in)

        def forward(self, x):
            mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True) + 1e-5
            z = self.encoder(self.embed((x - mean) / std) + self.pe)
            return self.out(self.time(z.transpose(1, 2)).transpose(1, 2)) * std + mean

    return TransformerForecaster()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(model: str, seq_len: int, pred_len: int, batch: int, steps: int, device: str, threads: int) -> dict:
    """Time ``steps`` training steps of one configuration in this process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from apps.timeseries.train import MODEL_DEFAULTS
    from apps.timeseries.models import build_model

    torch.manual_seed(0)
    C = 7
    if model == "transformer":
        m = _transformer(seq_len, pred_len, C)
    else:
        m = build_model(model, seq_len, pred_len, C, C, **MODEL_DEFAULTS[model])
    m = m.to(device).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    x = torch.randn(batch, seq_len, C, device=device)
    y = torch.randn(batch, pred_len, C, device=device)

    def step():
        loss = torch.nn.functional.l1_loss(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss0 = _peak_rss_mb()  # before the first step: its activations count towards the peak
    step()  # warm-up (allocator, lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    cpu = (time.process_time() - c0) / steps
    n_windows = 8640 - seq_len - pred_len + 1
    steps_per_epoch = n_windows // batch
    mem = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
           else max(_peak_rss_mb() - rss0, 0.0))
    return dict(model=model, seq_len=seq_len, batch=batch, params=sum(p.numel() for p in m.parameters()),
                step_s=round(wall, 4), step_cpu_s=round(cpu, 4), epoch_s=round(wall * steps_per_epoch, 1),
                peak_mem_mb=round(mem, 1), device=device, threads=torch.get_num_threads())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--lengths", nargs="+", type=int, default=[96, 720, 2880])
    ap.add_argument("--pred-len", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        res = run_one(args._one[0], int(args._one[1]), args.pred_len, args.batch_size, args.steps,
                      args.device, args.threads)
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    print(f"{'model':12s} {'L':>5s} {'params':>9s} {'s/step':>8s} {'cpu s/step':>10s} {'s/epoch':>9s} "
          f"{'peak MB':>9s}", flush=True)
    for L in args.lengths:
        for model in args.models:
            cmd = [sys.executable, __file__, "--_one", model, str(L), "--pred-len", str(args.pred_len),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", args.device,
                   "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            if p.returncode or not lines:
                tail = (p.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{model:12s} {L:5d}  failed: {tail[:120]}", flush=True)
                rows.append(dict(model=model, seq_len=L, error=tail[:300]))
                continue
            r = json.loads(lines[-1][7:])
            rows.append(r)
            print(f"{model:12s} {L:5d} {r['params']:9d} {r['step_s']:8.3f} {r['step_cpu_s']:10.3f} "
                  f"{r['epoch_s']:9.1f} {r['peak_mem_mb']:9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    sys.exit(main())
