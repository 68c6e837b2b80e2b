"""Lower-precision CPU inference for the SSM layers' projections (Quamba's recipe).

``in_proj`` and ``out_proj`` of every ``Mamba``, ``Mamba2``, ``BiMamba`` and ``Hydra`` hold most of a
Mamba model's weights and matmul time; the selective scan, the convolution, ``A_log``/``D``/``dt``
and the norms are sensitive to rounding and stay in float32.

* ``"int8"``: weights int8 with one scale per output channel, activations quantised per call
  (dynamic quantisation through torch's fbgemm/x86 kernels; no calibration data needed).
* ``"bf16"``: weights and the matmul in bfloat16, float32 in and out. Fast only on CPUs with
  native bf16 (AVX512-BF16, AMX); elsewhere torch emulates it and it is slower (bench/RESULTS.md).

Inference only: quantise a trained model after loading it (``quantize_projections(model, "int8")``),
never before training or saving.
"""
from __future__ import annotations

import warnings
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

PROJECTIONS: Tuple[str, ...] = ("in_proj", "out_proj")
MODES = ("int8", "bf16")


class Bf16Linear(nn.Module):
    """``nn.Linear`` with bfloat16 weights and matmul: x (..., in) float32 -> (..., out) float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def int8_linear(linear: nn.Linear) -> nn.Module:
    """A dynamically quantised copy of ``linear``: int8 weights with per-output-channel scales,
    activations quantised per call; x (..., in) float32 -> (..., out) float32."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    lin = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    lin.load_state_dict(linear.state_dict())
    lin.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch marks eager quantisation deprecated (moving to torchao)
        warnings.simplefilter("ignore")
        return DynamicLinear.from_float(lin)


def quantize_projections(model: nn.Module, mode: str = "int8", projections: Tuple[str, ...] = PROJECTIONS) -> int:
    """Replace, in place, the ``projections`` (``in_proj``, ``out_proj``) of every SSM layer in
    ``model`` by an int8 or bf16 version (see the module docstring); puts ``model`` in eval mode.
    Returns how many.

    ``out_proj``'s input (the gated scan output) has outlier channels, so per-tensor int8
    activations cost most of the error there; ``projections=("in_proj",)`` keeps it in float32.
    Only CPU float32 models: the int8 kernels are CPU kernels.
    """
    from .bidirectional import BiMamba, Hydra
    from .mamba import Mamba
    from .mamba2 import Mamba2

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize_projections is for CPU inference: move the model to the CPU first")
    make = int8_linear if mode == "int8" else Bf16Linear
    n = 0
    for layer in list(model.modules()):
        if not isinstance(layer, (Mamba, Mamba2, BiMamba, Hydra)):
            continue
        for name in projections:
            if name not in PROJECTIONS:
                raise ValueError(f"projections must be among {PROJECTIONS}, got {name!r}")
            lin = getattr(layer, name, None)
            if type(lin) is nn.Linear:  # an already-quantised one is left as it is
                setattr(layer, name, make(lin))
                n += 1
    model.eval()
    return n
