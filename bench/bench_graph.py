"""apps/graph benchmarks: cross-validation (two protocols), Peptides-func, speed/memory vs graph size.

  python bench/bench_graph.py cv --data ../shared/data/graph/MUTAG --folds 10 --models gmn gin --max-epochs 30
  python bench/bench_graph.py speed --sizes 100 10000 100000 --models gmn graph_mamba gps
  python bench/bench_graph.py peptides --data ../shared/data/graph/peptides-func --train-limit 2000 --max-epochs 5

Every model in one subcommand runs in the same process/run on the same folds or inputs. CPU time
(``time.process_time`` of this process and its children) is printed with every result.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = dict(d_model=32, n_layers=2, walk_lengths=[4, 2], num_walks=1, d_state=8, expand=1, heads=4)


def cpu_seconds() -> float:
    self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------------------------ cv

def cmd_cv(args) -> dict:
    from apps.graph.train import cross_validate

    t0, c0 = time.time(), cpu_seconds()
    model = {**SMALL, **json.loads(args.model_json)} if args.small else json.loads(args.model_json)
    res = cross_validate(args.data, args.out, args.folds, config={"model": model, "batch_size": args.batch_size,
                                                                  "lr": args.lr},
                         models=args.models, max_epochs=args.max_epochs, seed=args.seed, overwrite=True,
                         progress=False, fold_ids=args.fold_ids)
    res["wall_s"], res["cpu_s"] = round(time.time() - t0), round(cpu_seconds() - c0)
    print(f"\n{Path(args.data).name}: {args.folds}-fold CV, {args.max_epochs} epochs, seed {args.seed}, "
          f"wall {res['wall_s']} s, CPU {res['cpu_s']} s")
    print("| model | fair (inner split) | optimistic (GIN protocol) | best mean epoch | train s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in res["models"].items():
        f, o = r["fair"], r["optimistic"]
        print(f"| {name} | {100 * f['mean']:.1f} ± {100 * f['std']:.1f} | {100 * o['mean']:.1f} ± {100 * o['std']:.1f} "
              f"| {o['epoch']} | {r['seconds']} |")
    return res


# --------------------------------------------------------------------------------------------- speed

def _random_graph(n: int, avg_deg: int = 6, seed: int = 0):
    """Undirected random graph: a ring (connected) plus random chords, ``avg_deg`` neighbours on average."""
    import torch
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    g = torch.Generator().manual_seed(seed)
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    chords = torch.randint(0, n, (2, n * (avg_deg - 2) // 2), generator=g)
    ei = to_undirected(torch.cat([ring, chords], 1), num_nodes=n)
    ei = ei[:, ei[0] != ei[1]]
    return Data(x_cat=torch.randint(0, 8, (n, 1), generator=g), x=torch.zeros(n, 0), edge_index=ei,
                e_cat=torch.zeros(ei.shape[1], 0, dtype=torch.long), edge_attr=torch.zeros(ei.shape[1], 0),
                y=torch.randint(0, 2, (n,), generator=g), num_nodes=n)


def _speed_model(model: str, sizes, repeats: int) -> list:
    """One model, sizes ascending, in this process: forward+backward of a node-level model on one
    n-node graph. Peak memory: growth of the process's peak RSS over its RSS before that size (sizes
    ascend, so each new size sets a new peak)."""
    import torch
    from torch_geometric.data import Batch

    from apps.graph.model import GraphNet

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    net = GraphNet({**SMALL, "layer": model, "rw_steps": 0, "lap_k": 0}, {"node_cat": [8]}, 2, "node")
    rows = []
    for n in sorted(sizes):
        b = Batch.from_data_list([_random_graph(n)])
        base = _rss_kib()
        times = []
        try:
            for _ in range(repeats + 1):           # the first call warms up (kernel compile, caches)
                t, c = time.perf_counter(), time.process_time()
                out = net(b)
                torch.nn.functional.cross_entropy(out, b.y).backward()
                times.append((time.perf_counter() - t, time.process_time() - c))
                net.zero_grad(set_to_none=True)
                del out
        except (RuntimeError, MemoryError) as e:
            row = {"model": model, "nodes": n, "error": f"OOM: {str(e).splitlines()[0][:100]}"}
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row = {"model": model, "nodes": n, "edges": int(b.edge_index.shape[1]),
                   "fwd_bwd_s": min(times[1:] or times)[0], "fwd_bwd_cpu_s": min(times[1:] or times)[1],
                   "peak_mib_over_start": round(max(0, peak - base) / 1024, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def cmd_speed(args) -> dict:
    rows = []
    t0, c0 = time.time(), cpu_seconds()
    for model in args.models:
        cmd = [sys.executable, __file__, "_speed_one", "--model", model, "--sizes", *map(str, args.sizes),
               "--repeats", str(args.repeats), "--mem-gib", str(args.mem_gib)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out, err, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "", None
        got = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        done = {r["nodes"] for r in got}
        for n in sorted(args.sizes):
            if n not in done:
                why = (f"timed out after {args.timeout} s" if rc is None else
                       f"killed (exit {rc}): {(err.strip().splitlines() or [''])[-1][:100]}")
                got.append({"model": model, "nodes": n, "error": why})
        for r in got:
            print(json.dumps(r), flush=True)
        rows += got
    print(f"\nwall {time.time() - t0:.0f} s, CPU {cpu_seconds() - c0:.0f} s; address-space cap {args.mem_gib} GiB per model")
    print("| model | nodes | fwd+bwd wall s | fwd+bwd CPU s | peak MiB over start |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['nodes']:,} | {r['error']} | | |")
        else:
            print(f"| {r['model']} | {r['nodes']:,} | {r['fwd_bwd_s']:.3f} | {r['fwd_bwd_cpu_s']:.3f} | "
                  f"{r['peak_mib_over_start']:.0f} |")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ peptides

def cmd_peptides(args) -> dict:
    """Train on the first ``train_limit`` peptides of the official train split (CPU budget), pick the
    epoch on the official val split (``val_limit``), report AP on the official test split."""
    import torch
    from torch_geometric.loader import DataLoader

    from apps.graph.infer import evaluate_loader, load_checkpoint
    from apps.graph.train import load_dataset, resolve_config
    from apps.graph.module import GraphModule
    from core.engine import make_trainer, seed_everything

    t0, c0 = time.time(), cpu_seconds()
    seed_everything(args.seed)
    cfg = resolve_config(overrides={"model": {**(SMALL if args.small else {}), **json.loads(args.model_json)}})
    loaded = load_dataset(args.data, cfg, limit=args.limit_rows or None)  # CPU budget: the first N CSV rows
    t_load = time.time() - t0
    sp = loaded.split
    parts = {"train": sp["train"][:args.train_limit], "val": sp["val"][:args.val_limit],
             "test": sp["test"][:args.test_limit] if args.test_limit else sp["test"]}
    res = {"sizes": {k: len(v) for k, v in parts.items()}, "load_s": round(t_load), "models": {}}
    for name in args.models:
        t1 = time.time()
        mk = lambda k, sh: DataLoader([loaded.graphs[i] for i in parts[k]], batch_size=args.batch_size,  # noqa
                                      shuffle=sh)
        module = GraphModule({**cfg["model"], "layer": name}, loaded.schema, "multilabel", lr=args.lr,
                             max_epochs=args.max_epochs)
        out = Path(args.out) / name
        trainer = make_trainer(out, max_epochs=args.max_epochs, monitor="val_metric", mode="max", progress=False,
                               loggers=("csv",))
        trainer.fit(module, mk("train", True), mk("val", False))
        best = load_checkpoint(trainer.checkpoint_callback.best_model_path)
        test = evaluate_loader(best, mk("test", False))
        res["models"][name] = {"test_ap": test["ap"], "best_val_ap": float(trainer.checkpoint_callback.best_model_score),
                               "seconds": round(time.time() - t1)}
        print(json.dumps({name: res["models"][name]}), flush=True)
    res["wall_s"], res["cpu_s"] = round(time.time() - t0), round(cpu_seconds() - c0)
    print(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cv")
    c.add_argument("--data", required=True)
    c.add_argument("--folds", type=int, default=10)
    c.add_argument("--fold-ids", type=int, nargs="*", default=None)
    c.add_argument("--models", nargs="+", default=["gmn", "gin"])
    c.add_argument("--max-epochs", type=int, default=30)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--small", action="store_true", help="the CPU-budget model sizes (SMALL)")
    c.add_argument("--model-json", default="{}")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="/tmp/bench_graph_cv")
    s = sub.add_parser("speed")
    s.add_argument("--sizes", type=int, nargs="+", default=[100, 10000, 100000])
    s.add_argument("--models", nargs="+", default=["gmn", "graph_mamba", "gps"])
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--timeout", type=int, default=600)
    s.add_argument("--mem-gib", type=float, default=8.0)
    o = sub.add_parser("_speed_one")
    o.add_argument("--model")
    o.add_argument("--sizes", type=int, nargs="+")
    o.add_argument("--repeats", type=int, default=1)
    o.add_argument("--mem-gib", type=float, default=8.0)
    p = sub.add_parser("peptides")
    p.add_argument("--data", required=True)
    p.add_argument("--models", nargs="+", default=["gmn", "gin"])
    p.add_argument("--limit-rows", type=int, default=0, help="read only the first N peptides (0: all 15,535)")
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--val-limit", type=int, default=500)
    p.add_argument("--test-limit", type=int, default=0, help="0: the whole official test split")
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--small", action="store_true")
    p.add_argument("--model-json", default="{}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/bench_graph_pf")
    args = ap.parse_args(argv)
    if args.cmd == "_speed_one":
        cap = int(args.mem_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # a failed allocation, not the OOM killer
        _speed_model(args.model, args.sizes, args.repeats)
        return 0
    {"cv": cmd_cv, "speed": cmd_speed, "peptides": cmd_peptides}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
