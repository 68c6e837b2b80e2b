"""Forecasters with one signature: ``Model(seq_len, pred_len, enc_in, c_out, **cfg)``,
``forward(x_enc (B, L, enc_in)) -> (B, pred_len, c_out)`` (Time-Series-Library style).

Any of them can be wrapped in :class:`ResidualCycle` (``build_model(..., cycle_len=24)``), whose
forward also takes the windows' calendar position: ``forward(x_enc, t_index (B,))``.
"""
from __future__ import annotations

import inspect
from typing import List

import torch.nn as nn

from .chimera import Chimera
from .common import ResidualCycle
from .dlinear import DLinear
from .spacetime import SpaceTime

MODELS = {"chimera": Chimera, "spacetime": SpaceTime, "dlinear": DLinear}

__all__ = ["Chimera", "DLinear", "SpaceTime", "ResidualCycle", "MODELS", "build_model", "linear_path",
           "set_linear_only", "zero_branch_output"]


def build_model(name: str, seq_len: int, pred_len: int, enc_in: int, c_out: int, cycle_len: int = 0, **cfg):
    """Instantiate ``MODELS[name]`` (config keys are the model's keyword arguments).

    ``cycle_len > 0`` wraps it in :class:`ResidualCycle`; the model's RevIN (``revin``, on by default
    for models without the option) then moves into the wrapper, before the cycle is removed.
    """
    cls = MODELS[name]
    if cycle_len <= 0:
        return cls(seq_len=seq_len, pred_len=pred_len, enc_in=enc_in, c_out=c_out, **cfg)
    cfg = dict(cfg)
    revin = cfg.pop("revin", True)
    if "revin" in inspect.signature(cls).parameters:
        cfg["revin"] = False
    backbone = cls(seq_len=seq_len, pred_len=pred_len, enc_in=enc_in, c_out=c_out, **cfg)
    return ResidualCycle(backbone, seq_len, pred_len, enc_in, c_out, cycle_len, revin=revin)


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, ResidualCycle) else model


def linear_path(model: nn.Module) -> List[nn.Parameter]:
    """Parameters of the model's linear path: the lookback->horizon skip map and, under
    :class:`ResidualCycle`, the learned cycle ``Q``. Everything else is the SSM branch.

    Raises ValueError for models without a skip path (``linear_skip=False``, DLinear)."""
    skip = getattr(_backbone(model), "skip", None)
    if skip is None or not hasattr(_backbone(model), "linear_only"):
        raise ValueError(f"{type(_backbone(model)).__name__} has no linear skip path next to an SSM branch")
    return list(skip.parameters()) + ([model.Q] if isinstance(model, ResidualCycle) else [])


def set_linear_only(model: nn.Module, on: bool) -> None:
    """Run only the linear path (``on``) or the whole model; see :func:`linear_path`."""
    linear_path(model)  # same check and message
    _backbone(model).linear_only = bool(on)


def zero_branch_output(model: nn.Module) -> None:
    """Zero the SSM branch's output layer, so the model starts as its linear path alone."""
    head = _backbone(model).head
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
