"""Checkpoint loading for inference and Dice / HD95 evaluation on each case's own voxel grid."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from core.engine import UserError, progress, write_json

from .data import load_case
from .infer import (keep_largest_component, load_segmenter, postprocessing_classes, preprocess_case,  # noqa: F401
                    probs_to_input_grid, sliding_window_probs)


def dice_hd95(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]) -> Dict[str, list]:
    """Per foreground class Dice and HD95 (mm, MONAI ``HausdorffDistanceMetric(percentile=95)``).

    ``pred``/``truth`` int (X, Y, Z). A class absent from both gives Dice 1 and HD95 0; absent from
    one only gives Dice 0 and HD95 inf.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    p = one_hot(torch.as_tensor(pred.astype(np.int64))[None, None], num_classes)
    t = one_hot(torch.as_tensor(truth.astype(np.int64))[None, None], num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)[0].tolist()
    hd = []
    for c in range(1, num_classes):
        ip, it = bool(p[0, c].any()), bool(t[0, c].any())
        if not ip and not it:
            hd.append(0.0)
        elif ip != it:
            hd.append(float("inf"))
        else:
            m = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
            hd.append(float(m(p[:, c:c + 1], t[:, c:c + 1], spacing=list(map(float, spacing)))[0, 0]))
    return {"dice": [float(x) for x in dice], "hd95": hd}


def evaluate_cases(module, cases: Sequence[Mapping], device: str = "cpu", tta: bool = False,
                   keep_largest: bool = False) -> dict:
    """Predict each labelled case through the full predict path (on its own grid) and score it.
    Post-processing as in ``predict``: every class with ``keep_largest``, else training's decision."""
    cfg = module.config
    pp = postprocessing_classes(cfg, keep_largest)
    k = int(module.hparams.num_classes)
    names = list(module.names)
    rows = []
    for c in progress(list(cases), "evaluating", total=len(cases)):
        x, ref = preprocess_case(c["image"], cfg["data"], c["name"])
        probs = sliding_window_probs(module.net, x, cfg["data"]["patch_size"], cfg["train"]["sw_batch_size"],
                                     cfg["train"]["overlap"], device, tta)
        pred, _ = probs_to_input_grid(probs, x.affine, ref)
        if pp is None or pp:
            pred = keep_largest_component(pred, pp)
        _, truth, _ = load_case(c["image"], c["label"], c["name"])
        if truth.max() >= k:
            raise UserError(c["label"], f"case {c['name']}: label {int(truth.max())} but the model has {k} classes")
        s = dice_hd95(pred, truth, k, ref.header.get_zooms()[:3])
        rows.append({"case": c["name"], **s})
    dice = np.array([r["dice"] for r in rows])
    hd = np.array([r["hd95"] for r in rows])
    summary = {names[i + 1] if i + 1 < len(names) else f"class{i + 1}":
               {"dice_mean": float(dice[:, i].mean()), "dice_std": float(dice[:, i].std()),
                "hd95_mean_mm": float(np.mean(hd[:, i])) if np.isfinite(hd[:, i]).all() else float("inf")}
               for i in range(k - 1)}
    return {"cases": rows, "per_class": summary, "mean_dice": float(dice.mean())}


def format_table(result: dict) -> str:
    """Plain-text table: class, mean Dice (std), mean HD95."""
    lines = [f"{'class':<24} {'Dice':>14} {'HD95 (mm)':>10}"]
    for name, s in result["per_class"].items():
        lines.append(f"{name:<24} {s['dice_mean']:>7.4f} ({s['dice_std']:.3f}) {s['hd95_mean_mm']:>10.2f}")
    lines.append(f"{'mean':<24} {result['mean_dice']:>7.4f}")
    return "\n".join(lines)


def evaluate_command(checkpoint, datalist: Optional[str], data_dir: Optional[str], out: Optional[Path] = None,
                     split: Optional[str] = None, device: str = "cpu", tta: bool = False, keep_largest: bool = False,
                     overwrite: bool = False) -> int:
    """``ssm-medseg evaluate``: the table on stdout, the JSON at ``out`` when given. Returns the exit code."""
    from core.engine import ensure_new, resolve_checkpoint

    from .data import load_dataset

    if out is not None:
        ensure_new(out, overwrite)
    ckpt = resolve_checkpoint(checkpoint)
    module = load_segmenter(ckpt, device)
    ds = load_dataset(datalist, data_dir)
    split = split or ("validation" if ds["validation"] else "training")
    cases = [c for c in ds[split] if c.get("label")]
    where = datalist or data_dir
    if not cases:
        raise UserError(where, f"no labelled cases in split {split!r}")
    if ds["num_channels"] != module.hparams.in_channels:
        raise UserError(where, f"{ds['num_channels']} channel(s); the model expects {module.hparams.in_channels}")
    res = evaluate_cases(module, cases, device, tta, keep_largest)
    res.update({"checkpoint": str(ckpt), "split": split, "keep_largest": keep_largest,
                "postprocessing": module.config.get("postprocessing")})
    print(format_table(res))
    if out is not None:
        write_json(out, res, overwrite=overwrite)
        print(f"wrote {out}")
    return 0
