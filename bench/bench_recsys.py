"""recsys benchmarks (results in bench/RESULTS.md, "## recsys").

  python bench/bench_recsys.py quality --seeds 0 1 2 --max-epochs 30
  python bench/bench_recsys.py quality --models sasrec --train-mode prefix --batch-size 256 --max-epochs 2  # parity
  (RecBole's side of the parity: bench/recbole_peer.py, in its own venv)
  python bench/bench_recsys.py speed --lens 50 200 1000 5000
  python bench/bench_recsys.py topk
  python bench/bench_recsys.py incremental --lens 50 200 1000

quality: TiM4Rec (causal and the paper's sequence form), Mamba4Rec and SASRec on ML-100K, same split, same
budget, one process. speed: one training step (forward + backward, CE over ML-100K's items) per model as the
history grows, each in its own subprocess for a clean peak RSS. topk: latency per user. incremental: one
recurrent step against re-encoding the whole history.
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
ML100K = ROOT / ".." / "shared" / "data" / "recsys" / "ml-100k" / "ml-100k.inter"


def quality(args):
    import torch

    from apps.recsys.data import load_dataset
    from apps.recsys.train import train

    torch.set_num_threads(args.threads)
    data = load_dataset(ML100K, warn=False)
    base = {"train_mode": args.train_mode, "patience": args.patience}
    if args.batch_size:
        base["batch_size"] = args.batch_size
    runs = [(m, dict(base)) for m in args.models]
    if args.with_sequence:  # the paper's form sees every gap of its window: RecBole's prefixes only
        runs.append(("tim4rec", dict(base, model={"time_mix": "sequence"}, train_mode="prefix",
                                     batch_size=args.batch_size or 256)))
    rows = []
    out = Path(args.out)
    for seed in args.seeds:
        for name, over in runs:
            tag = name + ("-seq" if "model" in over else "")
            c0 = time.process_time()
            over = dict(over, lr=args.lr)
            res = train(str(ML100K), name, str(out / f"{tag}_s{seed}"), seed=seed, overwrite=True, progress=False,
                        max_epochs=args.max_epochs, max_time=args.max_time, overrides=over, data=data)
            row = dict(impl="ours", model=tag, seed=seed, epochs=res["epochs"], n_interactions=res["n_interactions"],
                       n_users=res["n_users"], n_items=res["n_items"], train_cpu_s=res["train_cpu_s"],
                       total_cpu_s=round(time.process_time() - c0, 1), val_ndcg10=res["val"]["ndcg@10"],
                       ndcg10=res["test"]["ndcg@10"], hr10=res["test"]["hit@10"], mrr10=res["test"]["mrr@10"],
                       n_params=res["n_params"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "quality.json").write_text(json.dumps(rows, indent=1))
    import numpy as np

    print("\n| model | NDCG@10 | HR@10 | MRR@10 | epochs | train CPU s | params |\n|---|---|---|---|---|---|---|")
    for tag in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == tag]
        f = lambda k: f"{np.mean([r[k] for r in rs]):.4f} ± {np.std([r[k] for r in rs]):.4f}"
        print(f"| {tag} | {f('ndcg10')} | {f('hr10')} | {f('mrr10')} | "
              f"{np.mean([r['epochs'] for r in rs]):.0f} | {np.mean([r['train_cpu_s'] for r in rs]):.0f} | "
              f"{rs[0]['n_params']} |")


def _speed_one(name, L, tokens, threads):
    import torch
    import torch.nn.functional as F

    from apps.recsys.nets import MODEL_DEFAULTS, build_net

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B = max(1, tokens // L)
    net = build_net(name, 1349, L, **MODEL_DEFAULTS[name])
    items = torch.randint(1, 1350, (B, L))
    gaps = torch.rand(B, L) * 1e5
    tgt = torch.randint(1, 1350, (B, L))
    opt = torch.optim.Adam(net.parameters())
    times = []
    for i in range(4):
        t = time.process_time()
        h = net(items, gaps)
        loss = F.cross_entropy((h @ net.item_embedding.weight.t()).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - t)
    step = min(times[1:])
    # ML-100K training: 96,458 targets per epoch at this max length (window mode)
    return dict(model=name, max_len=L, batch=B, cpu_s_per_step=round(step, 3),
                cpu_s_per_epoch_ml100k=round(step * 96458 / (B * L), 1),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0))


def speed(args):
    rows = []
    for L in args.lens:
        for name in ("sasrec", "mamba4rec", "tim4rec"):
            cmd = [sys.executable, __file__, "_speed_one", name, str(L), str(args.tokens), str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if res.returncode:
                row = dict(model=name, max_len=L, error=(res.stderr.strip().splitlines() or ["?"])[-1][:120])
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| max_len | model | batch | CPU s / step | CPU s / ML-100K epoch | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['max_len']} | {r['model']} | - | {r['error']} | | |")
        else:
            print(f"| {r['max_len']} | {r['model']} | {r['batch']} | {r['cpu_s_per_step']} | "
                  f"{r['cpu_s_per_epoch_ml100k']} | {r['peak_rss_mb']:.0f} |")


def topk(args):
    import numpy as np
    import torch

    from apps.recsys.infer import topk_chunked
    from apps.recsys.model import RecModule
    from apps.recsys.nets import MODEL_DEFAULTS

    torch.set_num_threads(args.threads)
    print("| items | users per call | chunk | CPU ms per user (top-10, seen excluded) |\n|---|---|---|---|")
    for n_items in (1349, 100_000, 1_000_000):
        mod = RecModule("sasrec", MODEL_DEFAULTS["sasrec"], n_items, 50).eval()
        for B in (1, 64):
            h = torch.randn(B, 64)
            seen = [np.random.default_rng(b).integers(1, n_items + 1, 100) for b in range(B)]
            topk_chunked(mod, h, 10, seen, 65536)
            t = time.process_time()
            reps = 3
            for _ in range(reps):
                topk_chunked(mod, h, 10, seen, 65536)
            print(f"| {n_items:,} | {B} | 65,536 | {1000 * (time.process_time() - t) / reps / B:.2f} |", flush=True)


def incremental(args):
    import numpy as np
    import torch

    from apps.recsys.infer import UserState
    from apps.recsys.model import RecModule
    from apps.recsys.nets import MODEL_DEFAULTS

    torch.set_num_threads(args.threads)
    print("| model | history | one update (CPU ms) | full re-encode (CPU ms) | ratio |\n|---|---|---|---|---|")
    for name in ("tim4rec", "mamba4rec"):
        mod = RecModule(name, MODEL_DEFAULTS[name], 1349, max(args.lens)).eval()
        for L in args.lens:
            rng = np.random.default_rng(0)
            items, times = rng.integers(1, 1350, L + 1), np.cumsum(rng.exponential(1e4, L + 1))
            st = UserState.from_history(mod, items[:L], times[:L])
            g = torch.from_numpy(np.diff(times, prepend=times[0]).astype(np.float32))[None]
            it = torch.from_numpy(items)[None]
            with torch.no_grad():
                mod.net.encode(it, g)
            reps = 20
            t = time.process_time()
            for _ in range(reps):
                st.update(int(items[L]), float(times[L]))
            upd = (time.process_time() - t) / reps
            t = time.process_time()
            with torch.no_grad():
                for _ in range(reps):
                    mod.net.encode(it, g)
            full = (time.process_time() - t) / reps
            print(f"| {name} | {L} | {1000 * upd:.2f} | {1000 * full:.2f} | {full / upd:.1f}x |", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_speed_one":
        print(json.dumps(_speed_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--max-epochs", type=int, default=30)
    q.add_argument("--max-time", default=None)
    q.add_argument("--models", nargs="+", default=["sasrec", "mamba4rec", "tim4rec"])
    q.add_argument("--train-mode", default="window", choices=["window", "prefix"])
    q.add_argument("--batch-size", type=int, default=None, help="default: the app's (64)")
    q.add_argument("--patience", type=int, default=10)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--with-sequence", action="store_true", help="also the paper's sequence-axis TiM4Rec (prefixes)")
    q.add_argument("--out", default="/tmp/bench_recsys")
    s = sub.add_parser("speed")
    s.add_argument("--lens", type=int, nargs="+", default=[50, 200, 1000, 5000])
    s.add_argument("--tokens", type=int, default=10000, help="batch * max_len per step")
    s.add_argument("--timeout", type=int, default=600)
    sub.add_parser("topk")
    i = sub.add_parser("incremental")
    i.add_argument("--lens", type=int, nargs="+", default=[50, 200, 1000])
    for p in (q, s, i, sub.choices["topk"]):
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"quality": quality, "speed": speed, "topk": topk, "incremental": incremental}[args.cmd](args)


if __name__ == "__main__":
    main()
