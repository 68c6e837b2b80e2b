"""train -> evaluate -> forecast through the console script on a small CSV."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from .conftest import make_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from apps.timeseries.cli import main

    d = tmp_path_factory.mktemp("ts")
    csv = make_csv(d / "data.csv", n=300, freq="15min")
    out = d / "run"
    main(["train", "--data", str(csv), "--model", "chimera", "--seq-len", "32", "--pred-len", "8",
          "--out", str(out), "--max-epochs", "2", "--seed", "0", "--set", "model.d_model=8",
          "--set", "model.d_state=2", "--set", "min_steps_per_epoch=0", "--set", "linear_stage.max_epochs=2"])
    return csv, out


def test_train_writes_run(trained):
    csv, out = trained
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert m["test"]["windows"] == 60 - 32 - 8 + 1 + 32     # test part = 20% of rows + seq_len
    assert m["seed"] == 0 and m["model"] == "chimera"


def test_evaluate_matches_training_metrics(trained, run_cli, tmp_path):
    csv, out = trained
    code, stdout, err = run_cli("evaluate", "--checkpoint", out / "checkpoints" / "best.ckpt", "--data", csv,
                                "-o", tmp_path / "m.json")
    assert code == 0, err
    res = json.loads((tmp_path / "m.json").read_text())
    ref = json.loads((out / "metrics.json").read_text())["test"]
    assert res["mse"] == pytest.approx(ref["mse"], rel=1e-6)
    assert res["mae_orig"] == pytest.approx(ref["mae_orig"], rel=1e-6)


def test_forecast_continues_timestamps_on_original_scale(trained, run_cli, tmp_path):
    csv, out = trained
    ck = out / "checkpoints" / "best.ckpt"
    code, _, err = run_cli("forecast", "--checkpoint", ck, "--data", csv, "-o", tmp_path / "f.csv",
                           "--plot", tmp_path / "f.png")
    assert code == 0, err
    f = pd.read_csv(tmp_path / "f.csv")
    src = pd.read_csv(csv)
    last = pd.Timestamp(src["date"].iloc[-1])
    assert list(pd.to_datetime(f["date"])) == [last + pd.Timedelta(minutes=15 * (k + 1)) for k in range(8)]
    assert list(f.columns) == ["date", "v0", "v1", "OT"]
    # original scale: the trend column v0 sits near its recent level, not near 0
    assert abs(f["v0"].mean() - src["v0"].iloc[-32:].mean()) < 2.0 and src["v0"].iloc[-32:].mean() > 2.5
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    # no overwrite without --overwrite
    code, _, err = run_cli("forecast", "--checkpoint", ck, "--data", csv, "-o", tmp_path / "f.csv")
    assert code == 2 and "already exists" in err


def test_forecast_on_a_longer_file_uses_its_end(trained, run_cli, tmp_path):
    csv, out = trained
    longer = make_csv(tmp_path / "longer.csv", n=340, freq="15min")
    code, _, err = run_cli("forecast", "--checkpoint", out / "checkpoints" / "best.ckpt", "--data", longer,
                           "-o", tmp_path / "g.csv")
    assert code == 0, err
    f = pd.read_csv(tmp_path / "g.csv")
    assert pd.Timestamp(f["date"].iloc[0]) == pd.Timestamp("2022-01-01") + pd.Timedelta(minutes=15 * 340)
