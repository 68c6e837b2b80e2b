"""Real-world CSVs: the Beijing PM2.5 file as published, and duplicate/gap/categorical/encoding cases
made from it; the reading options travel in the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps.timeseries.csvread import ReadOptions, read_table
from apps.timeseries.data import load_series

BEIJING = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "timeseries" / "beijing_pm25"
           / "PRSA_data_2010.1.1-2014.12.31.csv")
needs_beijing = pytest.mark.skipif(not BEIJING.is_file(), reason=f"Beijing PM2.5 file not found at {BEIJING}")
VARS = ["pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"]


@pytest.fixture(scope="module")
def raw():
    return pd.read_csv(BEIJING, keep_default_na=False, dtype=str)  # the text as it is in the file


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


@needs_beijing
def test_beijing_as_published():
    with pytest.raises(Exception, match=r"2067 missing value.*'pm2.5'.*--fill"):
        read_table(BEIJING)
    t = read_table(BEIJING, ReadOptions(fill=True))
    assert isinstance(t.time, pd.DatetimeIndex) and len(t.time) == 43824
    assert t.time[0] == pd.Timestamp("2010-01-01 00:00") and t.time[-1] == pd.Timestamp("2014-12-31 23:00")
    assert t.report["time_columns"] == ["year", "month", "day", "hour"]
    assert t.report["index_columns_dropped"] == ["No"]
    assert t.report["missing_filled"] == {"pm2.5": 2067}
    assert t.targets == VARS
    assert t.covariates == ["cbwd=NE", "cbwd=NW", "cbwd=SE", "cbwd=cv"]
    oh = t.values[t.covariates].to_numpy()
    assert set(np.unique(oh)) == {0.0, 1.0} and (oh.sum(1) == 1).all()
    assert not t.values.isna().any().any()


@needs_beijing
def test_beijing_protocol_columns_and_cycle():
    d = load_series(BEIJING, 96, 96, "M", None, fill=True)
    assert d.n_cov == 4 and d.columns[-1] == "Ir" and d.out_names == VARS
    assert d.in_cols == list(range(11)) and d.out_cols == list(range(4, 11))
    from apps.timeseries.data import detect_cycle

    assert detect_cycle(d.timestamps, d.train_rows(), d.steps)[0] == 24      # a daily cycle in the data
    d = load_series(BEIJING, 96, 96, "M", None, read=ReadOptions(fill=True, columns=["pm2.5", "TEMP"],
                                                                   categorical="drop"))
    assert d.out_names == ["pm2.5", "TEMP"] and d.n_cov == 5             # DEWP, PRES, Iws, Is, Ir
    assert d.report["categorical_dropped"] == ["cbwd"]


@needs_beijing
def test_duplicates_policies(raw, tmp_path):
    part = raw.iloc[:300]
    dup = pd.concat([part.iloc[:50], part.iloc[[49]].assign(TEMP="100"), part.iloc[50:]])
    p = _write(dup, tmp_path / "dup.csv")
    with pytest.raises(Exception, match=r"1 duplicate timestamp.*2010-01-03 01:00.*row 51.*--duplicates"):
        read_table(p, ReadOptions(fill=True))
    first = read_table(p, ReadOptions(fill=True, duplicates="first"))
    mean = read_table(p, ReadOptions(fill=True, duplicates="mean"))
    ref = read_table(_write(part, tmp_path / "ref.csv"), ReadOptions(fill=True))
    assert first.report["duplicates"] == {"rows": 1, "policy": "first"}
    pd.testing.assert_frame_equal(first.values, ref.values)
    assert len(mean.values) == 300
    assert mean.values["TEMP"].iloc[49] == pytest.approx((float(part.TEMP.iloc[49]) + 100) / 2)


@needs_beijing
def test_gaps_are_reported_and_filled_only_on_request(raw, tmp_path):
    part = raw.iloc[24:400]                       # no NA in pm2.5 here
    gappy = part.drop(part.index[[100, *range(200, 210)]])
    p = _write(gappy, tmp_path / "gap.csv")
    with pytest.raises(Exception, match=r"2 gap\(s\).*11 missing row.*longest 10 step.*--fill"):
        read_table(p)
    t = read_table(p, ReadOptions(fill=True))
    assert t.report["gaps_filled"]["gaps"] == 2 and t.report["gaps_filled"]["longest_missing_steps"] == 10
    assert len(t.values) == len(part)
    full = read_table(_write(part, tmp_path / "full.csv"))
    # the inserted rows are interpolated; the rows that were there are unchanged
    kept = np.setdiff1d(np.arange(len(part)), [100, *range(200, 210)])
    np.testing.assert_allclose(t.values[VARS].to_numpy()[kept], full.values[VARS].to_numpy()[kept])


@needs_beijing
def test_categorical_drop_and_unseen_levels(raw, tmp_path):
    part = raw.iloc[24:400]
    p = _write(part, tmp_path / "cat.csv")
    assert "cbwd" not in "".join(read_table(p, ReadOptions(drop=["cbwd"])).values.columns)
    assert read_table(p, ReadOptions(categorical="drop")).covariates == []
    # a later file with a level never seen in training: same columns, all-zero one-hot, no crash
    later = _write(part.assign(cbwd=part.cbwd.where(part.index % 7 != 0, "calm")), tmp_path / "later.csv")
    t = read_table(later, categories={"cbwd": ["NE", "NW", "SE", "cv"]})
    assert t.covariates == ["cbwd=NE", "cbwd=NW", "cbwd=SE", "cbwd=cv"]
    assert (t.values[t.covariates].sum(axis=1) == 0).sum() == int((part.index % 7 == 0).sum())


@needs_beijing
def test_mixed_line_endings_and_non_utf8_names(raw, tmp_path):
    part = raw.iloc[24:200].rename(columns={"TEMP": "Température"})
    lines = part.to_csv(index=False).splitlines()
    ends = ["\r\n", "\n", "\r"]
    data = "".join(l + ends[i % 3] for i, l in enumerate(lines)).encode("cp1252")
    p = tmp_path / "mixed.csv"
    p.write_bytes(data)
    t = read_table(p)
    assert "Température" in t.targets and len(t.values) == len(part)
    assert t.report["encoding"] == "cp1252"


def test_integer_time_steps(tmp_path):
    n = 240
    df = pd.DataFrame({"t": np.arange(0, 2 * n, 2), "a": np.sin(np.arange(n) / 3.0), "b": np.arange(n) * 0.1})
    p = _write(df, tmp_path / "steps.csv")
    t = read_table(p, ReadOptions(time_cols=["t"]))
    assert not isinstance(t.time, pd.DatetimeIndex) and t.time[1] - t.time[0] == 2
    d = load_series(p, 24, 8, "M", None, read=ReadOptions(date_col="t"))
    from apps.timeseries.data import future_timestamps

    assert list(future_timestamps(d.timestamps, 3)) == [2 * n, 2 * n + 2, 2 * n + 4]
    assert d.steps[1] - d.steps[0] == 1


@needs_beijing
def test_options_travel_in_the_checkpoint(raw, tmp_path, run_cli):
    part = raw.iloc[:1500]
    csv = _write(part, tmp_path / "bj.csv")
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--data", csv, "--model", "dlinear", "--seq-len", 48, "--pred-len", 12,
                                "--out", out, "--max-epochs", 1, "--seed", 0, "--fill", "--time-cols",
                                "year,month,day,hour", "--columns", "pm2.5,TEMP,DEWP")
    assert code == 0, err
    assert "missing_filled" in stdout and "one_hot" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["data_report"]["index_columns_dropped"] == ["No"]
    ck = out / "checkpoints" / "best.ckpt"
    # evaluate/forecast get no reading flags: the checkpoint's options read the file the same way
    code, _, err = run_cli("evaluate", "--checkpoint", ck, "--data", csv, "-o", tmp_path / "e.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["mse"] == pytest.approx(m["test"]["mse"], rel=1e-6)
    later = _write(raw.iloc[1500:1700].assign(cbwd="NW"), tmp_path / "later.csv")  # one level only
    code, _, err = run_cli("forecast", "--checkpoint", ck, "-i", later, "-o", tmp_path / "f.csv")
    assert code == 0, err
    f = pd.read_csv(tmp_path / "f.csv")
    assert list(f.columns) == ["date", "pm2.5", "TEMP", "DEWP"] and len(f) == 12
    assert f.date.iloc[0] == "2010-03-12 20:00:00"              # the hour after the file's last row
