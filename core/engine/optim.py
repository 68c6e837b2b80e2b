"""Optimisers and learning-rate schedules shared by every app.

Parameter groups follow mamba_ssm's and nanoGPT's convention: no weight decay on parameters
tagged ``_no_weight_decay`` (``A_log``, ``D``, ``dt_bias``, S4D's kernel), on biases and other
1-D parameters, and on normalisation layers. A parameter may also carry ``_optim`` (S4's
convention), a dict of per-parameter hyper-parameters (``lr``, ``weight_decay``) that wins.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Set

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def _is_norm(module: nn.Module) -> bool:
    # RMSNorm/RMSNormGated (ours and torch's) and anything named like a norm layer.
    return isinstance(module, _NORMS) or "norm" in type(module).__name__.lower()


def no_weight_decay_names(module: nn.Module) -> Set[str]:
    """Names of the trainable parameters of ``module`` that get no weight decay."""
    out: Set[str] = set()
    for mname, mod in module.named_modules():
        norm = _is_norm(mod)
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if norm or p.ndim < 2 or getattr(p, "_no_weight_decay", False):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


def param_groups(module: nn.Module, weight_decay: float, lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """Optimiser parameter groups for the trainable parameters of ``module``.

    One group with ``weight_decay``, one with 0 (see :func:`no_weight_decay_names`), and one per
    distinct ``_optim`` dict. Frozen parameters (``requires_grad=False``) are left out, so a
    training stage that freezes part of the model optimises only the rest. Each group lists its
    parameter names under ``"param_names"`` (optimisers ignore that key). Empty groups are dropped.
    """
    no_wd = no_weight_decay_names(module)
    groups: Dict[Any, Dict[str, Any]] = {}
    seen = set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        wd = 0.0 if name in no_wd else float(weight_decay)
        extra = dict(getattr(p, "_optim", None) or {})
        hp = {"weight_decay": wd, **({"lr": lr} if lr is not None else {}), **extra}
        key = tuple(sorted(hp.items()))
        g = groups.setdefault(key, {"params": [], "param_names": [], **hp})
        g["params"].append(p)
        g["param_names"].append(name)
    return list(groups.values())


def make_optimizer(module: nn.Module, lr: float, weight_decay: float = 0.0, name: str = "adamw",
                   **kwargs) -> torch.optim.Optimizer:
    """``name`` ("adamw", "adam" or "sgd") over :func:`param_groups` of ``module``.

    With ``adam`` the decay is L2 added to the gradient (torch's ``Adam``), with ``adamw`` it is
    decoupled, as in the plain torch optimisers.
    """
    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in classes:
        raise ValueError(f"unknown optimiser {name!r}; choose from {sorted(classes)}")
    return classes[name](param_groups(module, weight_decay), lr=lr, **kwargs)


# ---------------------------------------------------------------- schedules (multiplicative factors)

def warmup_cosine(total_steps: int, warmup_steps: Optional[int] = None, min_factor: float = 0.02
                  ) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps`` (default 5 % of the run, at least 1; 0 for none), then
    cosine decay to ``min_factor`` at ``total_steps``. Returns ``step -> factor`` for ``LambdaLR``."""
    total = max(1, int(total_steps))
    warm = max(1, total // 20) if warmup_steps is None else max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        done = min(step - warm, total - warm) / max(1, total - warm)   # stays at the floor past the end
        return max(min_factor, 0.5 * (1 + math.cos(math.pi * done)))

    return factor


def step_decay(decay: float = 0.5, hold: int = 0) -> Callable[[int], float]:
    """Per-epoch decay ``decay ** max(0, epoch - hold)`` (Time-Series-Library's "type1" is
    decay 0.5, hold 0: the rate halves every epoch). Returns ``epoch -> factor``."""
    return lambda epoch: decay ** max(0, epoch - hold)


def poly(fraction: float, power: float = 0.9) -> float:
    """nnU-Net's polynomial factor ``(1 - fraction) ** power`` for ``fraction`` of the budget spent."""
    return (1.0 - min(max(fraction, 0.0), 1.0)) ** power


# ---------------------------------------------------------------- Lightning scheduler dicts

def warmup_cosine_scheduler(optimizer, total_steps: int, warmup_steps: Optional[int] = None,
                            min_factor: float = 0.02) -> dict:
    """:func:`warmup_cosine` stepped every optimiser step, as a Lightning scheduler config dict."""
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps, min_factor))
    return {"scheduler": sched, "interval": "step"}


def step_decay_scheduler(optimizer, decay: float = 0.5, hold: int = 0) -> dict:
    """:func:`step_decay` stepped every epoch, as a Lightning scheduler config dict."""
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, step_decay(decay, hold)),
            "interval": "epoch"}


def budget_fraction(trainer, steps_per_epoch: Optional[int] = None) -> float:
    """Share of the run's budget already spent, in [0, 1]: the furthest of global steps over
    ``max_steps``, over ``max_epochs * steps_per_epoch``, and wall time over ``max_time``."""
    from lightning.pytorch.callbacks import Timer

    frac, step = 0.0, trainer.global_step
    if trainer.max_steps and trainer.max_steps > 0:
        frac = step / trainer.max_steps
    if steps_per_epoch and trainer.max_epochs and trainer.max_epochs > 0:
        frac = max(frac, step / (trainer.max_epochs * steps_per_epoch))
    for cb in trainer.callbacks:
        if isinstance(cb, Timer):
            left = cb.time_remaining("train")
            if left is not None:
                used = cb.time_elapsed("train")
                frac = max(frac, used / max(used + left, 1e-9))
    return min(max(frac, 0.0), 1.0)


def poly_lr_scheduler(optimizer, module, steps_per_epoch: Optional[int] = None, power: float = 0.9) -> dict:
    """nnU-Net's polynomial decay, lr * (1 - spent) ** power, per step, over the run's budget
    (:func:`budget_fraction`, so ``--max-time`` runs decay too). Lightning scheduler config dict."""

    def factor(_):
        trainer = getattr(module, "_trainer", None)
        return poly(budget_fraction(trainer, steps_per_epoch), power) if trainer is not None else 1.0

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def configure_optimizers(module, lr: float, weight_decay: float = 0.0, optimizer: str = "adamw",
              schedule: str = "constant", **schedule_kwargs):
    """What a LightningModule's ``configure_optimizers`` returns, in one call.

    ``schedule``: "constant"; "warmup_cosine" (per step over ``trainer.estimated_stepping_batches``;
    constant when that is unknown); "poly" (``steps_per_epoch``, ``power``); "step_decay"
    (per epoch, ``decay``, ``hold``).
    """
    opt = make_optimizer(module, lr=lr, weight_decay=weight_decay, name=optimizer)
    if schedule == "constant":
        return opt
    if schedule == "warmup_cosine":
        trainer = getattr(module, "_trainer", None)
        total = trainer.estimated_stepping_batches if trainer is not None else None
        if not total or not math.isfinite(total) or total <= 0:
            return opt
        return {"optimizer": opt, "lr_scheduler": warmup_cosine_scheduler(opt, int(total), **schedule_kwargs)}
    if schedule == "poly":
        return {"optimizer": opt, "lr_scheduler": poly_lr_scheduler(opt, module, **schedule_kwargs)}
    if schedule == "step_decay":
        return {"optimizer": opt, "lr_scheduler": step_decay_scheduler(opt, **schedule_kwargs)}
    raise ValueError(f"unknown schedule {schedule!r}; choose from constant, warmup_cosine, poly, step_decay")


__all__ = ["no_weight_decay_names", "param_groups", "make_optimizer", "warmup_cosine", "step_decay", "poly",
           "warmup_cosine_scheduler", "step_decay_scheduler", "budget_fraction", "poly_lr_scheduler",
           "configure_optimizers"]

