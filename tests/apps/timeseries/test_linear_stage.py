"""Two-stage training: the linear path first, then the SSM branch on its residual."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

import pytest
import torch

from apps.timeseries.models import (Chimera, DLinear, SpaceTime, build_model, linear_path, set_linear_only,
                                    zero_branch_output)
from apps.timeseries.train import ForecastModule, resolve_config, train
from core.engine import UserError

from .conftest import make_csv


@pytest.mark.parametrize("cls", [SpaceTime, Chimera])
def test_linear_only_is_the_skip_path_and_equals_a_zeroed_branch(cls):
    torch.manual_seed(0)
    m = cls(24, 6, 3, 3, d_model=8, d_state=2, revin=False).eval()
    x = torch.randn(2, 24, 3)
    full = m(x)
    set_linear_only(m, True)
    lin = m(x)
    torch.testing.assert_close(lin, m.skip(x.transpose(1, 2)).transpose(1, 2))
    assert not torch.allclose(lin, full)
    set_linear_only(m, False)
    zero_branch_output(m)
    torch.testing.assert_close(m(x), lin)


def test_linear_path_is_skip_plus_cycle_and_needs_a_skip():
    m = build_model("spacetime", 24, 6, 3, 3, cycle_len=4, d_model=8, d_state=2)
    names = {id(p) for p in linear_path(m)}
    assert names == {id(m.backbone.skip.weight), id(m.backbone.skip.bias), id(m.Q)}
    for bad in (DLinear(24, 6, 3, 3), SpaceTime(24, 6, 3, 3, d_model=8, linear_skip=False)):
        with pytest.raises(ValueError, match="no linear skip path"):
            linear_path(bad)


@pytest.mark.parametrize("stage", ["linear", "residual"])
def test_each_stage_trains_only_its_own_parameters(stage):
    torch.manual_seed(0)
    mod = ForecastModule("spacetime", dict(d_model=8, d_state=2, dropout=0.0), 24, 6, 3, 3, lr=0.05,
                         cycle_len=4, stage=stage)
    lin = {id(p) for p in linear_path(mod.model)}
    before = {n: p.detach().clone() for n, p in mod.model.named_parameters()}
    opt = mod.configure_optimizers()["optimizer"]
    x, y, t = torch.randn(4, 24, 3), torch.randn(4, 6, 3), torch.arange(4)
    for _ in range(2):
        opt.zero_grad()
        mod._loss(mod(x, t), y).backward()
        opt.step()
    for n, p in mod.model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        trains = (id(p) in lin) == (stage == "linear")
        assert p.requires_grad == trains, n
        if not trains:
            assert not moved, f"{n} changed in stage {stage}"
    assert any(not torch.equal(before[n], p.detach()) for n, p in mod.model.named_parameters()
               if (id(p) in lin) == (stage == "linear"))


def test_linear_stage_config_is_checked():
    assert resolve_config("spacetime", overrides={"linear_stage": {"enabled": True}})["linear_stage"]["lr"] == 0.01
    with pytest.raises(UserError, match="linear_stage needs"):
        resolve_config("dlinear", overrides={"linear_stage": {"enabled": True}})
    with pytest.raises(UserError, match="linear_stage needs"):
        resolve_config("chimera", overrides={"linear_stage": {"enabled": True}, "model": {"linear_skip": False}})
    with pytest.raises(UserError, match="unknown config key 'linear_stage.epochs'; did you mean linear_stage.max_epochs"):
        resolve_config("spacetime", overrides={"linear_stage": {"epochs": 3}})
    with pytest.raises(UserError, match="linear_stage.loss"):
        resolve_config("spacetime", overrides={"linear_stage": {"loss": "l3"}})


@pytest.mark.parametrize("branch_epochs", [2, 0])
def test_two_stage_training_keeps_the_branch_only_if_it_helps(tmp_path, branch_epochs):
    from apps.timeseries.data import load_series
    from apps.timeseries.infer import evaluate_split
    from core.engine import load_module

    csv = make_csv(tmp_path / "d.csv", n=400)
    over = {"linear_stage": {"enabled": True, "max_epochs": 3}, "model": {"d_model": 8, "d_state": 2},
            "min_steps_per_epoch": 0}
    # max_epochs 0: the branch is never trained, so it cannot beat stage 1 and must be dropped
    r = train(str(csv), "spacetime", 32, 8, str(tmp_path / "run"), overrides=over, max_epochs=branch_epochs,
              seed=0, progress=False)
    s1 = r["linear_stage"]
    assert s1["epochs"] >= 1 and r["checkpoint"].endswith("checkpoints/best.ckpt")
    assert (tmp_path / "run" / "linear_stage" / "checkpoints" / "best.ckpt").is_file()
    mod = load_module(r["checkpoint"], ForecastModule)
    data = load_series(str(csv), 32, 8)
    assert evaluate_split(mod, data, "test")["mse"] == pytest.approx(r["test"]["mse"], rel=1e-6)
    if branch_epochs == 0:
        assert s1["branch_kept"] is False and mod.hparams.stage == "linear"
        assert r["val"]["mse"] == pytest.approx(s1["val_mse"], rel=1e-5)
    else:
        assert mod.hparams.stage == ("residual" if s1["branch_kept"] else "linear")
        assert r["val"]["mse"] <= s1["val_mse"] * (1 + 1e-5)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["linear_stage"]["branch_kept"] == s1["branch_kept"]


def test_cli_two_stage_reports_the_linear_path(tmp_path, run_cli):
    csv = make_csv(tmp_path / "d.csv", n=300)
    code, out, err = run_cli("train", "--data", csv, "--model", "chimera", "--seq-len", 24, "--pred-len", 6,
                             "--out", tmp_path / "run", "--max-epochs", 1, "--seed", 0,
                             "--set", "linear_stage.enabled=true", "--set", "linear_stage.max_epochs=2",
                             "--set", "min_steps_per_epoch=0",
                             "--set", "model.d_model=8", "--set", "model.d_state=2")
    assert code == 0, err
    assert "linear path alone: test MSE" in out
    code, out, err = run_cli("train", "--data", csv, "--model", "dlinear", "--out", tmp_path / "run2",
                             "--set", "linear_stage.enabled=true")
    assert code == 2 and "linear_stage needs" in err and not (tmp_path / "run2").exists()


def test_model_specific_defaults():
    d, st = resolve_config("dlinear"), resolve_config("spacetime")
    assert d["lr"] == 5e-3 and d["loss"] == "mse" and not d["linear_stage"]["enabled"]
    assert st["linear_stage"]["enabled"] and st["loss"] == "mse" and st["lr"] == 1e-3
    assert not resolve_config("chimera", overrides={"linear_stage": {"enabled": False}})["linear_stage"]["enabled"]


def test_short_series_schedule_counts_groups_of_passes(tmp_path):
    # a weekly series as short as TSLib's illness set: ~7 steps per pass -> passes grouped
    n = 300
    t = np.arange(n)
    df = pd.DataFrame({"date": pd.date_range("2002-01-06", periods=n, freq="7D").strftime("%Y-%m-%d"),
                       "a": np.sin(2 * np.pi * t / 52) + 0.1 * t / n, "OT": np.cos(2 * np.pi * t / 52)})
    csv = tmp_path / "weekly.csv"
    df.to_csv(csv, index=False)
    r = train(str(csv), "dlinear", 36, 18, str(tmp_path / "run"), seed=0, progress=False,
              overrides={"max_epochs": 2, "patience": 100})
    steps = (int(n * 0.7) - 36 - 18 + 1) // 32
    assert r["epoch_group"] == -(-100 // steps) and r["epochs"] == 2 * r["epoch_group"]
