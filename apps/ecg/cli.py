"""``ssm-ecg``: train, evaluate, predict and demo for 12-lead ECG multi-label classification.

    ssm-ecg train    --data DIR --out RUN_DIR [--leads 12] [--max-epochs N] [--max-time DD:HH:MM:SS]
                     [--data-loading auto|memory|lazy] [--seed S] [--config FILE] [--set key=value ...]
    ssm-ecg evaluate --checkpoint CKPT --data DIR [--out metrics.json] [--num-workers N]
    ssm-ecg predict  --checkpoint CKPT -i IN [IN ...] -o OUT_DIR [--overwrite] [--num-workers N]
    ssm-ecg demo     --out DIR [--seed S]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from core.engine import (UserError, add_trainer_args, cli_main, load_config, merge_config, parse_set_pairs,
                         prepare_run_dir, trainer_kwargs_from_args, write_json)


def _workers(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


READ_AHEAD_HELP = ("processes that read and preprocess records ahead, in order (default 0: read in this "
                   "process); records stream either way, so memory does not grow with their number")


LEADS_HELP = ("read every record with this lead set (12, 6, 4, 3, 2 or names; one the model was trained "
              "for); default: each record's largest trained set it has")


def _leads(spec):
    from .data import parse_leads

    return parse_leads(spec) if spec else None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssm-ecg", description="12-lead ECG multi-label classification "
                                "(CNN + bidirectional Mamba) on WFDB / PhysioNet Challenge records.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a classifier on a folder of WFDB records")
    t.add_argument("--data", nargs="+", required=True, help="folder(s) with .hea/.mat records, or record files")
    t.add_argument("--leads", default=None, help="12, 6, 4, 3, 2 or lead names 'I,II,V2' (default 12)")
    t.add_argument("--preset", default=None, help="model size: tiny, small (default), base")
    t.add_argument("--labels", default=None, choices=["scored", "all"],
                   help="the 26 scored Challenge classes (default) or every code present")
    t.add_argument("--loss", default=None, choices=["bce", "asl"], help="binary cross-entropy or asymmetric loss")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--fs", type=float, default=None, help="resample every record to this rate (default 500)")
    t.add_argument("--window-s", type=float, default=None, help="training window in seconds (default 10)")
    t.add_argument("--data-loading", default=None, choices=["auto", "memory", "lazy"],
                   help="read all records into memory, or scan headers and read records on demand "
                        "(default auto: lazy above 5,000 records)")
    add_trainer_args(t)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on labelled records")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    e.add_argument("--data", nargs="+", required=True, help="folder(s) or record files with # Dx labels")
    e.add_argument("--out", default=None, help="metrics JSON (default RUN_DIR/eval_<data>.json)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--leads", default=None, help=LEADS_HELP)
    e.add_argument("--num-workers", type=_workers, default=0, help=READ_AHEAD_HELP)
    e.add_argument("--overwrite", action="store_true")

    r = sub.add_parser("predict", help="Challenge-format outputs for new records")
    r.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    r.add_argument("-i", "--input", nargs="+", required=True, help="folder(s) or record files (.hea/.mat)")
    r.add_argument("-o", "--out", required=True, help="output folder: one REC.csv per record + summary.csv")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--leads", default=None, help=LEADS_HELP)
    r.add_argument("--num-workers", type=_workers, default=0, help=READ_AHEAD_HELP)
    r.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="synthetic records -> tiny model -> evaluate -> predict (no downloads)")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    return p


def _checkpoint(path: str) -> Path:
    from core.engine import best_or_last_checkpoint

    p = Path(path)
    if p.is_dir():
        return best_or_last_checkpoint(p)
    return p


def load_checkpoint(path: str):
    """The trained ``ECGModule`` of a checkpoint file or run directory (UserError if unusable)."""
    from core.engine import load_module

    from .train import ECGModule

    return load_module(_checkpoint(path), ECGModule)


def cmd_train(args) -> int:
    from .train import DEFAULTS, train

    flags = {"leads": args.leads, "labels": args.labels, "loss": args.loss, "batch_size": args.batch_size,
             "lr": args.lr, "fs": args.fs, "window_s": args.window_s, "num_workers": args.num_workers,
             "data_loading": args.data_loading}
    if args.preset:
        flags["model"] = {"preset": args.preset}
    cfg = merge_config(DEFAULTS, load_config(args.config), flags)
    cfg = merge_config(cfg, parse_set_pairs(args.set_pairs), strict=True)
    out = prepare_run_dir(args.out, args.overwrite)
    tk = trainer_kwargs_from_args(args)
    if tk["max_epochs"] is None and tk["max_time"] is None:
        tk["max_epochs"] = int(cfg["max_epochs"])
    m = train(args.data, out, cfg, seed=args.seed if args.seed is not None else 0, trainer_kwargs=tk)
    v = m["validation"]
    print(f"validation ({m['n_val']} records): macro AUROC {v['macro_auroc']:.3f}, Challenge score "
          f"{v['challenge_score']:.3f}")
    print(f"checkpoint: {m['checkpoint']}\nmetrics:    {out / 'metrics.json'}\nlogs:       {out / 'logs'}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import find_records
    from .infer import evaluate_records, format_metrics_table

    ckpt = _checkpoint(args.checkpoint)
    module = load_checkpoint(str(ckpt))
    if args.out:
        out = Path(args.out)
    else:
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = run / f"eval_{Path(args.data[0]).resolve().name or 'data'}.json"
    if out.exists() and not args.overwrite:
        raise UserError(out, "already exists (pass --overwrite to replace it)")
    m, ids, skipped = evaluate_records(module, find_records(args.data), batch_size=args.batch_size,
                                       num_workers=args.num_workers, leads=_leads(getattr(args, "leads", None)))
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    if m is None:
        raise UserError(args.data[0], "no usable record")
    m["checkpoint"] = str(ckpt)
    m["skipped"] = skipped
    m["records"] = ids
    print(format_metrics_table(m))
    print("leads used: " + ", ".join(f"{k}: {v} records" for k, v in m["leads_used"].items()))
    write_json(out, m, overwrite=args.overwrite)
    print(f"\nmetrics: {out}")
    return 2 if skipped else 0


def cmd_predict(args) -> int:
    from .data import find_records
    from .infer import predict_records

    module = load_checkpoint(args.checkpoint)
    records = find_records(args.input)
    res = predict_records(module, records, Path(args.out), overwrite=args.overwrite, batch_size=args.batch_size,
                          num_workers=args.num_workers, leads=_leads(getattr(args, "leads", None)))
    n_ok = sum(1 for p in res.written if p.suffix == ".csv" and not p.stem.endswith("_timeline")
               and p.name != "summary.csv")
    print(f"{n_ok} of {len(records)} records classified; outputs in {args.out}/ (summary: {res.summary})"
          if res.summary else "no record classified")
    if res.leads_used:
        print("leads used: " + ", ".join(f"{k}: {v} records" for k, v in res.leads_used.items()))
    if res.failures:
        print(f"{len(res.failures)} record(s) failed:", file=sys.stderr)
        for line in res.failures:
            print(f"  {line}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite)


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    return {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
