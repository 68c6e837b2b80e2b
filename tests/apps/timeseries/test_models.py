"""Forecasters: shapes in every mode, closed-loop decoder inside SpaceTime, scan methods agree, loss falls."""
from __future__ import annotations

import pytest
import torch

from apps.timeseries.models import MODELS, build_model
from apps.timeseries.models.chimera import Chimera
from apps.timeseries.models.spacetime import SpaceTime

SMALL = {"chimera": dict(d_model=8, d_state=2), "spacetime": dict(d_model=8, d_state=4), "dlinear": {}}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("L,H,C,c_out", [(24, 8, 3, 3), (30, 5, 4, 1), (16, 40, 1, 1)])
def test_shapes(name, L, H, C, c_out):
    m = build_model(name, L, H, C, c_out, **SMALL[name])
    assert m(torch.randn(2, L, C)).shape == (2, H, c_out)


def test_spacetime_channel_mixing_shapes():
    m = SpaceTime(24, 12, 5, 5, d_model=8, d_state=4, channel_mixing=True)
    assert m(torch.randn(3, 24, 5)).shape == (3, 12, 5)


def test_spacetime_forecast_uses_closed_loop_decoder_equal_to_open_loop():
    torch.manual_seed(0)
    m = SpaceTime(32, 20, 2, 2, d_model=8, d_state=6, linear_skip=False, dropout=0.0).double().eval()
    seen = {}
    m.decoder.register_forward_hook(lambda mod, inp, out: seen.update(u=inp[0], y=out))
    m(torch.randn(3, 32, 2, dtype=torch.float64))
    torch.testing.assert_close(seen["y"], m.decoder.forecast_recurrent(seen["u"], 20), rtol=1e-9, atol=1e-10)


def test_chimera_scan_methods_agree_and_variates_interact():
    torch.manual_seed(0)
    m = Chimera(24, 6, 4, 4, d_model=8, d_state=2, dropout=0.0, head_dropout=0.0, linear_skip=False).double().eval()
    x = torch.randn(2, 24, 4, dtype=torch.float64)
    y1 = m(x)
    m.set_scan_method("matrix")
    torch.testing.assert_close(m(x), y1)
    # the 2-D scan couples variates: changing variate 0 changes the forecast of variate 3
    x2 = x.clone()
    x2[:, :, 0] += torch.randn(2, 24, dtype=torch.float64)
    assert (m(x2)[..., 3] - y1[..., 3]).abs().max() > 1e-6


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_lowers_the_loss(name):
    torch.manual_seed(0)
    t = torch.arange(400, dtype=torch.float32)
    series = torch.stack([torch.sin(2 * torch.pi * t / 24), torch.cos(2 * torch.pi * t / 12) + 0.01 * t], 1)
    xs = torch.stack([series[i:i + 48] for i in range(0, 300, 5)])
    ys = torch.stack([series[i + 48:i + 60] for i in range(0, 300, 5)])
    m = build_model(name, 48, 12, 2, 2, **SMALL[name])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(m(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
