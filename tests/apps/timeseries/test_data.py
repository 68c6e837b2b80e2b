"""The Time-Series-Library protocol on the real ETTh1 file, and synthetic checks of the other rules."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from apps.timeseries.data import (auto_cycle_len, future_timestamps, load_series, metrics, split_borders, split_kind,
                                  step_index)

from tests.conftest import SHARED_DATA, shared_data

ETTH1 = SHARED_DATA / "timeseries" / "ETT" / "ETTh1.csv"


@pytest.fixture(scope="module")
def _ett():
    return shared_data("timeseries/ETT/ETTh1.csv")       # skip on a user's machine, fail under CI=true


needs_ett = pytest.mark.usefixtures("_ett")


@pytest.fixture(scope="module")
def etth1(_ett):
    return load_series(_ett, 96, 96, "M", "OT")


@needs_ett
def test_etth1_borders_and_window_counts(etth1):
    b1, b2 = etth1.borders
    assert b2 == [8640, 11520, 14400]                  # 12 / 4 / 4 months of hours
    assert b1 == [0, 8640 - 96, 11520 - 96]            # val/test start seq_len before their border
    assert len(etth1.raw) == 17420                     # the rows after 20 months are unused
    assert len(etth1.dataset("train")) == 8640 - 96 - 96 + 1
    assert len(etth1.dataset("val")) == 2880 - 96 + 1
    assert len(etth1.dataset("test")) == 2880 - 96 + 1


@needs_ett
def test_etth1_scaler_fitted_on_train_rows_only(etth1):
    raw = pd.read_csv(ETTH1).drop(columns=["date"]).to_numpy(np.float64)
    assert etth1.columns[-1] == "OT"
    np.testing.assert_allclose(etth1.scaler.mean, raw[:8640].mean(0), rtol=1e-12)
    np.testing.assert_allclose(etth1.scaler.std, raw[:8640].std(0), rtol=1e-12)   # population std
    assert not np.allclose(etth1.scaler.mean, raw[:14400].mean(0))
    tr = etth1.scaled[:8640]
    np.testing.assert_allclose(tr.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(tr.std(0), 1, atol=1e-9)


@needs_ett
def test_etth1_first_test_window_forecasts_the_row_after_the_border(etth1):
    x, y, _ = etth1.dataset("test")[0]
    np.testing.assert_allclose(x.numpy(), etth1.scaled[11520 - 96:11520], rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), etth1.scaled[11520:11520 + 96], rtol=1e-6)
    x, y, _ = etth1.dataset("test")[len(etth1.dataset("test")) - 1]
    np.testing.assert_allclose(y[-1].numpy(), etth1.scaled[14399], rtol=1e-6)


@needs_ett
def test_test_loader_keeps_last_partial_batch(etth1):
    n = 2880 - 96 + 1
    dl = etth1.loader("test", 32)
    assert len(dl) == math.ceil(n / 32)
    assert sum(x.shape[0] for x, _, _ in dl) == n
    assert len(etth1.loader("train", 32)) == (8640 - 191) // 32  # train drops its partial batch


@needs_ett
def test_modes_s_ms_and_target_order():
    s = load_series(ETTH1, 96, 24, "S", "OT")
    x, y, _ = s.dataset("train")[0]
    assert x.shape == (96, 1) and y.shape == (24, 1)
    ms = load_series(ETTH1, 96, 24, "MS", "HUFL")
    assert ms.columns[-1] == "HUFL" and ms.columns[:-1] == ["HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    x, y, _ = ms.dataset("val")[5]
    assert x.shape == (96, 7) and y.shape == (24, 1)
    np.testing.assert_allclose(y[:, 0].numpy(), ms.scaled[8640 - 96 + 5 + 96:8640 + 5 + 24, -1], rtol=1e-6)


def test_ettm_and_custom_borders():
    assert split_kind("x/ETTm2.csv") == "ETTm" and split_kind("ETTh1.csv") == "ETTh"
    assert split_kind("my.csv") == "custom"
    b1, b2 = split_borders(69680, 96, "ETTm")
    assert b2 == [34560, 46080, 57600] and b1 == [0, 34560 - 96, 46080 - 96]
    b1, b2 = split_borders(1001, 50, "custom")      # 70 / 10 / 20, val gets the remainder
    assert b2 == [700, 801, 1001] and b1 == [0, 650, 751]


def test_metrics_on_both_scales(tmp_path):
    p = tmp_path / "s.csv"
    n = 400
    pd.DataFrame({"date": pd.date_range("2020", periods=n, freq="D"),
                  "a": np.arange(n) * 2.0, "b": np.sin(np.arange(n)) * 10}).to_csv(p, index=False)
    d = load_series(p, 10, 5, "M", "b")
    pred, true = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    m = metrics(pred, true, d.scaler, d.out_cols)
    assert m["mse"] == pytest.approx(((pred - true) ** 2).mean().item())
    diff = (pred - true) * torch.as_tensor(d.scaler.std)
    assert m["mse_orig"] == pytest.approx((diff ** 2).mean().item())
    assert m["mae_orig"] == pytest.approx(diff.abs().mean().item())


def test_future_timestamps_continue_the_frequency():
    ts = pd.date_range("2021-03-01 00:00", periods=50, freq="15min")
    fut = future_timestamps(ts, 3)
    assert list(fut) == list(pd.date_range("2021-03-01 12:30", periods=3, freq="15min"))
    ms = pd.date_range("2021-01-31", periods=5, freq="ME")
    assert future_timestamps(ms, 2)[0] == pd.Timestamp("2021-06-30")


@needs_ett
def test_windows_carry_the_calendar_position_of_their_first_row(etth1):
    ts = pd.to_datetime(pd.read_csv(ETTH1)["date"])
    _, _, t = etth1.dataset("test")[7]
    row = 11520 - 96 + 7
    assert int(t) % 24 == ts[row].hour                     # ETTh1 is hourly: residue mod 24 = hour of day
    assert int(t) % 168 == ts[row].day_of_week * 24 + ts[row].hour   # counted from a Monday midnight
    x, t_last = etth1.last_window()
    assert x.shape == (1, 96, 7) and int(t_last[0]) == int(etth1.steps[len(ts) - 96])


def test_step_index_and_auto_cycle_length():
    h = pd.date_range("2021-03-01 05:00", periods=30, freq="h")
    assert list(step_index(h) % 24) == [(5 + k) % 24 for k in range(30)]
    q = pd.date_range("2021-03-01 23:30", periods=10, freq="15min")
    assert list(step_index(q) % 96)[:4] == [94, 95, 0, 1]
    d = pd.date_range("2021-03-01", periods=10, freq="D")      # a Monday
    assert list(step_index(d) % 7)[:3] == [0, 1, 2]
    m = pd.date_range("2021-01-31", periods=14, freq="ME")
    assert np.all(np.diff(step_index(m)) == 1)
    assert auto_cycle_len(h) == 24 and auto_cycle_len(q) == 96 and auto_cycle_len(d) == 7
    assert auto_cycle_len(m) == 12 and auto_cycle_len(pd.date_range("2021", periods=10, freq="7h")) == 0


def test_cycle_chosen_from_the_data():
    from apps.timeseries.data import detect_cycle

    rng = np.random.default_rng(0)
    days = pd.date_range("2000-01-01", periods=3000, freq="D")
    walk = np.cumsum(rng.normal(size=(3000, 4)), 0)          # exchange-rate-like: no weekly pattern
    assert detect_cycle(days, walk, step_index(days))[0] == 0
    weekly = walk + 2 * np.sin(2 * np.pi * np.arange(3000) / 7)[:, None]
    assert detect_cycle(days, weekly, step_index(days))[0] == 7
    hours = pd.date_range("2000-01-01", periods=2000, freq="h")
    daily = np.sin(2 * np.pi * np.arange(2000) / 24)[:, None] + 0.3 * rng.normal(size=(2000, 2))
    assert detect_cycle(hours, daily, step_index(hours))[0] == 24
    assert detect_cycle(hours, rng.normal(size=(2000, 2)), step_index(hours))[0] == 0
    steps = pd.Index(np.arange(2000))                          # integer time: searched, no calendar
    assert detect_cycle(steps, np.sin(2 * np.pi * np.arange(2000) / 13)[:, None])[0] == 13
