"""int8 / bf16 projections for CPU inference: close to float32, the scan left in float32."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from core.layers import BiMamba, Hydra, Mamba, Mamba2, SSMBackbone
from core.layers.quant import quantize_projections


@pytest.mark.parametrize("cls", [Mamba, Mamba2, BiMamba, Hydra])
@pytest.mark.parametrize("mode,tol", [("int8", 0.15), ("bf16", 0.02)])
def test_projections_quantised_outputs_close(cls, mode, tol):
    torch.manual_seed(0)
    layer = cls(32).eval()
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        ref = layer(x)
        q = copy.deepcopy(layer)
        n = quantize_projections(q, mode)
        y = q(x)
    left = [name for name, m in q.named_modules() if name.rsplit(".", 1)[-1] in ("in_proj", "out_proj")
            and type(m) is nn.Linear]
    assert n >= 2 and not left, left
    err = float((y - ref).norm() / ref.norm())
    assert 0 < err < tol, err   # changed (really quantised), and close
    # the sensitive parameters stay float32
    for name, p in q.named_parameters():
        assert p.dtype == torch.float32, name


def test_whole_backbone_and_idempotent():
    torch.manual_seed(0)
    net = SSMBackbone(16, n_layer=2, mixer="mamba2", mixer_kwargs={"headdim": 8}).eval()
    ids = torch.randn(1, 20, 16)
    n = quantize_projections(net, "int8")
    assert n == 4 and quantize_projections(net, "int8") == 0
    with torch.no_grad():
        assert torch.isfinite(net(ids)).all()
    with pytest.raises(ValueError, match="mode"):
        quantize_projections(net, "fp8")
