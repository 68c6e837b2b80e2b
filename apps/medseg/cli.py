"""``ssm-medseg``: pretrain / train / evaluate / predict / demo for 3-D UNet-Mamba segmentation.

Examples::

    ssm-medseg pretrain --data-dir Dataset001 --out runs/pre --max-time 00:02:00:00
    ssm-medseg train --data-dir Dataset001 --out runs/seg --init-from runs/pre/checkpoints/last.ckpt
    ssm-medseg evaluate --checkpoint runs/seg/checkpoints/best.ckpt --datalist dataset.json --out runs/eval
    ssm-medseg predict --checkpoint runs/seg/checkpoints/best.ckpt -i imagesTs -o masks --tta
    ssm-medseg demo --out demo_out
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from core.engine import (UserError, add_trainer_args, cli_main, load_config, merge_config, parse_set_pairs,
                         prepare_run_dir, seed_everything, trainer_kwargs_from_args, write_json)

from .config import DEFAULTS, lr_schedule


def _progress() -> bool:
    return os.environ.get("SSM_NO_PROGRESS") != "1"


def _config(args, plan: Optional[dict] = None) -> dict:
    base = merge_config(DEFAULTS, plan["config"], strict=False) if plan else DEFAULTS
    cfg = merge_config(base, load_config(args.config), parse_set_pairs(args.set_pairs))
    for key in ("data", "model", "train", "pretrain"):
        if not isinstance(cfg.get(key), dict):
            raise UserError("config", f"'{key}' must be a mapping")
    ps = cfg["data"]["patch_size"]
    if not (isinstance(ps, list) and len(ps) == 3 and all(isinstance(p, int) and p > 0 for p in ps)):
        raise UserError("config", f"data.patch_size must be three positive integers, got {ps!r}")
    lr_schedule(cfg["train"])
    return cfg


def _check_patch(cfg: dict) -> None:
    from .model import build_model

    try:
        net = build_model(cfg["model"], 1, 2)
    except (TypeError, ValueError) as e:
        raise UserError("config", f"model: {e}") from None
    bad = [p for p in cfg["data"]["patch_size"] if p % net.divisor]
    if bad:
        raise UserError("config", f"data.patch_size {cfg['data']['patch_size']} must be multiples of {net.divisor} "
                                  "for this model")


# Our own outputs in a run directory, removed (with the trainer's) when it is reused.
RUN_FILES = ("reconstructions", "metrics.json", "config.json", "plans.json")


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--datalist", help="MSD-style dataset.json (training/validation/test lists)")
    g.add_argument("--data-dir", help="nnU-Net raw folder (imagesTr/, labelsTr/) or a folder with dataset.json")


def cmd_train(args) -> int:
    from .data import load_dataset
    from .train import run_train

    from .plan import plan_for_training

    _config(args)  # a bad --config/--set fails before the fingerprint is taken
    ds = load_dataset(args.datalist, args.data_dir)
    out = Path(args.out)
    prepare_run_dir(out, args.overwrite, clear=RUN_FILES)
    plan = plan_for_training(ds, args.plan, out, args.max_time, args.accelerator, args.seed)
    cfg = _config(args, plan)
    if plan:
        cfg["plan"] = {k: plan[k] for k in ("version", "fingerprint", "budget", "notes")}
    _check_patch(cfg)
    seed_everything(args.seed)
    init = args.init_from or cfg["train"].get("init_from")
    res = run_train(cfg, ds, out, trainer_kwargs_from_args(args), args.num_workers, init, args.seed, _progress())
    print(f"best validation Dice {res['best_val_dice']}: {res['best_checkpoint']}")
    return 0


def _pretrain_cases(args) -> tuple:
    from .data import find_input_cases, load_dataset

    if args.images:
        groups, problems = find_input_cases(args.images)
        if problems:
            raise UserError(problems[0][1])
        cases = [{"name": k, "image": [str(p) for p in v]} for k, v in sorted(groups.items())]
        if not cases:
            raise UserError(args.images[0], "no NIfTI volumes found")
        if len({len(c["image"]) for c in cases}) > 1:
            raise UserError(args.images[0], "cases have different numbers of channels")
        return cases, len(cases[0]["image"])
    ds = load_dataset(args.datalist, args.data_dir)
    cases = ds["training"] + ds["validation"] + ds["test"]  # labels are not used
    return cases, ds["num_channels"]


def cmd_pretrain(args) -> int:
    from .pretrain import MIMModule, run_pretrain, save_reconstructions

    cfg = _config(args)
    _check_patch(cfg)
    cases, n_ch = _pretrain_cases(args)
    out = Path(args.out)
    prepare_run_dir(out, args.overwrite, clear=RUN_FILES)
    seed_everything(args.seed)
    res = run_pretrain(cfg, cases, n_ch, out, trainer_kwargs_from_args(args), args.num_workers, _progress())
    if args.save_recon:
        from core.engine import load_module

        module = load_module(res["checkpoint"], MIMModule)
        files = save_reconstructions(module, cases, out / "reconstructions", n=args.save_recon, seed=args.seed or 0)
        print(f"reconstructions: {len(files)} NIfTI files in {out / 'reconstructions'}")
    print(f"pretraining loss {res['last_train_loss']:.4f}: {res['checkpoint']}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_cases, format_table, load_segmenter

    path = Path(args.out) / "evaluation.json" if args.out else None
    if path is not None and path.exists() and not args.overwrite:
        raise UserError(path, "already exists (pass --overwrite to replace it)")
    module = load_segmenter(args.checkpoint, args.device)
    ds = load_dataset(args.datalist, args.data_dir)
    split = args.split or ("validation" if ds["validation"] else "training")
    cases = [c for c in ds[split] if c.get("label")]
    if not cases:
        raise UserError(args.datalist or args.data_dir, f"no labelled cases in split {split!r}")
    if ds["num_channels"] != module.hparams.in_channels:
        raise UserError(args.datalist or args.data_dir, f"{ds['num_channels']} channel(s); the model expects "
                                                        f"{module.hparams.in_channels}")
    res = evaluate_cases(module, cases, args.device, args.tta, args.keep_largest)
    res.update({"checkpoint": str(args.checkpoint), "split": split, "keep_largest": args.keep_largest,
                "postprocessing": module.config.get("postprocessing")})
    print(format_table(res))
    if path is not None:
        write_json(path, res)
        print(f"wrote {path}")
    return 0


def cmd_predict(args) -> int:
    from .evaluate import load_segmenter
    from .infer import postprocessing_classes, predict_file_cases

    module = load_segmenter(args.checkpoint, args.device)
    cfg = module.config
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(out, "exists and is not a directory")
    written, failures = predict_file_cases(
        module.net, args.input, out, cfg["data"], cfg["data"]["patch_size"], int(module.hparams.in_channels),
        sw_batch_size=cfg["train"]["sw_batch_size"], overlap=args.overlap or cfg["train"]["overlap"],
        device=args.device, tta=args.tta, save_probabilities=args.save_probabilities, overwrite=args.overwrite,
        keep_largest=args.keep_largest, keep_largest_classes=postprocessing_classes(cfg, False),
        log=lambda s: print(s, file=sys.stderr if s.startswith("error") else sys.stdout, flush=True))
    print(f"{len(written)} case(s) written to {out}, {len(failures)} failed")
    if failures:
        print("failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 2  # bad input, as everywhere in the project
    return 0


def cmd_plan(args) -> int:
    from core.engine import max_time_seconds

    from .data import load_dataset
    from .plan import budget_device, format_plan, plan_dataset

    src = Path(args.data_dir) if args.data_dir else Path(args.datalist).parent
    path = Path(args.out) if args.out else src / "plans.json"
    if path.exists() and not args.overwrite:
        raise UserError(path, "already exists (pass --overwrite to replace it)")
    ds = load_dataset(args.datalist, args.data_dir)
    plan = plan_dataset(ds, budget_device(args.accelerator), max_time_seconds(args.max_time), args.seed or 0,
                        _progress())
    write_json(path, plan)
    print(format_plan(plan))
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), args.seed, args.overwrite, args.max_time)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssm-medseg", description="3-D UNet-Mamba segmentation of NIfTI volumes",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pretrain", help="MambaMIM self-supervised pretraining on unlabelled volumes")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--datalist")
    g.add_argument("--data-dir")
    g.add_argument("--images", nargs="+", help="folders/files of NIfTI volumes (nnU-Net channel naming)")
    s.add_argument("--save-recon", type=int, default=0, metavar="N",
                   help="save input/masked/reconstruction NIfTI for N cases after training")
    add_trainer_args(s)
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("plan", help="dataset fingerprint -> plans.json (spacing, patch, normalisation, ...)")
    _data_args(s)
    s.add_argument("--out", default=None, help="plans.json path (default: in the dataset folder)")
    s.add_argument("--max-time", default=None, help="training budget DD:HH:MM:SS the plan is sized for")
    s.add_argument("--accelerator", default="auto", help="cpu, gpu, auto: the device the plan is sized for")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("train", help="supervised training (Dice + CE), best checkpoint by validation Dice")
    _data_args(s)
    s.add_argument("--plan", default=None, metavar="PLANS_JSON",
                   help="plan from `ssm-medseg plan` (default: plan now; 'none': the built-in defaults); "
                        "--config/--set override its fields")
    s.add_argument("--init-from", default=None, metavar="PRETRAIN_CKPT", help="start from a MambaMIM checkpoint")
    add_trainer_args(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("evaluate", help="Dice and HD95 per class on labelled cases (table + JSON)")
    s.add_argument("--checkpoint", required=True)
    _data_args(s)
    s.add_argument("--split", choices=["training", "validation", "test"], default=None)
    s.add_argument("--out", default=None, help="folder for evaluation.json")
    s.add_argument("--device", default="cpu")
    s.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest connected component of every class (default: of the classes "
                        "where training found it raised validation Dice)")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("predict", help="segment NIfTI cases; masks on the input's own grid")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("-i", "--input", nargs="+", required=True,
                   help="folder(s) in nnU-Net naming (CASE_0000.nii.gz, ...) and/or single files")
    s.add_argument("-o", "--output", required=True, help="output folder: OUT/CASE.nii.gz")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest connected component of every class (default: of the classes "
                        "where training found it raised validation Dice)")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation (4x slower)")
    s.add_argument("--save-probabilities", action="store_true", help="also write OUT/CASE_probabilities.nii.gz")
    s.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default from training)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("demo", help="synthesise data, train the tiny model on CPU, predict an unseen volume")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-time", default="00:00:01:15", help="training time budget DD:HH:MM:SS")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_demo)
    return p


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    main()
