"""``ssm-medseg demo``: synthetic NIfTI data -> tiny UNet-Mamba on CPU -> mask of an unseen, non-RAS volume."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from core.engine import prepare_demo_dir, seed_everything

from .config import DEFAULTS


def demo_config() -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(spacing=[2.0, 2.0, 2.0], patch_size=[32, 32, 32], samples_per_volume=2, aug="light",
                       norm="zscore")
    # constant lr: in a 75-second run a decaying rate only slows the little learning there is
    cfg["train"].update(batch_size=4, steps_per_epoch=10, lr=3e-3, sw_batch_size=4, lr_schedule="constant")
    return cfg


def _where(mask: np.ndarray, affine: np.ndarray) -> str:
    if not mask.any():
        return "nowhere (empty)"
    idx = np.argwhere(mask)
    ctr = affine @ np.r_[idx.mean(0), 1.0]
    return f"centre at ({ctr[0]:.1f}, {ctr[1]:.1f}, {ctr[2]:.1f}) mm, {len(idx)} voxels"


def run_demo(out: Path, seed: int = 0, overwrite: bool = False, max_time: str = "00:00:01:15") -> int:
    """Make data, train for ``max_time``, predict the held-out volume, print Dice and location."""
    from .data import read_nnunet_dir
    from .evaluate import dice_hd95
    from .infer import predict_file_cases
    from .synth import make_demo_dataset
    from .train import run_train

    t0 = time.time()
    out = prepare_demo_dir(out, overwrite)  # re-runnable: a folder an earlier demo made is replaced
    seed_everything(seed)
    data = out / "data"
    names = make_demo_dataset(data, n_train=4, n_test=1, seed=seed)
    print(f"synthesised {len(names['training'])} training volumes and 1 unseen non-RAS test volume in {data}")
    ds = read_nnunet_dir(data)
    cfg = demo_config()
    res = run_train(cfg, ds, out / "run", dict(max_time=max_time, max_epochs=None, accelerator="cpu", devices=1),
                    seed=seed, progress=True)  # a line every few seconds in a log
    print(f"trained {res['steps']} steps in {res['train_seconds']} s; best validation Dice {res['best_val_dice']:.3f}")
    from .infer import load_segmenter

    module = load_segmenter(res["best_checkpoint"])
    pred_dir = out / "predictions"
    written, failures = predict_file_cases(module.net, [data / "imagesTs"], pred_dir, cfg["data"],
                                           cfg["data"]["patch_size"], 1, sw_batch_size=4, overwrite=True)
    if failures or not written:
        print("prediction failed:", failures)
        return 1
    for path in written:
        pred_img = nib.load(str(path))
        truth_img = nib.load(str(data / "labelsTs" / path.name))
        pred, truth = np.asarray(pred_img.dataobj), np.asarray(truth_img.dataobj)
        s = dice_hd95(pred, truth, 3, pred_img.header.get_zooms())
        print(f"{path.name}: axes {''.join(nib.aff2axcodes(pred_img.affine))} shape {pred.shape} "
              f"(input {truth_img.shape}, same affine: {np.allclose(pred_img.affine, truth_img.affine)})")
        for c, nm in ((1, "big_organ"), (2, "small_organ")):
            print(f"  {nm}: Dice {s['dice'][c - 1]:.3f}, HD95 {s['hd95'][c - 1]:.1f} mm; predicted "
                  f"{_where(pred == c, pred_img.affine)}; truth {_where(truth == c, truth_img.affine)}")
    print(f"demo done in {time.time() - t0:.0f} s; masks in {pred_dir}")
    return 0
