"""Default configuration of ``ssm-medseg`` (override with ``--config FILE`` and ``--set key=value``)."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

from core.engine import UserError

DEFAULTS = {
    "data": {
        "spacing": [1.5, 1.5, 1.5],    # target voxel size (mm) after RAS reorientation; null keeps the input's
        "norm": "zscore",              # zscore (MRI, nnU-Net style) | percentile (robust [0,1]) | ct | none
        "ct_window": [-175.0, 250.0],  # HU window for norm=ct
        "percentiles": [0.5, 99.5],    # for norm=percentile
        "crop_foreground": True,
        "patch_size": [64, 64, 64],
        "samples_per_volume": 2,
        "pos": 2,                      # RandCropByPosNegLabel ratio of foreground- to background-centred patches
        "neg": 1,
        "aug": "strong",               # strong (cross-scanner) | light | none
        "rotate_deg": 20.0,
        "scale_range": [0.8, 1.25],
        "flip_axes": [],               # e.g. [0] for left-right symmetric anatomy
        "num_classes": None,           # background included; None: from dataset.json labels or the data
        "val_fraction": 0.2,
    },
    "model": {"preset": "tiny"},       # preset name plus any UNetMamba keyword to override
    "train": {
        "lr": 2e-3,
        "lr_schedule": "poly",         # nnU-Net's (1 - progress)^0.9 over max epochs or --max-time; or constant
        "weight_decay": 1e-5,
        "batch_size": 2,
        "steps_per_epoch": 25,         # patches are random: an "epoch" is a fixed number of steps
        "val_every": 1,
        "sw_batch_size": 2,
        "overlap": 0.25,
        "init_from": None,
    },
    "pretrain": {
        "mask_ratio": 0.75,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "batch_size": 2,
        "steps_per_epoch": 25,
    },
}

LR_SCHEDULES = ("poly", "constant")


def lr_schedule(train_cfg: Mapping) -> str:
    """``train.lr_schedule``, checked (one-line ``UserError`` otherwise); configs from before the
    option, such as older checkpoints', trained at a constant lr."""
    sched = train_cfg.get("lr_schedule", "constant")
    if sched not in LR_SCHEDULES:
        raise UserError("config", f"train.lr_schedule must be poly or constant, got {sched!r}")
    return sched


# Our own outputs in a run directory, removed (with the trainer's) when it is reused.
RUN_FILES = ("reconstructions", "metrics.json", "config.json", "plans.json")


def model_keys() -> List[str]:
    """Keys the ``model`` section takes: ``preset`` and any :class:`~apps.medseg.model.UNetMamba` keyword."""
    import inspect

    from .model import UNetMamba

    return ["preset"] + [n for n in inspect.signature(UNetMamba).parameters if n not in ("in_channels", "out_channels")]


def resolve(config: Any = None, set_pairs: Sequence[str] = (), plan: Optional[dict] = None) -> dict:
    """DEFAULTS < ``plan`` (``ssm-medseg plan``) < ``--config`` < ``--set``, strictly (unknown keys at
    any depth: one line naming the closest valid ones), then the checks a run needs."""
    from core.engine import merge_config, resolve_config

    base = merge_config(DEFAULTS, plan["config"], strict=False) if plan else DEFAULTS
    cfg = resolve_config(base, config, None, set_pairs, extra_keys={"model": model_keys})
    ps = cfg["data"]["patch_size"]
    if not (isinstance(ps, list) and len(ps) == 3 and all(isinstance(p, int) and p > 0 for p in ps)):
        raise UserError("config", f"data.patch_size must be three positive integers, got {ps!r}")
    lr_schedule(cfg["train"])
    check_patch(cfg)
    return cfg


def check_patch(cfg: dict) -> None:
    """The model builds from ``cfg["model"]`` and the patch size suits its down-sampling."""
    from .model import build_model

    try:
        net = build_model(cfg["model"], 1, 2)
    except (TypeError, ValueError) as e:
        raise UserError("config", f"model: {e}") from None
    bad = [p for p in cfg["data"]["patch_size"] if p % net.divisor]
    if bad:
        raise UserError("config", f"data.patch_size {cfg['data']['patch_size']} must be multiples of {net.divisor} "
                                  "for this model")
