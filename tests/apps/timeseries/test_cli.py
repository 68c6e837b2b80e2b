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
    code, _, err = run_cli("forecast", "--checkpoint", ck, "-i", csv, "-o", tmp_path / "f.csv",
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
    code, _, err = run_cli("forecast", "--checkpoint", ck, "-i", csv, "-o", tmp_path / "f.csv")
    assert code == 2 and "already exists" in err


def test_forecast_on_a_longer_file_uses_its_end(trained, run_cli, tmp_path):
    csv, out = trained
    longer = make_csv(tmp_path / "longer.csv", n=340, freq="15min")
    # the old spellings (--data, --output) still work, with one deprecation line each
    code, _, err = run_cli("forecast", "--checkpoint", out / "checkpoints" / "best.ckpt", "--data", longer,
                           "--output", tmp_path / "g.csv")
    assert code == 0, err
    assert "warning: --data is deprecated; use -i/--input" in err
    assert "warning: --output is deprecated; use -o/--out" in err
    f = pd.read_csv(tmp_path / "g.csv")
    assert pd.Timestamp(f["date"].iloc[0]) == pd.Timestamp("2022-01-01") + pd.Timedelta(minutes=15 * 340)


def test_forecast_plot_draws_every_column_with_a_title(trained, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from apps.timeseries.infer import data_for, forecast, load_checkpoint, write_forecast
    from core.engine import UserError

    csv, out = trained
    module = load_checkpoint(out)  # a run folder works as --checkpoint
    data = data_for(module, csv, for_forecast=True)
    shown = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        shown["panels"] = [ax.get_ylabel() for ax in fig.axes]
        shown["title"] = fig._suptitle.get_text() if fig._suptitle else ""
        shown["ticks"] = len(fig.axes[-1].get_xticks())
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    write_forecast(forecast(module, data), data, tmp_path / "a.csv", tmp_path / "a.png")
    assert shown["panels"] == ["v0", "v1", "OT"] and "forecast of the next 8 steps" in shown["title"]
    assert shown["ticks"] <= 10
    write_forecast(forecast(module, data), data, tmp_path / "b.csv", tmp_path / "b.png", plot_columns=["OT"])
    assert shown["panels"] == ["OT"]
    with pytest.raises(UserError, match="not forecast columns: nope"):
        write_forecast(forecast(module, data), data, tmp_path / "c.csv", tmp_path / "c.png", plot_columns=["nope"])
    assert not (tmp_path / "c.csv").exists()


def test_model_names_known_without_torch_match_the_registry():
    from apps.timeseries.cli import MODEL_NAMES
    from apps.timeseries.models import MODELS

    assert sorted(MODEL_NAMES) == sorted(MODELS)
