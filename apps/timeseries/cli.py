"""``ssm-timeseries``: train / evaluate / forecast multivariate series from CSV, plus a self-contained demo.

  ssm-timeseries train --data ETTh1.csv --model chimera --seq-len 96 --pred-len 96 -o runs/c96
  ssm-timeseries evaluate --checkpoint runs/c96 --data ETTh1.csv
  ssm-timeseries forecast --checkpoint runs/c96 -i ETTh1.csv -o next.csv --plot next.png
  ssm-timeseries train --resume runs/c96          # continue an interrupted run
  ssm-timeseries demo -o demo_out/timeseries
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.engine import (AppCLI, UserError, check_new_output, deprecate, hardware_kwargs, is_rank_zero,
                         require_paths, resolve_checkpoint)

# the model names, without importing torch (apps/timeseries/models registers the same three; tested)
MODEL_NAMES = ("chimera", "dlinear", "spacetime")


def _add_csv_args(p, data: str = "required") -> None:
    """``--data`` ("required", "optional" or "none": forecast names its input -i) and the CSV reading flags."""
    if data == "required":
        p.add_required("--data", default=None, help="CSV with a time column and numeric columns (required)")
    elif data == "optional":
        p.add_argument("--data", default=None, help="CSV with a time column and numeric columns "
                                                    "(required unless --resume)")
    p.add_argument("--date-col", default=None, help="name of the date column (default: auto-detect)")
    p.add_argument("--fill", action="store_true",
                   help="fill missing values and gaps in the time grid by interpolation (default: an error)")


def _add_read_args(p) -> None:
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


def _default_target(path: Optional[str], target: Optional[str], columns: Optional[str] = None) -> Optional[str]:
    if target is not None or columns or path is None:
        return target
    try:
        import pandas as pd

        cols = list(pd.read_csv(path, nrows=0).columns)
    except Exception:  # load_series reports unreadable files properly
        return None
    return "OT" if "OT" in cols else None


def cmd_train(args) -> int:
    if args.resume is None:
        missing = [f for f, v in (("--data", args.data), ("--model", args.model), ("-o/--out", args.out)) if v is None]
        if missing:
            raise UserError("train", f"{', '.join(missing)} required (or --resume RUN)")
        require_paths(args.data, "--data", kind="file")
        if is_rank_zero():  # DDP: the ranks Lightning relaunches find rank 0's folder already made
            check_new_output(args.out, args.overwrite, folder=True)
    else:
        if not Path(args.resume).is_dir():
            raise UserError(args.resume, "cannot resume: no such run folder (--resume)")
    if args.config:
        require_paths(args.config, "--config", kind="file")
    from .interrupt import TrainingInterrupted
    from .train import train

    try:
        res = train(args.data, args.model, args.seq_len, args.pred_len, args.out, features=args.features,
                    target=_default_target(args.data, args.target, args.columns), date_col=args.date_col,
                    fill=args.fill, config=args.config, overrides={"batch_size": args.batch_size, "lr": args.lr},
                    set_pairs=args.set_pairs, max_epochs=args.max_epochs, max_time=args.max_time, seed=args.seed,
                    overwrite=args.overwrite, trainer_kwargs=hardware_kwargs(args), num_workers=args.num_workers,
                    read=_read_options(args), resume=args.resume)
    except TrainingInterrupted as e:  # exit 143 (SIGTERM) / 130 (SIGINT): never mistaken for success
        run = e.run_dir.parent if e.run_dir.name == "linear_stage" else e.run_dir
        print(f"error: {e}; no metrics written. Continue with: ssm-timeseries train --resume {run}",
              file=sys.stderr)
        return e.exit_code
    if res is None:  # a DDP rank other than 0: rank 0 reports
        return 0
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
    resolve_checkpoint(args.checkpoint)  # path checks before torch loads
    require_paths(args.data, "--data", kind="file")
    check_new_output(args.out, args.overwrite)
    from .infer import evaluate_file

    evaluate_file(args.checkpoint, args.data, args.split, args.out, overwrite=args.overwrite, fill=args.fill,
                  date_col=args.date_col, device=args.device, num_workers=args.num_workers)
    return 0


def cmd_forecast(args) -> int:
    resolve_checkpoint(args.checkpoint)
    require_paths(args.input, "-i/--input", kind="file")
    check_new_output(args.out, args.overwrite)
    check_new_output(args.plot, args.overwrite)
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise UserError(args.plot, "--plot must name a .png file")
    from .infer import forecast_file

    forecast_file(args.checkpoint, args.input, args.out, args.plot, overwrite=args.overwrite, fill=args.fill,
                  date_col=args.date_col, plot_columns=args.plot_columns, device=args.device)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-timeseries", __doc__.splitlines()[0], examples=__doc__.split("\n", 2)[2].rstrip(),
                 extra=("timeseries", ["pandas", "matplotlib"]))

    t = cli.train("train a forecaster (Time-Series-Library protocol), then test it", cmd_train,
                  out_help="run folder: checkpoints/, logs/, config.json, metrics.json (required unless --resume)",
                  out_required=False)
    _add_csv_args(t, data="optional")
    t.add_argument("--model", default=None, choices=MODEL_NAMES, help="forecaster (required unless --resume)")
    t.add_argument("--seq-len", type=int, default=96, help="input window length in rows (default 96)")
    t.add_argument("--pred-len", type=int, default=96, help="forecast horizon in rows (default 96)")
    t.add_argument("--features", default="M", choices=["M", "S", "MS"],
                   help="M: all->all (default), S: target->target, MS: all->target")
    t.add_argument("--target", default=None, help="target column (default: OT if present, else the last)")
    _add_read_args(t)
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the interrupted run in RUN from its last.ckpt (same data and options)")
    t.add_argument("--batch-size", type=int, default=None, help="training batch size (default 32)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3; DLinear 5e-3)")

    e = cli.evaluate("MSE/MAE of a checkpoint on the test (or val) split", cmd_evaluate)
    _add_csv_args(e)
    e.add_argument("--split", default="test", choices=["test", "val"], help="which split to score (default test)")
    deprecate(e, "--output", "--out")

    f = cli.predict("forecast the pred_len steps after the end of the file", cmd_forecast, name="forecast",
                    out_help="forecast CSV (date + one column per forecast variable)", workers=False)
    f.add_required("-i", "--input", default=None, help="CSV whose last seq_len rows are the model's input (required)")
    _add_csv_args(f, data="none")
    f.add_argument("--plot", default=None, metavar="PNG", help="also draw history + forecast into this PNG")
    f.add_argument("--plot-columns", nargs="+", default=None, metavar="COL",
                   help="columns to draw (default: every forecast column)")
    deprecate(f, "--data", "--input")
    deprecate(f, "--output", "--out")

    cli.demo("synthetic data -> brief training -> evaluate -> forecast (no downloads)", cmd_demo)
    return cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
