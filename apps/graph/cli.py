"""``ssm-graph``: Graph Mamba networks (and GIN / GraphGPS baselines) on TU, SMILES, Peptides-func and edge lists.

  ssm-graph train --data data/MUTAG --task classification -o runs/mutag --model gmn
  ssm-graph train --data data/MUTAG -o runs/mutag_cv --folds 10 --model gmn --compare gin
  ssm-graph evaluate --checkpoint runs/mutag --data data/MUTAG
  ssm-graph predict --checkpoint runs/mutag -i new_graphs/ -o predictions.csv
  ssm-graph demo -o demo_out/graph
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.engine import (EXIT_BAD_INPUT, AppCLI, UserError, check_new_output, hardware_kwargs, load_config,
                         parse_set_pairs, require_paths, resolve_checkpoint, write_json)

MODELS = ("gmn", "graph_mamba", "gin", "gps")
EXTRA = ("torch_geometric", "rdkit", "sklearn", "pandas")


def cmd_train(args) -> int:
    require_paths(args.data, "--data")
    if args.folds is not None and args.folds < 2:
        raise UserError("--folds", "needs at least 2 folds")
    if args.compare and args.folds is None:
        raise UserError("--compare", "only with --folds")
    check_new_output(args.out, args.overwrite, folder=True)
    cfg = load_config(args.config)
    ov = parse_set_pairs(args.set_pairs)
    for key in ("batch_size", "lr"):
        if getattr(args, key) is not None:
            ov[key] = getattr(args, key)
    if args.model is not None:
        ov.setdefault("model", {})["layer"] = args.model
    tk = hardware_kwargs(args)
    from .train import cross_validate, resolve_config, train

    resolve_config(cfg, ov)  # strict keys before any data is read
    if args.folds:
        models = list(dict.fromkeys([resolve_config(cfg, ov)["model"]["layer"], *args.compare]))
        res = cross_validate(args.data, args.out, args.folds, task=args.task, config=cfg, overrides=ov,
                             models=models, max_epochs=args.max_epochs, seed=args.seed, overwrite=args.overwrite,
                             skip_bad=args.skip_bad, trainer_kwargs=tk)
        for name, r in res["models"].items():
            o, f = r["optimistic"], r["fair"]
            print(f"{name:12s} fair (inner split) {100 * f['mean']:.1f} ± {100 * f['std']:.1f}   "
                  f"optimistic (GIN protocol) {100 * o['mean']:.1f} ± {100 * o['std']:.1f} at epoch {o['epoch']}")
        print(f"per-fold curves: {Path(args.out) / 'cv.json'}")
        return 0
    res = train(args.data, args.out, task=args.task, config=cfg, overrides=ov, max_epochs=args.max_epochs,
                max_time=args.max_time, seed=args.seed, overwrite=args.overwrite, skip_bad=args.skip_bad,
                trainer_kwargs=tk, num_workers=args.num_workers)
    if "test" in res:
        m = res["metric"]
        print(f"{res['model']}: val {m} {res['val'][m]:.4f}  test {m} {res['test'][m]:.4f}  "
              f"({res['split_sizes']['test']} test items)")
    print(f"best checkpoint: {res['checkpoint']}\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0


def _checked_model(args, inputs, flag: str):
    """(checkpoint path, model on --device): paths and outputs checked before torch loads."""
    ckpt = resolve_checkpoint(args.checkpoint)
    require_paths(inputs, flag)
    check_new_output(args.out, args.overwrite)
    from .infer import load_checkpoint

    return ckpt, load_checkpoint(ckpt, args.device)


def cmd_evaluate(args) -> int:
    ckpt, module = _checked_model(args, args.data, "--data")
    from .infer import evaluate

    res = {"data": args.data, "checkpoint": str(ckpt), "split": args.split, **evaluate(module, args.data, args.split)}
    print(json.dumps(res, indent=2))
    if args.out:
        write_json(args.out, res, overwrite=args.overwrite)
    return EXIT_BAD_INPUT if res["failed"] else 0


def cmd_predict(args) -> int:
    _, module = _checked_model(args, args.input, "-i/--input")
    from .infer import predict

    res = predict(module, args.input, args.out, overwrite=args.overwrite)
    print(f"wrote {res['written']} rows to {args.out}"
          + (f"; {res['failed']} graph(s) failed (listed above)" if res["failed"] else ""))
    return EXIT_BAD_INPUT if res["failed"] else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    return 0


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-graph", __doc__.splitlines()[0], examples="\n".join(__doc__.splitlines()[2:]),
                 extra=("graph", list(EXTRA)))
    t = cli.train(help="train (best epoch by validation) and test, or k-fold cross-validate", fn=cmd_train)
    t.add_required("--data", default=None,
                   help="TU folder, Peptides-func folder, edge-list folder or SMILES CSV (required)")
    t.add_argument("--task", default=None, choices=["classification", "multilabel", "regression"],
                   help="default: from the labels (classes: classification, multi-hot: multilabel)")
    t.add_argument("--model", default=None, choices=MODELS, help="network (default gmn)")
    t.add_argument("--folds", type=int, default=None,
                   help="k-fold cross-validation (graph classification): reports the optimistic (GIN paper) "
                        "and the fair (inner split, Errica et al.) protocol")
    t.add_argument("--compare", nargs="*", default=[], choices=MODELS,
                   help="with --folds: also cross-validate these models on the same folds")
    t.add_argument("--batch-size", type=int, default=None, help="graphs per batch (default 32)")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--skip-bad", action="store_true", help="train on the good graphs when some fail to load")

    e = cli.evaluate(help="metrics of a checkpoint on labelled data", fn=cmd_evaluate)
    e.add_required("--data", default=None, help="labelled graphs in any supported format (required)")
    e.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="only this part of the data's official split (Peptides-func)")

    p = cli.predict(help="predictions for new graphs", fn=cmd_predict, out_help="output CSV file")
    p.add_required("-i", "--input", default=None, help="TU folder, edge-list folder or SMILES CSV (required)")

    cli.demo(help="synthetic graphs -> GMN and GIN training -> evaluate -> predict (no downloads)", fn=cmd_demo)
    return cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
