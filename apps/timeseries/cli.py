"""``ssm-timeseries``: train / evaluate / forecast multivariate series from CSV, plus a self-contained demo.

  ssm-timeseries train --data ETTh1.csv --model chimera --seq-len 96 --pred-len 96 --out runs/c96
  ssm-timeseries evaluate --checkpoint runs/c96/checkpoints/best.ckpt --data ETTh1.csv
  ssm-timeseries forecast --checkpoint runs/c96/checkpoints/best.ckpt --data ETTh1.csv -o next.csv --plot next.png
  ssm-timeseries demo --out demo_out/timeseries
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.engine import (UserError, add_trainer_args, cli_main, require_extra, ensure_new, load_config, parse_set_pairs,
                         write_json)


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="CSV with a date column and numeric columns")
    p.add_argument("--date-col", default=None, help="name of the date column (default: auto-detect)")
    p.add_argument("--fill", action="store_true",
                   help="interpolate missing values (default: missing values are an error)")


def _add_read_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the CSV (saved in the checkpoint; evaluate/forecast reuse it)")
    g.add_argument("--time-cols", default=None, metavar="COLS",
                   help="time from several columns, e.g. year,month,day,hour (or one column of integer steps)")
    g.add_argument("--drop", default=None, metavar="COLS", help="comma-separated columns to ignore")
    g.add_argument("--columns", default=None, metavar="COLS",
                   help="variables to forecast (default: all numeric); other numeric columns become covariates")
    g.add_argument("--categorical", default="onehot", choices=["onehot", "drop"],
                   help="text columns: one-hot covariates (default) or drop them")
    g.add_argument("--duplicates", default="error", choices=["error", "first", "mean"],
                   help="duplicate timestamps: error (default), keep the first row, or average them")


def _read_options(args):
    from .csvread import ReadOptions

    return ReadOptions(date_col=args.date_col, time_cols=args.time_cols, drop=args.drop or [],
                       columns=args.columns, categorical=args.categorical, duplicates=args.duplicates,
                       fill=args.fill)


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS

    ap = argparse.ArgumentParser(prog="ssm-timeseries", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a forecaster (Time-Series-Library protocol), then test it")
    _add_data_args(t, required=False)  # required unless --resume
    t.add_argument("--model", default=None, choices=sorted(MODELS), help="required unless --resume")
    t.add_argument("--seq-len", type=int, default=96)
    t.add_argument("--pred-len", type=int, default=96)
    t.add_argument("--features", default="M", choices=["M", "S", "MS"],
                   help="M: all->all, S: target->target, MS: all->target")
    t.add_argument("--target", default=None, help="target column (default: OT if present, else the last)")
    _add_read_args(t)
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the interrupted run in RUN from its last.ckpt (same data and options)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    add_trainer_args(t, out_required=False)

    e = sub.add_parser("evaluate", help="MSE/MAE of a checkpoint on the test (or val) split")
    e.add_argument("--checkpoint", required=True)
    _add_data_args(e)
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("-o", "--output", default=None, help="also write the metrics as JSON")
    e.add_argument("--overwrite", action="store_true")

    f = sub.add_parser("forecast", help="forecast the pred_len steps after the end of the file")
    f.add_argument("--checkpoint", required=True)
    _add_data_args(f)
    f.add_argument("-o", "--output", required=True, help="forecast CSV (date + forecast columns)")
    f.add_argument("--plot", default=None, help="also draw history + forecast into this PNG")
    f.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="synthetic data -> brief training -> evaluate -> forecast (no downloads)")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    return ap


def _default_target(path: str, target: Optional[str], columns: Optional[str] = None) -> Optional[str]:
    if target is not None or columns:
        return target
    try:
        import pandas as pd

        cols = list(pd.read_csv(path, nrows=0).columns)
    except Exception:  # load_series reports unreadable files properly
        return None
    return "OT" if "OT" in cols else None


def cmd_train(args) -> int:
    from core.engine import trainer_kwargs_from_args

    from .interrupt import TrainingInterrupted
    from .train import train

    if args.resume is None:
        missing = [f for f, v in (("--data", args.data), ("--model", args.model), ("--out", args.out)) if v is None]
        if missing:
            raise UserError("train", f"{', '.join(missing)} required (or --resume RUN)")
    cfg = load_config(args.config)
    overrides = parse_set_pairs(args.set_pairs)
    for key in ("batch_size", "lr"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    tk = trainer_kwargs_from_args(args)
    max_epochs, max_time = tk.pop("max_epochs"), tk.pop("max_time")
    try:
        res = train(args.data, args.model, args.seq_len, args.pred_len, args.out, features=args.features,
                    target=_default_target(args.data, args.target, args.columns), date_col=args.date_col,
                    fill=args.fill, config=cfg, overrides=overrides, max_epochs=max_epochs, max_time=max_time,
                    seed=args.seed, overwrite=args.overwrite, trainer_kwargs=tk, num_workers=args.num_workers,
                    read=_read_options(args), resume=args.resume)
    except TrainingInterrupted as e:  # exit 143 (SIGTERM) / 130 (SIGINT): never mistaken for success
        run = e.run_dir.parent if e.run_dir.name == "linear_stage" else e.run_dir
        print(f"error: {e}; no metrics written. Continue with: ssm-timeseries train --resume {run}",
              file=sys.stderr)
        return e.exit_code
    rep = {k: v for k, v in res.get("data_report", {}).items() if k not in ("rows_read", "time_columns")}
    if rep:
        print("data: " + json.dumps(rep))
    print(f"cycle: {res['cycle_len'] or 'none'}" + (f" (strength {res['cycle_acf']})" if res.get("cycle_acf") else ""))
    t = res["test"]
    print(f"test  MSE {t['mse']:.4f}  MAE {t['mae']:.4f}  (original scale: MSE {t['mse_orig']:.4f} "
          f"MAE {t['mae_orig']:.4f}; {t['windows']} windows)")
    if "linear_stage" in res:
        s1 = res["linear_stage"]
        print(f"linear path alone: test MSE {s1['test']['mse']:.4f}; SSM branch "
              + ("kept (it lowered val MSE)" if s1["branch_kept"] else "dropped (it did not lower val MSE)"))
    print(f"best checkpoint: {res['checkpoint']}\nmetrics: {Path(args.resume or args.out) / 'metrics.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from .infer import data_for, evaluate_split, load_checkpoint

    if args.output:
        ensure_new(args.output, args.overwrite)
    module = load_checkpoint(args.checkpoint)
    data = data_for(module, args.data, fill=args.fill, date_col=args.date_col)
    res = evaluate_split(module, data, args.split)
    res = dict(split=args.split, data=args.data, checkpoint=args.checkpoint, **res)
    print(json.dumps(res, indent=2))
    if args.output:
        write_json(args.output, res, overwrite=args.overwrite)
    return 0


def cmd_forecast(args) -> int:
    from .infer import check_outputs, data_for, forecast, load_checkpoint, write_forecast

    check_outputs([args.output, args.plot], args.overwrite)
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise UserError(args.plot, "--plot must name a .png file")
    module = load_checkpoint(args.checkpoint)
    data = data_for(module, args.data, fill=args.fill, date_col=args.date_col, for_forecast=True)
    df = forecast(module, data)
    write_forecast(df, data, args.output, args.plot, overwrite=args.overwrite)
    print(f"wrote {len(df)} steps ({df['date'].iloc[0]} .. {df['date'].iloc[-1]}) to {args.output}"
          + (f" and {args.plot}" if args.plot else ""))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    require_extra("timeseries", ["pandas", "matplotlib"])
    args = build_parser().parse_args(argv)
    return {"train": cmd_train, "evaluate": cmd_evaluate, "forecast": cmd_forecast, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
