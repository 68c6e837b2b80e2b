"""Forecasters with one signature: ``Model(seq_len, pred_len, enc_in, c_out, **cfg)``,
``forward(x_enc (B, L, enc_in)) -> (B, pred_len, c_out)`` (Time-Series-Library style)."""
from __future__ import annotations

from .chimera import Chimera
from .dlinear import DLinear
from .spacetime import SpaceTime

MODELS = {"chimera": Chimera, "spacetime": SpaceTime, "dlinear": DLinear}

__all__ = ["Chimera", "DLinear", "SpaceTime", "MODELS", "build_model"]


def build_model(name: str, seq_len: int, pred_len: int, enc_in: int, c_out: int, **cfg):
    """Instantiate ``MODELS[name]`` (config keys are the model's keyword arguments)."""
    return MODELS[name](seq_len=seq_len, pred_len=pred_len, enc_in=enc_in, c_out=c_out, **cfg)
