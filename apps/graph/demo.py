"""Self-contained demo: synthetic TU-format graphs -> GMN and GIN training -> evaluate -> predict."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

from core.engine import atomic_write, write_json
from core.engine.cli import prepare_demo_dir


def synthetic_graphs(n_graphs: int, seed: int = 0) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """``(label, node_labels (n,), edges (m, 2) 0-based)`` per graph: class 0 are random trees,
    class 1 the same with one extra edge closing a cycle (a structural, not a feature, signal)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_graphs):
        n = int(rng.integers(10, 22))
        edges = [(int(rng.integers(0, v)), v) for v in range(1, n)]  # random recursive tree
        label = i % 2
        if label:
            have = {tuple(sorted(e)) for e in edges}
            while True:
                u, v = sorted(int(x) for x in rng.choice(n, 2, replace=False))
                if (u, v) not in have:
                    edges.append((u, v))
                    break
        out.append((label, rng.integers(0, 3, n), np.asarray(edges)))
    return out


def write_tu(graphs, folder: str | Path, name: str = "DEMO", overwrite: bool = True) -> Path:
    """Write graphs in the TU raw text format (1-based ids, both edge directions)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    A, gi, nl, gl = [], [], [], []
    off = 0
    for k, (label, nlab, edges) in enumerate(graphs):
        n = len(nlab)
        for u, v in edges:
            A += [(u + off + 1, v + off + 1), (v + off + 1, u + off + 1)]
        gi += [k + 1] * n
        nl += nlab.tolist()
        gl.append(label)
        off += n
    files = {"A": "\n".join(f"{u}, {v}" for u, v in A), "graph_indicator": "\n".join(map(str, gi)),
             "node_labels": "\n".join(map(str, nl)), "graph_labels": "\n".join(map(str, gl))}
    for key, text in files.items():
        with atomic_write(folder / f"{name}_{key}.txt", overwrite=overwrite) as f:
            f.write(text + "\n")
    return folder


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False, max_epochs: int = 4) -> dict:
    """OUT/data (train TU set), OUT/new (unlabelled graphs), OUT/gmn + OUT/gin runs,
    OUT/predictions.csv, OUT/summary.json."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread beats two that spin-wait on a busy machine
    from .infer import evaluate, load_checkpoint, predict
    from .train import train

    out = prepare_demo_dir(out, overwrite)  # a folder an earlier demo made is reused as written
    data = write_tu(synthetic_graphs(160, seed), out / "data")
    new = synthetic_graphs(20, seed + 1)
    write_tu([(0, nl, e) for _, nl, e in new], out / "new")
    (out / "new" / "DEMO_graph_labels.txt").unlink()  # new graphs come without labels
    small = {"gmn": dict(layer="gmn", d_model=32, n_layers=2, walk_lengths=[4, 2], num_walks=1, d_state=8),
             "gin": dict(layer="gin", d_model=32, n_layers=3)}
    summary = {"data": str(data), "models": {}}
    for name, mcfg in small.items():
        t0 = time.time()
        res = train(str(data), str(out / name), task="classification", seed=seed, overwrite=True,
                    overrides=dict(model=mcfg, lr=3e-3, batch_size=32), max_epochs=max_epochs, progress=False)
        summary["models"][name] = dict(test=res["test"], seconds=round(time.time() - t0, 1),
                                       checkpoint=res["checkpoint"])
        print(f"{name:4s} test accuracy {res['test']['accuracy']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    module = load_checkpoint(summary["models"]["gmn"]["checkpoint"])
    summary["gmn_on_training_data"] = evaluate(module, str(data))
    res = predict(module, str(out / "new"), str(out / "predictions.csv"), overwrite=True)
    summary["predicted"] = res["written"]
    write_json(out / "summary.json", summary)
    print(f"predictions for {res['written']} new graphs in {out / 'predictions.csv'}")
    print(json.dumps({k: round(v["test"]["accuracy"], 3) for k, v in summary["models"].items()}))
    return summary
