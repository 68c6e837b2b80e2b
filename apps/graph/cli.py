"""``ssm-graph``: Graph Mamba networks (and GIN / GraphGPS baselines) on TU, SMILES, Peptides-func and edge lists.

  ssm-graph train --data data/MUTAG --task classification --out runs/mutag --model gmn
  ssm-graph train --data data/MUTAG --out runs/mutag_cv --folds 10 --model gmn --compare gin
  ssm-graph evaluate --checkpoint runs/mutag --data data/MUTAG
  ssm-graph predict --checkpoint runs/mutag -i new_graphs/ -o predictions.csv
  ssm-graph demo --out demo_out/graph
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.engine import (EXIT_BAD_INPUT, UserError, add_trainer_args, cli_main, ensure_new, load_config,
                         parse_set_pairs, write_json)

MODELS = ("gmn", "graph_mamba", "gin", "gps")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssm-graph", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train (best epoch by validation) and test, or k-fold cross-validate")
    t.add_argument("--data", required=True, help="TU folder, Peptides-func folder, edge-list folder or SMILES CSV")
    t.add_argument("--task", default=None, choices=["classification", "multilabel", "regression"],
                   help="default: from the labels (classes -> classification, multi-hot -> multilabel)")
    t.add_argument("--model", default=None, choices=MODELS, help="default gmn")
    t.add_argument("--folds", type=int, default=None,
                   help="k-fold cross-validation (graph classification): reports the optimistic (GIN paper) "
                        "and fair (inner split, Errica et al.) protocols")
    t.add_argument("--compare", nargs="*", default=[], choices=MODELS,
                   help="with --folds: also cross-validate these models on the same folds")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--skip-bad", action="store_true", help="train on the good graphs when some fail to load")
    add_trainer_args(t)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on labelled data")
    e.add_argument("--checkpoint", required=True, help="a .ckpt file or a run folder")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="only this part of the data's official split (Peptides-func)")
    e.add_argument("-o", "--output", default=None, help="also write the metrics as JSON")
    e.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("predict", help="predictions for new graphs -> CSV")
    p.add_argument("--checkpoint", required=True, help="a .ckpt file or a run folder")
    p.add_argument("-i", "--input", required=True, help="TU folder, edge-list folder or SMILES CSV")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="synthetic graphs -> GMN and GIN training -> evaluate -> predict (no downloads)")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    return ap


def _exists(path: str, flag: str) -> None:
    if not Path(path).exists():
        raise UserError(path, f"not found ({flag})")


def cmd_train(args) -> int:
    from core.engine import trainer_kwargs_from_args

    _exists(args.data, "--data")
    if args.folds is not None and args.folds < 2:
        raise UserError("--folds", "needs at least 2 folds")
    if args.compare and args.folds is None:
        raise UserError("--compare", "only with --folds")
    cfg = load_config(args.config)
    ov = parse_set_pairs(args.set_pairs)
    if args.batch_size is not None:
        ov["batch_size"] = args.batch_size
    if args.lr is not None:
        ov["lr"] = args.lr
    if args.model is not None:
        ov.setdefault("model", {})["layer"] = args.model
    tk = trainer_kwargs_from_args(args)
    max_epochs, max_time = tk.pop("max_epochs"), tk.pop("max_time")
    from .train import cross_validate, resolve_config, train

    if args.folds:
        models = list(dict.fromkeys([resolve_config(cfg, ov)["model"]["layer"], *args.compare]))
        res = cross_validate(args.data, args.out, args.folds, task=args.task, config=cfg, overrides=ov,
                             models=models, max_epochs=max_epochs, seed=args.seed, overwrite=args.overwrite,
                             skip_bad=args.skip_bad, trainer_kwargs=tk)
        for name, r in res["models"].items():
            o, f = r["optimistic"], r["fair"]
            print(f"{name:12s} fair (inner split) {100 * f['mean']:.1f} ± {100 * f['std']:.1f}   "
                  f"optimistic (GIN protocol) {100 * o['mean']:.1f} ± {100 * o['std']:.1f} at epoch {o['epoch']}")
        print(f"per-fold curves: {Path(args.out) / 'cv.json'}")
        return 0
    res = train(args.data, args.out, task=args.task, config=cfg, overrides=ov, max_epochs=max_epochs,
                max_time=max_time, seed=args.seed, overwrite=args.overwrite, skip_bad=args.skip_bad,
                trainer_kwargs=tk, num_workers=args.num_workers)
    if "test" in res:
        m = res["metric"]
        print(f"{res['model']}: val {m} {res['val'][m]:.4f}  test {m} {res['test'][m]:.4f}  "
              f"({res['split_sizes']['test']} test items)")
    print(f"best checkpoint: {res['checkpoint']}\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0


def cmd_evaluate(args) -> int:
    _exists(args.checkpoint, "--checkpoint")
    _exists(args.data, "--data")
    if args.output:
        ensure_new(args.output, args.overwrite)
    from .infer import evaluate, load_checkpoint

    module = load_checkpoint(args.checkpoint)
    res = {"data": args.data, "checkpoint": args.checkpoint, "split": args.split,
           **evaluate(module, args.data, args.split)}
    print(json.dumps(res, indent=2))
    if args.output:
        write_json(args.output, res, overwrite=args.overwrite)
    return EXIT_BAD_INPUT if res["failed"] else 0


def cmd_predict(args) -> int:
    _exists(args.checkpoint, "--checkpoint")
    _exists(args.input, "--input")
    ensure_new(args.output, args.overwrite)
    from .infer import load_checkpoint, predict

    module = load_checkpoint(args.checkpoint)
    res = predict(module, args.input, args.output, overwrite=args.overwrite)
    print(f"wrote {res['written']} rows to {args.output}"
          + (f"; {res['failed']} graph(s) failed (listed above)" if res["failed"] else ""))
    return EXIT_BAD_INPUT if res["failed"] else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from core.engine.cli import require_extra

    require_extra("graph", ("torch_geometric", "rdkit", "sklearn", "pandas"))
    return {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
