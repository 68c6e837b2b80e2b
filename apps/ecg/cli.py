"""``ssm-ecg``: train, evaluate, predict and demo for 12-lead ECG multi-label classification.

    ssm-ecg train    --data DIR -o RUN_DIR [--leads 12] [--max-epochs N] [--max-time DD:HH:MM:SS]
    ssm-ecg evaluate --checkpoint RUN_DIR --data DIR [-o metrics.json]
    ssm-ecg predict  --checkpoint RUN_DIR -i IN [IN ...] -o OUT_DIR
    ssm-ecg demo     -o DIR
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from core.engine import AppCLI, check_new_output, require_paths, resolve_checkpoint, trainer_kwargs_from_args

READ_AHEAD_HELP = ("processes that read and preprocess records ahead, in order (default 0: read in this "
                   "process); records stream either way, so memory does not grow with their number")
LEADS_HELP = ("read every record with this lead set (12, 6, 4, 3, 2 or names; one the model was trained "
              "for); default: each record's largest trained set it has")


def _leads(spec):
    from .data import parse_leads

    return parse_leads(spec) if spec else None


def _require_records(paths, flag: str) -> None:
    """Folders, record files, or record names without extension (``JS20000`` for JS20000.hea)."""
    require_paths([p if Path(p).exists() or not Path(f"{p}.hea").is_file() else f"{p}.hea" for p in paths], flag)


def cmd_train(args) -> int:
    _require_records(args.data, "--data")
    if args.config:
        require_paths(args.config, "--config", kind="file")
    check_new_output(args.out, args.overwrite, folder=True)
    from core.engine import prepare_run_dir, resolve_config

    from .model import all_model_keys
    from .train import DEFAULTS, train

    flags = {"leads": args.leads, "labels": args.labels, "loss": args.loss, "batch_size": args.batch_size,
             "lr": args.lr, "fs": args.fs, "window_s": args.window_s, "num_workers": args.num_workers or None,
             "data_loading": args.data_loading, "model.preset": args.preset}
    cfg = resolve_config(DEFAULTS, args.config, flags, args.set_pairs, extra_keys={"model": all_model_keys})
    out = prepare_run_dir(args.out, args.overwrite)
    tk = trainer_kwargs_from_args(args)
    if tk["max_epochs"] is None and tk["max_time"] is None:
        tk["max_epochs"] = int(cfg["max_epochs"])
    m = train(args.data, out, cfg, seed=args.seed, trainer_kwargs=tk)
    if m is None:  # a DDP rank other than 0
        return 0
    v = m["validation"]
    print(f"validation ({m['n_val']} records): macro AUROC {v['macro_auroc']:.3f}, Challenge score "
          f"{v['challenge_score']:.3f}")
    print(f"checkpoint: {m['checkpoint']}\nmetrics:    {out / 'metrics.json'}\nlogs:       {out / 'logs'}")
    return 0


def cmd_evaluate(args) -> int:
    resolve_checkpoint(args.checkpoint)
    _require_records(args.data, "--data")
    check_new_output(args.out, args.overwrite)
    from .infer import evaluate_checkpoint

    return evaluate_checkpoint(args.checkpoint, args.data, args.out, overwrite=args.overwrite,
                               batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                               leads=_leads(args.leads))


def cmd_predict(args) -> int:
    resolve_checkpoint(args.checkpoint)
    _require_records(args.input, "-i/--input")
    check_new_output(args.out, True, folder=True)  # a file in the way; existing outputs are checked per record
    from .infer import predict_checkpoint

    return predict_checkpoint(args.checkpoint, args.input, args.out, overwrite=args.overwrite,
                              batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                              leads=_leads(args.leads))


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite)


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-ecg", "12-lead ECG multi-label classification (CNN + bidirectional Mamba) on WFDB / "
                 "PhysioNet Challenge records.", examples=__doc__.split("\n", 2)[2].rstrip(),
                 extra=("ecg", ["wfdb", "scipy"]))

    t = cli.train("train a classifier on a folder of WFDB records", cmd_train)
    t.add_required("--data", nargs="+", default=None,
                   help="folder(s) with .hea/.mat records, or record files (required)")
    t.add_argument("--leads", default=None, help="12, 6, 4, 3, 2 or lead names 'I,II,V2' (default 12)")
    t.add_argument("--preset", default=None, choices=["tiny", "small", "base"], help="model size (default small)")
    t.add_argument("--labels", default=None, choices=["scored", "all"],
                   help="the 26 scored Challenge classes (default) or every code present")
    t.add_argument("--loss", default=None, choices=["bce", "asl"], help="binary cross-entropy or asymmetric loss")
    t.add_argument("--batch-size", type=int, default=None, help="training batch size (default 16)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    t.add_argument("--fs", type=float, default=None, help="resample every record to this rate (default 500)")
    t.add_argument("--window-s", type=float, default=None, help="training window in seconds (default 10)")
    t.add_argument("--data-loading", default=None, choices=["auto", "memory", "lazy"],
                   help="read all records into memory, or scan headers and read records on demand "
                        "(default auto: lazy above 5,000 records)")

    e = cli.evaluate("metrics of a checkpoint on labelled records", cmd_evaluate,
                     out_help="metrics JSON file (default RUN_DIR/eval_<data folder>.json)")
    e.add_required("--data", nargs="+", default=None, help="folder(s) or record files with # Dx labels (required)")
    e.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    e.add_argument("--leads", default=None, help=LEADS_HELP)
    _workers_help(e)

    r = cli.predict("Challenge-format outputs for new records", cmd_predict,
                    out_help="output folder: one REC.csv per record + summary.csv")
    r.add_required("-i", "--input", nargs="+", default=None, help="folder(s) or record files (.hea/.mat) (required)")
    r.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    r.add_argument("--leads", default=None, help=LEADS_HELP)
    _workers_help(r)

    cli.demo("synthetic records -> tiny model -> evaluate -> predict (no downloads)", cmd_demo)
    return cli


def _workers_help(p) -> None:
    for a in p._actions:
        if a.dest == "num_workers":
            a.help = READ_AHEAD_HELP


def main(argv: Optional[List[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
