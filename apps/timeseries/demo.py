"""Self-contained demo: synthetic multivariate CSV -> brief training -> evaluate -> forecast (+ plot)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.engine import atomic_write, write_json
from core.engine.cli import prepare_demo_dir


def synthetic_csv(path: str | Path, n: int = 1500, n_vars: int = 4, seed: int = 0, freq: str = "h",
                  overwrite: bool = False) -> Path:
    """Hourly series: shared trend + daily and weekly seasonalities with per-variate phase + AR noise.

    The last variate ("OT") mixes the others with a lag, so multivariate input helps.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    trend = 0.002 * t + 0.5 * np.sin(2 * np.pi * t / (n * 0.8))
    cols = {}
    for i in range(n_vars - 1):
        daily = (1.0 + 0.3 * i) * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 2 * np.pi))
        weekly = 0.5 * np.sin(2 * np.pi * t / 168 + rng.uniform(0, 2 * np.pi))
        noise = np.zeros(n)
        eps = rng.normal(0, 0.2, n)
        for k in range(1, n):  # AR(1) noise
            noise[k] = 0.7 * noise[k - 1] + eps[k]
        cols[f"x{i}"] = 5 + i + trend * (1 + 0.5 * i) + daily + weekly + noise
    others = np.stack(list(cols.values()), 1)
    lagged = np.roll(others.mean(1), 3)
    lagged[:3] = lagged[3]
    cols["OT"] = 0.8 * lagged + 0.3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.1, n)
    df = pd.DataFrame(cols)
    df.insert(0, "date", pd.date_range("2021-01-01", periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    with atomic_write(path, overwrite=overwrite, newline="") as f:
        df.to_csv(f, index=False, float_format="%.5f")
    return Path(path)


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False, models=("chimera", "spacetime", "dlinear"),
             max_epochs: int = 3) -> dict:
    """Write OUT/data.csv, OUT/<model>/ runs, OUT/forecast.csv + forecast.png, OUT/summary.json."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread beats two that spin-wait on a busy machine
    from .infer import data_for, forecast, load_checkpoint, write_forecast
    from .train import train

    out = prepare_demo_dir(out, overwrite)  # a folder an earlier demo made is reused as written
    csv = synthetic_csv(out / "data.csv", seed=seed, overwrite=True)
    small = {"chimera": dict(d_model=16, d_state=2), "spacetime": dict(d_model=16, d_state=8, n_layers=1),
             "dlinear": {}}
    summary = {"data": str(csv), "seq_len": 96, "pred_len": 24, "models": {}}
    for m in models:
        t0 = time.time()
        res = train(str(csv), m, 96, 24, str(out / m), features="M", target="OT", seed=seed, overwrite=True,
                    overrides=dict(model=small[m], lr=3e-3, lr_decay=0.8, batch_size=64), max_epochs=max_epochs,
                    progress=False)
        summary["models"][m] = dict(test=res["test"], seconds=round(time.time() - t0, 1),
                                    checkpoint=res["checkpoint"])
        print(f"{m:10s} test MSE {res['test']['mse']:.4f}  MAE {res['test']['mae']:.4f}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    best = min(summary["models"], key=lambda k: summary["models"][k]["test"]["mse"])
    module = load_checkpoint(summary["models"][best]["checkpoint"])
    data = data_for(module, csv, for_forecast=True)
    write_forecast(forecast(module, data), data, out / "forecast.csv", out / "forecast.png", overwrite=True)
    summary["forecast_model"] = best
    write_json(out / "summary.json", summary)
    print(f"best: {best}; forecast of the next 24 h in {out / 'forecast.csv'} and {out / 'forecast.png'}")
    print(json.dumps({k: round(v['test']['mse'], 4) for k, v in summary["models"].items()}))
    return summary
