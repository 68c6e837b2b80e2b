"""Forecasters: shapes in every mode, closed-loop decoder inside SpaceTime, scan methods agree, loss falls."""
from __future__ import annotations

import pytest
import torch

from apps.timeseries.models import MODELS, ResidualCycle, build_model
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
    m = SpaceTime(32, 20, 2, 2, d_model=8, d_state=6, linear_skip=False, dropout=0.0, revin=False).double().eval()
    seen = {}
    m.norm.register_forward_hook(lambda mod, inp, out: seen.update(u=out))  # the decoder's input
    y = m(torch.randn(3, 32, 2, dtype=torch.float64))
    ref = m.head(m.decoder.forecast_recurrent(seen["u"], 20))              # (B*C, 20, 1), step by step
    torch.testing.assert_close(y, ref.reshape(3, 2, 20).transpose(1, 2), rtol=1e-9, atol=1e-10)
    # the folded read-out equals the decoder output followed by the linear head
    torch.testing.assert_close(m.decoder.forward_projected(seen["u"], 20, m.head.weight, m.head.bias),
                               m.head(m.decoder(seen["u"], 20)), rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_residual_cycle_wraps_every_model(name):
    m = build_model(name, 24, 8, 3, 1, cycle_len=24, **SMALL[name])
    assert isinstance(m, ResidualCycle)
    assert getattr(m.backbone, "revin", None) is None          # RevIN moved into the wrapper
    assert m(torch.randn(2, 24, 3), torch.tensor([0, 5])).shape == (2, 8, 1)


def test_residual_cycle_removes_and_restores_the_aligned_cycle():
    class Echo(torch.nn.Module):   # forecasts the residual's last value: sees exactly what RCF passes on
        def forward(self, x):
            return x[:, -1:].expand(-1, 5, -1)

    torch.manual_seed(0)
    m = ResidualCycle(Echo(), 12, 5, 2, 2, cycle_len=7, revin=False).double()
    with torch.no_grad():
        m.Q.copy_(torch.randn(7, 2, dtype=torch.float64))
    k = torch.arange(40, dtype=torch.float64)
    series = m.Q.detach()[(k.long() + 3) % 7] + 0.5                # a pure cycle + level, phase 3 at row 0
    for start in (0, 4, 11):
        x = series[start:start + 12][None]
        y = m(x, torch.tensor([start + 3 + 700]))                     # only the residue mod 7 matters
        torch.testing.assert_close(y[0], series[start + 12:start + 17])
    y = m(series[:12][None], torch.tensor([4]))                      # wrong phase: not a perfect forecast
    assert (y[0] - series[12:17]).abs().max() > 1e-3


def test_spacetime_zero_init_head_starts_as_its_linear_skip_path():
    torch.manual_seed(0)
    m = SpaceTime(24, 6, 3, 3, d_model=8, d_state=4, zero_init_head=True, revin=False).eval()
    x = torch.randn(2, 24, 3)
    torch.testing.assert_close(m(x), m.skip(x.transpose(1, 2)).transpose(1, 2))
    assert not torch.allclose(SpaceTime(24, 6, 3, 3, d_model=8, d_state=4, revin=False).eval()(x), m(x))


def test_lr_hold_keeps_the_rate_then_decays():
    from apps.timeseries.train import ForecastModule

    m = ForecastModule("dlinear", {}, 24, 6, 2, 2, lr=0.01, lr_decay=0.9, lr_hold=2)
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.009, 0.0081])
