"""Self-contained demo: a synthetic interaction log -> brief training of TiM4Rec, Mamba4Rec and SASRec ->
test metrics -> top-10 lists, then one new interaction applied by the recurrent step."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.engine import atomic_write, prepare_demo_dir, write_json


def synthetic_log(path: str | Path, n_users: int = 200, n_items: int = 120, length: int = 40, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """RecBole ``.inter`` file where the next item depends on the previous one AND on the time gap: within a
    session (gap of minutes) users walk forward in their current genre, after a long break they jump to a
    genre of their own taste. A time-aware model can use the gap; the others must guess."""
    rng = np.random.default_rng(seed)
    n_genres = 6
    per = n_items // n_genres
    rows = []
    for u in range(n_users):
        taste = rng.choice(n_genres, 2, replace=False)
        t = float(rng.integers(8.7e8, 8.9e8))
        g, pos = int(taste[0]), 0
        for step in range(length):
            long_break = step > 0 and rng.random() < 0.25
            t += float(rng.exponential(86400 * 3)) if long_break else float(rng.exponential(300))
            if long_break:
                g, pos = int(taste[step % 2]), int(rng.integers(0, 3))
            else:
                pos = (pos + 1 + int(rng.random() < 0.2)) % per
            rows.append((f"u{u}", f"i{g * per + pos}", 1.0 + (step % 5), int(t)))
    df = pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    with atomic_write(path, overwrite=overwrite, newline="") as f:
        df.to_csv(f, sep="\t", index=False)
    return Path(path)


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False,
             models=("tim4rec", "mamba4rec", "sasrec"), max_epochs: int = 6) -> dict:
    """Write OUT/demo.inter, OUT/<model>/ runs, OUT/top10.csv, OUT/top10_after_event.csv, OUT/summary.json."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread beats two that spin-wait on a busy machine
    from .data import load_dataset
    from .infer import load_checkpoint, recommend
    from .train import train

    out = prepare_demo_dir(out, overwrite)  # a folder an earlier demo made is reused as written
    log = synthetic_log(out / "demo.inter", seed=seed, overwrite=True)
    data = load_dataset(log, warn=False)
    small = {"tim4rec": dict(d_model=32, d_state=16, headdim=16, n_layers=1),
             "mamba4rec": dict(d_model=32, d_state=16), "sasrec": dict(d_model=32, inner_size=64, dropout=0.2,
                                                                       attn_dropout=0.2)}
    summary = {"data": str(log), "users": data.n_users, "items": data.n_items, "models": {}}
    for m in models:
        t0 = time.time()
        res = train(str(log), m, str(out / m), seed=seed, overwrite=True, progress=False, max_epochs=max_epochs,
                    overrides=dict(model=small[m], lr=5e-3, batch_size=16), data=data)
        summary["models"][m] = dict(test=res["test"], seconds=round(time.time() - t0, 1), checkpoint=res["checkpoint"])
        print(f"{m:10s} test NDCG@10 {res['test']['ndcg@10']:.4f}  HR@10 {res['test']['hit@10']:.4f}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    module = load_checkpoint(summary["models"][models[0]]["checkpoint"])
    users = data.user_ids[:5]
    top, _ = recommend(module, users, k=10)
    with atomic_write(out / "top10.csv", overwrite=True, newline="") as f:
        top.to_csv(f, index=False, float_format="%.6g")
    # the first user watches one more item: updated by one recurrent step when the model is causal
    u0 = users[0]
    last_t = float(data.history(0)[1][-1])
    event = pd.DataFrame({"user": [u0], "item": [data.item_ids[0]], "timestamp": [last_t + 120.0]})
    top2, rep = recommend(module, [u0], k=10, events=event)
    with atomic_write(out / "top10_after_event.csv", overwrite=True, newline="") as f:
        top2.to_csv(f, index=False, float_format="%.6g")
    summary["incremental_updates"] = rep.incremental_updates
    write_json(out / "summary.json", summary)
    print(f"top-10 lists in {out / 'top10.csv'}; after one new event for {u0}: {out / 'top10_after_event.csv'}")
    print(json.dumps({k: round(v["test"]["ndcg@10"], 4) for k, v in summary["models"].items()}))
    return summary
