"""``ssm-medseg``: pretrain / train / evaluate / predict / demo for 3-D UNet-Mamba segmentation.

Examples::

    ssm-medseg pretrain --images imagesTr -o runs/pre --max-time 00:02:00:00
    ssm-medseg train --data Dataset001 -o runs/seg --init-from runs/pre/checkpoints/last.ckpt
    ssm-medseg evaluate --checkpoint runs/seg --data dataset.json -o runs/seg/evaluation.json
    ssm-medseg predict --checkpoint runs/seg -i imagesTs -o masks --tta
    ssm-medseg demo -o demo_out
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from core.engine import (AppCLI, UserError, check_new_output, deprecate, require_paths, resolve_checkpoint,
                         trainer_kwargs_from_args)

DATA_HELP = ("nnU-Net raw folder (imagesTr/, labelsTr/), a folder with dataset.json, or an MSD-style "
             "dataset.json (training/validation/test lists)")


def _progress() -> bool:
    return os.environ.get("SSM_NO_PROGRESS") != "1"


def _dataset_args(data: str) -> tuple:
    """--data as load_dataset's (datalist, data_dir)."""
    p = Path(data)
    return (str(p), None) if p.is_file() else (None, str(p))


def cmd_train(args) -> int:
    require_paths(args.data, "--data")
    if args.init_from:
        require_paths(args.init_from, "--init-from", kind="file")
    check_new_output(args.out, args.overwrite, folder=True)
    from .train import train_command

    res = train_command(args.data, args.out, config=args.config, set_pairs=args.set_pairs,
                        trainer_kwargs=trainer_kwargs_from_args(args), num_workers=args.num_workers, init_from=args.init_from,
                        seed=args.seed, overwrite=args.overwrite, progress=_progress(), plan=args.plan)
    if res is not None:
        print(f"best validation Dice {res['best_val_dice']}: {res['best_checkpoint']}")
    return 0


def cmd_plan(args) -> int:
    require_paths(args.data, "--data")
    from .plan import plan_command

    return plan_command(args.data, args.out, args.max_time, args.accelerator, args.seed, args.overwrite, _progress())


def cmd_pretrain(args) -> int:
    sources = [x for x in (args.images, args.data) if x]
    if len(sources) != 1:
        raise UserError("pretrain", "give exactly one of --images or --data")
    require_paths(args.images or args.data, "--images" if args.images else "--data")
    check_new_output(args.out, args.overwrite, folder=True)
    from .pretrain import pretrain_command

    res = pretrain_command(args.out, images=args.images, data=args.data, config=args.config, set_pairs=args.set_pairs,
                           trainer_kwargs=trainer_kwargs_from_args(args), num_workers=args.num_workers, seed=args.seed,
                           overwrite=args.overwrite, save_recon=args.save_recon, progress=_progress())
    if res is not None:
        print(f"pretraining loss {res['last_train_loss']:.4f}: {res['checkpoint']}")
    return 0


def _eval_out(out: Optional[str]) -> Optional[Path]:
    """-o/--out is the metrics JSON file; a folder (the old meaning) still works, with a notice."""
    if out is None:
        return None
    p = Path(out)
    if p.is_dir() or p.suffix.lower() != ".json":
        print(f"warning: evaluate -o/--out now names the JSON file; writing {p / 'evaluation.json'} "
              "(a folder is deprecated)", file=sys.stderr)
        return p / "evaluation.json"
    return p


def cmd_evaluate(args) -> int:
    resolve_checkpoint(args.checkpoint)
    require_paths(args.data, "--data")
    out = _eval_out(args.out)
    check_new_output(out, args.overwrite)
    from .evaluate import evaluate_command

    datalist, data_dir = _dataset_args(args.data)
    return evaluate_command(args.checkpoint, datalist, data_dir, out, split=args.split, device=args.device,
                            tta=args.tta, keep_largest=args.keep_largest, overwrite=args.overwrite)


def cmd_predict(args) -> int:
    resolve_checkpoint(args.checkpoint)
    require_paths(args.input, "-i/--input")
    check_new_output(args.out, True, folder=True)  # a file in the way; existing masks are checked per case
    from .infer import predict_command

    return predict_command(args.checkpoint, args.input, args.out, device=args.device, tta=args.tta,
                           save_probabilities=args.save_probabilities, overlap=args.overlap,
                           keep_largest=args.keep_largest, overwrite=args.overwrite)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), args.seed, args.overwrite, args.max_time)


def build_cli() -> AppCLI:
    cli = AppCLI("ssm-medseg", "3-D UNet-Mamba segmentation of NIfTI volumes",
                 examples=__doc__.split("\n\n", 1)[1].rstrip(),
                 extra=("medseg", ["monai", "nibabel", "scipy", "skimage"]))

    s = cli.train("MambaMIM self-supervised pretraining on unlabelled volumes", cmd_pretrain, name="pretrain")
    s.add_argument("--images", nargs="+", default=None,
                   help="folders/files of NIfTI volumes (nnU-Net channel naming); or use --data")
    s.add_argument("--data", default=None, help=DATA_HELP + "; its images, without labels")
    s.add_argument("--save-recon", type=int, default=0, metavar="N",
                   help="save input/masked/reconstruction NIfTI for N cases after training")
    deprecate(s, "--datalist", "--data")
    deprecate(s, "--data-dir", "--data")

    s = cli.train("supervised training (Dice + CE), best checkpoint by validation Dice", cmd_train)
    s.add_required("--data", default=None, help=DATA_HELP + " (required)")
    s.add_argument("--init-from", default=None, metavar="PRETRAIN_CKPT", help="start from a MambaMIM checkpoint")
    s.add_argument("--plan", default=None, metavar="PLANS_JSON",
                   help="plan from 'ssm-medseg plan' (default: plan now; 'none': the built-in defaults); "
                        "--config/--set override its fields")
    deprecate(s, "--datalist", "--data")
    deprecate(s, "--data-dir", "--data")

    s = cli.command("plan", "dataset fingerprint -> plans.json (spacing, patch, normalisation, ...)", cmd_plan)
    s.add_required("--data", default=None, help=DATA_HELP + " (required)")
    s.add_argument("-o", "--out", default=None, help="plans.json path (default: in the dataset folder)")
    s.add_argument("--max-time", default=None, metavar="DD:HH:MM:SS", help="training budget the plan is sized for")
    s.add_argument("--accelerator", default="auto", help="cpu, gpu, auto: the device the plan is sized for")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing plans.json")
    deprecate(s, "--datalist", "--data")
    deprecate(s, "--data-dir", "--data")

    s = cli.evaluate("Dice and HD95 per class on labelled cases (table + JSON)", cmd_evaluate,
                     out_help="metrics JSON file (evaluation.json)")
    s.add_required("--data", default=None, help=DATA_HELP + " (required)")
    s.add_argument("--split", choices=["training", "validation", "test"], default=None,
                   help="which list to score (default: validation if there is one, else training)")
    s.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest connected component of every class (default: of the classes "
                        "where training found it raised validation Dice)")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    deprecate(s, "--datalist", "--data")
    deprecate(s, "--data-dir", "--data")

    s = cli.predict("segment NIfTI cases; masks on the input's own grid", cmd_predict,
                    out_help="output folder: OUT/CASE.nii.gz", workers=False)
    s.add_required("-i", "--input", nargs="+", default=None,
                   help="folder(s) in nnU-Net naming (CASE_0000.nii.gz, ...) and/or single files (required)")
    s.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest connected component of every class (default: of the classes "
                        "where training found it raised validation Dice)")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation (4x slower)")
    s.add_argument("--save-probabilities", action="store_true", help="also write OUT/CASE_probabilities.nii.gz")
    s.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default from training)")
    deprecate(s, "--output", "--out")

    s = cli.demo("synthesise data, train the tiny model on CPU, predict an unseen volume", cmd_demo)
    s.add_argument("--max-time", default="00:00:01:15", metavar="DD:HH:MM:SS",
                   help="training time budget of the demo (default 00:00:01:15)")
    return cli


def main(argv: Optional[List[str]] = None) -> int:
    return build_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
