"""Every bad input: one line on stderr naming the file and the problem, exit 2, nothing written."""
from __future__ import annotations

import pandas as pd
import pytest

from .conftest import make_csv


def _train_args(csv, out, *extra):
    return ("train", "--data", csv, "--model", "dlinear", "--seq-len", 24, "--pred-len", 8, "--out", out,
            "--max-epochs", 1, *extra)


def _assert_clean_failure(code, err, out_dir, *words):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out_dir.exists(), "nothing may be written on bad input"


def _edit(path, fn):
    df = pd.read_csv(path)
    df = fn(df)
    df.to_csv(path, index=False)
    return path


def test_missing_values_error_by_default_then_fill(tmp_path, run_cli):
    csv = make_csv(tmp_path / "gaps.csv")
    _edit(csv, lambda d: d.assign(v0=d.v0.where(d.index != 50)))
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "gaps.csv", "missing", "v0", "--fill")
    code, out, err = run_cli(*_train_args(csv, tmp_path / "run2", "--fill"))
    assert code == 0, err
    assert (tmp_path / "run2" / "metrics.json").is_file()


def test_duplicate_timestamps(tmp_path, run_cli):
    csv = make_csv(tmp_path / "dup.csv")
    _edit(csv, lambda d: d.assign(date=d.date.where(d.index != 10, d.date[9])))
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "dup.csv", "duplicate timestamp")


def test_unsorted_timestamps(tmp_path, run_cli):
    csv = make_csv(tmp_path / "unsorted.csv")
    _edit(csv, lambda d: d.iloc[[*range(0, 30), 31, 30, *range(32, len(d))]])
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "unsorted.csv", "not sorted")


def test_stray_text_in_a_numeric_column_is_named(tmp_path, run_cli):
    # 'site' is a category (one level: dropped); 'v1' is numeric with one stray '?': an error naming it
    csv = make_csv(tmp_path / "text.csv")
    _edit(csv, lambda d: d.assign(site=["north"] * len(d), v1=d.v1.astype(str).where(d.index != 3, "?")))
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "text.csv", "non-numeric", "'v1'", "row 4")


def test_free_text_column_is_named(tmp_path, run_cli):
    csv = make_csv(tmp_path / "notes.csv")
    _edit(csv, lambda d: d.assign(note=[f"reading {i} ok" for i in range(len(d))]))
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "notes.csv", "'note'", "free text", "--drop")
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run2", "--drop", "note"))
    assert code == 0, err


def test_series_too_short(tmp_path, run_cli):
    csv = make_csv(tmp_path / "short.csv", n=60)
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "short.csv", "too short", "32")


def test_unknown_target(tmp_path, run_cli):
    csv = make_csv(tmp_path / "t.csv")
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run", "--features", "MS", "--target", "price"))
    _assert_clean_failure(code, err, tmp_path / "run", "t.csv", "'price'", "not found")


@pytest.mark.parametrize("content", ["", "just one line\n", "date,a\nnot-a-date,1\nx,2\n"])
def test_unreadable_files(tmp_path, run_cli, content):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    code, _, err = run_cli(*_train_args(csv, tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "bad.csv")


def test_missing_file_and_bad_checkpoint(tmp_path, run_cli):
    code, _, err = run_cli(*_train_args(tmp_path / "nope.csv", tmp_path / "run"))
    _assert_clean_failure(code, err, tmp_path / "run", "nope.csv", "not found")
    ck = tmp_path / "junk.ckpt"
    ck.write_bytes(b"not a checkpoint")
    csv = make_csv(tmp_path / "ok.csv")
    code, _, err = run_cli("forecast", "--checkpoint", ck, "-i", csv, "-o", tmp_path / "f.csv")
    assert code == 2 and "junk.ckpt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.csv").exists()
