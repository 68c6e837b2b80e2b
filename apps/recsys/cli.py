"""``ssm-recsys``: train / evaluate / recommend on interaction logs, plus a self-contained demo.

  ssm-recsys train --data ml-100k.inter --model tim4rec --out runs/tim --seed 2024
  ssm-recsys evaluate --checkpoint runs/tim --data ml-100k.inter
  ssm-recsys recommend --checkpoint runs/tim --user 196 --k 10 -o top10.csv
  ssm-recsys recommend --checkpoint runs/tim --users users.txt --events new.csv -o top10.csv
  ssm-recsys demo --out demo_out/recsys
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.engine import UserError, add_trainer_args, cli_main, ensure_new, load_config, parse_set_pairs

MODEL_NAMES = ("tim4rec", "mamba4rec", "sasrec")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="interactions: RecBole .inter, u.data, ratings.dat, CSV, Parquet")
    g.add_argument("--format", default="auto", choices=["auto", "atomic", "udata", "ml1m", "csv", "parquet"])
    g.add_argument("--user-col", default=None, help="user column (atomic/CSV/Parquet; default user_id)")
    g.add_argument("--item-col", default=None, help="item column (default item_id)")
    g.add_argument("--time-col", default=None, help="timestamp column, numeric seconds (default timestamp)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssm-recsys", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train by RecBole's sequential protocol, then test (full ranking)")
    _add_data_args(t)
    t.add_argument("--model", default="tim4rec", choices=MODEL_NAMES)
    t.add_argument("--max-len", type=int, default=None, help="history length (default 50)")
    t.add_argument("--user-min", type=int, default=None, help="k-core: users need this many interactions (5)")
    t.add_argument("--item-min", type=int, default=None, help="k-core: items need this many interactions (5)")
    t.add_argument("--loss", default=None, choices=["ce", "sampled"], help="ce (default) or sampled softmax + logQ")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    add_trainer_args(t)

    e = sub.add_parser("evaluate", help="HR/NDCG/MRR@5/10/20 of a checkpoint on the test (or val) split")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    _add_data_args(e)
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("-o", "--output", default=None, help="also write the metrics as JSON")
    e.add_argument("--overwrite", action="store_true")

    r = sub.add_parser("recommend", help="top-k items per user (raw ids), seen items excluded")
    r.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one raw user id")
    who.add_argument("--users", help="file with one raw user id per line")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--events", default=None, help="new interactions (CSV user,item,timestamp or any --format) "
                                                  "applied on top of the stored histories")
    r.add_argument("--format", default="auto", choices=["auto", "atomic", "udata", "ml1m", "csv", "parquet"])
    r.add_argument("--include-seen", action="store_true", help="do not exclude already-seen items")
    r.add_argument("--cold-start", default=None, choices=["popular"],
                   help="serve unknown users the most popular items (default: skip them)")
    r.add_argument("--chunk", type=int, default=65536, help="items scored at a time")
    r.add_argument("-o", "--output", required=True, help="CSV: user,rank,item,score")
    r.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="synthetic log -> brief training of the three models -> evaluate -> recommend")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    return ap


def _columns(args):
    return {"user": args.user_col, "item": args.item_col, "time": args.time_col}


def cmd_train(args) -> int:
    from core.engine import trainer_kwargs_from_args

    from .train import train

    cfg = load_config(args.config)
    over = parse_set_pairs(args.set_pairs)
    for key, val in (("max_len", args.max_len), ("user_min", args.user_min), ("item_min", args.item_min),
                     ("loss", args.loss), ("batch_size", args.batch_size), ("lr", args.lr)):
        if val is not None:
            over[key] = val
    if not Path(args.data).is_file():
        raise UserError(args.data, "file not found")
    tk = trainer_kwargs_from_args(args)
    max_epochs, max_time = tk.pop("max_epochs"), tk.pop("max_time")
    res = train(args.data, args.model, args.out, fmt=args.format, columns=_columns(args), config=cfg,
                overrides=over, max_epochs=max_epochs, max_time=max_time, seed=args.seed,
                overwrite=args.overwrite, trainer_kwargs=tk, num_workers=args.num_workers)
    if res:
        print(json.dumps({"val": res["val"], "test": res["test"], "checkpoint": res["checkpoint"]}, indent=1))
    return 0


def cmd_evaluate(args) -> int:
    from core.engine import write_json

    from .data import load_dataset
    from .infer import evaluate_split, load_checkpoint

    if args.output:
        ensure_new(args.output, args.overwrite)
    module = load_checkpoint(args.checkpoint)
    cfg_path = Path(args.checkpoint) / "config.json" if Path(args.checkpoint).is_dir() else None
    umin = imin = 5
    if cfg_path is not None and cfg_path.is_file():
        c = json.loads(cfg_path.read_text())
        umin, imin = c.get("user_min", 5), c.get("item_min", 5)
    data = load_dataset(args.data, args.format, module.hparams.max_len, umin, imin, args.user_col, args.item_col,
                        args.time_col)
    if data.item_ids != list(module.serving["item_ids"]):
        raise UserError(args.data, "its items (after the k-core filter) differ from the checkpoint's: evaluate on "
                                   "the log it was trained on")
    res = evaluate_split(module, data, args.split)
    print(json.dumps(res, indent=1))
    if args.output:
        write_json(args.output, res, overwrite=args.overwrite)
    return 0


def cmd_recommend(args) -> int:
    from core.engine import atomic_write

    ensure_new(args.output, args.overwrite)
    if args.k < 1:
        raise UserError("--k", f"must be >= 1, got {args.k}")
    if args.chunk < 1:
        raise UserError("--chunk", f"must be >= 1, got {args.chunk}")
    from .data import read_interactions
    from .infer import load_checkpoint, read_users_file, recommend

    users = [args.user] if args.user is not None else read_users_file(args.users)
    events = read_interactions(args.events, args.format)[0] if args.events else None
    module = load_checkpoint(args.checkpoint)
    df, rep = recommend(module, users, k=args.k, exclude_seen=not args.include_seen, cold_start=args.cold_start,
                        events=events, chunk=args.chunk)
    if rep.unknown_items:
        print(f"warning: {args.events}: {rep.unknown_items} events name items unknown to the checkpoint "
              "(skipped)", file=sys.stderr)
    if rep.late_events:
        print(f"warning: {args.events}: {rep.late_events} events are older than the user's last stored "
              "interaction (appended anyway, gap 0)", file=sys.stderr)
    if rep.cold_users and not rep.cold_served:
        print(f"warning: {len(rep.cold_users)} unknown user(s) (cold start, e.g. {rep.cold_users[0]!r}) skipped; "
              "pass --cold-start popular to serve them the most popular items", file=sys.stderr)
    if df.empty:
        raise UserError(args.user if args.user is not None else args.users,
                        "no known users to recommend for (all cold start); nothing written")
    with atomic_write(args.output, overwrite=args.overwrite, newline="") as f:
        df.to_csv(f, index=False, float_format="%.6g")
    print(f"wrote {df['user'].nunique()} users x top-{args.k} to {args.output}"
          + (f" ({rep.incremental_updates} incremental updates)" if rep.incremental_updates else ""))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": cmd_train, "evaluate": cmd_evaluate, "recommend": cmd_recommend,
            "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
