"""Speed at scale: one training epoch and test scoring on a 50k-row, 21-variable series (input 96).

Builds a synthetic hourly CSV (daily + weekly cycles, AR noise, 21 variables), then times
- training steps of the default model through the real module and loader (CPU time of this process,
  user + system, extrapolated to one epoch from ``--steps`` steps; ``--full-epoch`` runs all of them);
- test scoring (``infer.evaluate_split``) of ``--test-windows`` test windows (all with 0), with its
  user and system CPU time split, because system time is what page-faulting copies cost.

Only APIs that older versions also have are used, so the same script measures "before" and "after":

    OMP_NUM_THREADS=1 nice python bench/bench_timeseries_scale.py --model spacetime
    PYTHONPATH=/path/to/older/tree OMP_NUM_THREADS=1 nice python bench/bench_timeseries_scale.py ...
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def cpu() -> tuple:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def synthetic(path: Path, rows: int, n_vars: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    cols = {}
    for i in range(n_vars):
        noise = np.zeros(rows)
        eps = rng.normal(0, 0.3, rows)
        for k in range(1, rows):
            noise[k] = 0.8 * noise[k - 1] + eps[k]
        cols[f"v{i}" if i < n_vars - 1 else "OT"] = (np.sin(2 * np.pi * t / 24 + i) + 0.5 * np.sin(2 * np.pi * t / 168)
                                                      + 0.001 * t * (i % 3) + noise)
    df = pd.DataFrame(cols)
    df.insert(0, "date", pd.date_range("2015-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False, float_format="%.4f")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="spacetime")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--vars", type=int, default=21)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--pred-len", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps (after 3 warm-up steps)")
    ap.add_argument("--full-epoch", action="store_true")
    ap.add_argument("--test-windows", type=int, default=2048, help="0 = the whole test split")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="model option key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:  # what train()/evaluate do since the allocator fix; older trees have no such module
        from apps.timeseries.alloc import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    from apps.timeseries.data import load_series
    from apps.timeseries.infer import evaluate_split
    from apps.timeseries.train import MODEL_DEFAULTS, ForecastModule

    import yaml

    tmp = Path(tempfile.mkdtemp())
    csv = synthetic(tmp / "scale.csv", args.rows, args.vars)
    data = load_series(csv, args.seq_len, args.pred_len, "M", "OT")
    model_cfg = dict(MODEL_DEFAULTS[args.model], **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)})
    torch.manual_seed(0)
    module = ForecastModule(args.model, model_cfg, args.seq_len, args.pred_len, len(data.in_cols),
                            len(data.out_cols), cycle_len=24, loss="mse")
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = data.loader("train", args.batch_size)
    steps_per_epoch = len(loader)
    n = steps_per_epoch if args.full_epoch else args.steps
    it = iter(loader)
    module.train()
    for i in range(n + 3):
        if i == 3:
            u0, s0 = cpu()
            w0 = time.time()
        try:
            batch = next(it)
        except StopIteration:
            break
        opt.zero_grad()
        x, y, t = batch
        loss = module._loss(module(x, t), y)            # what training_step computes (no Trainer here)
        loss.backward()
        opt.step()
    u1, s1 = cpu()
    step = (u1 - u0 + s1 - s0) / n
    res = dict(model=args.model, rows=args.rows, vars=args.vars, seq_len=args.seq_len, batch_size=args.batch_size,
               steps_per_epoch=steps_per_epoch, timed_steps=n, cpu_s_per_step=round(step, 4),
               train_sys_share=round((s1 - s0) / max(u1 - u0 + s1 - s0, 1e-9), 3),
               epoch_cpu_min=round(step * steps_per_epoch / 60, 2), wall_s=round(time.time() - w0, 1))
    test = data.dataset("test")
    k = len(test) if args.test_windows <= 0 else min(args.test_windows, len(test))
    if k < len(test):  # score the first k windows: shorten the test part
        b1, b2 = data.borders
        data.borders = (b1, [b2[0], b2[1], b1[2] + k + args.seq_len + args.pred_len - 1])
    u0, s0 = cpu()
    ev = evaluate_split(module, data, "test")
    u1, s1 = cpu()
    res.update(test_windows=ev["windows"], test_user_s=round(u1 - u0, 2), test_sys_s=round(s1 - s0, 2),
               test_cpu_s_per_1k_windows=round((u1 - u0 + s1 - s0) / ev["windows"] * 1000, 2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
