"""``ssm-recsys``: train / evaluate / recommend on interaction logs, plus a self-contained demo.

  ssm-recsys train --data ml-100k.inter --model tim4rec -o runs/tim --seed 2024
  ssm-recsys evaluate --checkpoint runs/tim --data ml-100k.inter
  ssm-recsys recommend --checkpoint runs/tim --user 196 --k 10 -o top10.csv
  ssm-recsys recommend --checkpoint runs/tim --users users.txt --events new.csv -o top10.csv
  ssm-recsys demo -o demo_out/recsys
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from core.engine import (AppCLI, UserError, check_new_output, hardware_kwargs, is_rank_zero, require_paths,
                         resolve_checkpoint, resolve_config)

from .config import MODEL_NAMES, TRAIN_DEFAULTS, model_keys

FORMATS = ["auto", "atomic", "udata", "ml1m", "csv", "parquet"]


def _add_data_args(p) -> None:
    p.add_required("--data", default=None,
                   help="interactions: RecBole .inter, u.data, ratings.dat, CSV, Parquet (required)")
    g = p.add_argument_group("data")
    g.add_argument("--format", default="auto", choices=FORMATS, help="file format (default: from the name)")
    g.add_argument("--user-col", default=None, help="user column (atomic/CSV/Parquet; default user_id)")
    g.add_argument("--item-col", default=None, help="item column (default item_id)")
    g.add_argument("--time-col", default=None, help="timestamp column, numeric seconds (default timestamp)")


def _columns(args):
    return {"user": args.user_col, "item": args.item_col, "time": args.time_col}


def cmd_train(args) -> int:
    require_paths(args.data, "--data", kind="file")
    cfg = resolve_config(TRAIN_DEFAULTS, args.config,
                         {"max_len": args.max_len, "user_min": args.user_min, "item_min": args.item_min,
                          "loss": args.loss, "batch_size": args.batch_size, "lr": args.lr},
                         args.set_pairs, extra_keys={"model": model_keys})
    if is_rank_zero():  # DDP: the ranks Lightning relaunches find rank 0's folder already made
        check_new_output(args.out, args.overwrite, folder=True)
    from .train import train

    tk = hardware_kwargs(args)
    res = train(args.data, args.model, args.out, fmt=args.format, columns=_columns(args), config=cfg,
                max_epochs=args.max_epochs, max_time=args.max_time, seed=args.seed, overwrite=args.overwrite,
                trainer_kwargs=tk, num_workers=args.num_workers)
    if res:
        print(json.dumps({"val": res["val"], "test": res["test"], "checkpoint": res["checkpoint"]}, indent=1))
    return 0


def cmd_evaluate(args) -> int:
    ckpt = resolve_checkpoint(args.checkpoint)   # path checks before torch loads
    require_paths(args.data, "--data", kind="file")
    check_new_output(args.out, args.overwrite)
    from core.engine import write_json

    from .data import load_dataset
    from .infer import evaluate_split, load_checkpoint

    module = load_checkpoint(ckpt).to(args.device)
    cfg_path = ckpt.parent.parent / "config.json"
    umin = imin = 5
    if cfg_path.is_file():
        c = json.loads(cfg_path.read_text())
        umin, imin = c.get("user_min", 5), c.get("item_min", 5)
    data = load_dataset(args.data, args.format, module.hparams.max_len, umin, imin, args.user_col, args.item_col,
                        args.time_col)
    if data.item_ids != list(module.serving["item_ids"]):
        raise UserError(args.data, "its items (after the k-core filter) differ from the checkpoint's: evaluate on "
                                   "the log it was trained on")
    res = evaluate_split(module, data, args.split)
    print(json.dumps(res, indent=1))
    if args.out:
        write_json(args.out, res, overwrite=args.overwrite)
    return 0


def cmd_recommend(args) -> int:
    from core.engine import atomic_write

    ckpt = resolve_checkpoint(args.checkpoint)
    check_new_output(args.out, args.overwrite)
    if args.users is not None:
        require_paths(args.users, "--users", kind="file")
    if args.events is not None:
        require_paths(args.events, "--events", kind="file")
    if args.k < 1:
        raise UserError("--k", f"must be >= 1, got {args.k}")
    if args.chunk < 1:
        raise UserError("--chunk", f"must be >= 1, got {args.chunk}")
    from .data import read_interactions
    from .infer import load_checkpoint, read_users_file, recommend

    users = [args.user] if args.user is not None else read_users_file(args.users)
    events = read_interactions(args.events, args.format)[0] if args.events else None
    module = load_checkpoint(ckpt).to(args.device)
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
    with atomic_write(args.out, overwrite=args.overwrite, newline="") as f:
        df.to_csv(f, index=False, float_format="%.6g")
    print(f"wrote {df['user'].nunique()} users x top-{args.k} to {args.out}"
          + (f" ({rep.incremental_updates} incremental updates)" if rep.incremental_updates else ""))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-recsys", __doc__.splitlines()[0], examples="\n".join(__doc__.splitlines()[2:]),
                 extra=("recsys", ["pandas"]))
    t = cli.train(help="train by RecBole's sequential protocol, then test (full ranking)", fn=cmd_train)
    _add_data_args(t)
    t.add_argument("--model", default="tim4rec", choices=MODEL_NAMES, help="network (default tim4rec)")
    t.add_argument("--max-len", type=int, default=None, help="history length (default 50)")
    t.add_argument("--user-min", type=int, default=None, help="k-core: users need this many interactions (5)")
    t.add_argument("--item-min", type=int, default=None, help="k-core: items need this many interactions (5)")
    t.add_argument("--loss", default=None, choices=["ce", "sampled"], help="ce (default) or sampled softmax + logQ")
    t.add_argument("--batch-size", type=int, default=None, help="training batch (windows or prefixes; 64)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-3)")

    e = cli.evaluate(help="HR/NDCG/MRR@5/10/20 of a checkpoint on the test (or val) split", fn=cmd_evaluate)
    _add_data_args(e)
    e.add_argument("--split", default="test", choices=["test", "val"], help="which held-out item (default test)")

    r = cli.predict(help="top-k items per user (raw ids), seen items excluded", fn=cmd_recommend,
                    name="recommend", out_help="CSV file: user,rank,item,score")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one raw user id")
    who.add_argument("--users", help="file with one raw user id per line")
    r.add_argument("--k", type=int, default=10, help="list length (default 10)")
    r.add_argument("--events", default=None, help="new interactions (CSV user_id,item_id,timestamp or any "
                                                  "--format) applied on top of the stored histories")
    r.add_argument("--format", default="auto", choices=FORMATS, help="format of --events")
    r.add_argument("--include-seen", action="store_true", help="do not exclude already-seen items")
    r.add_argument("--cold-start", default=None, choices=["popular"],
                   help="serve unknown users the most popular items (default: skip them)")
    r.add_argument("--chunk", type=int, default=65536, help="items scored at a time (default 65536)")

    cli.demo(help="synthetic log -> brief training of the three models -> evaluate -> recommend", fn=cmd_demo)
    return cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
