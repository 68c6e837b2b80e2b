"""``evaluate`` and ``predict`` stream records (header scan, read on demand, ``--num-workers``
read-ahead): the same metrics JSON and output files as reading everything into memory first,
bad records handled as before, and only a few signals held at a time."""
from __future__ import annotations

import json
import weakref

import numpy as np
import pytest

from apps.ecg.infer import load_checkpoint
from core.engine import resolve_checkpoint as _checkpoint
from apps.ecg.data import find_records, load_records
from apps.ecg.infer import evaluate_records, predict_records, predict_signals
from apps.ecg.labels import LabelSpace
from apps.ecg.metrics import evaluate
from core.engine import write_json

from .conftest import copy_record, load_val, run


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("SSM_NO_PROGRESS", "1")  # stderr then holds only the lines under test


def in_memory_json(run_dir, data, out) -> str:
    """The metrics JSON of ``evaluate`` as it was before streaming: every record read and
    preprocessed into memory (``load_records``), then classified in one call."""
    ckpt = _checkpoint(str(run_dir))
    module = load_checkpoint(str(ckpt))
    hp = module.hparams
    space = LabelSpace(list(hp.classes))
    loaded, _ = load_records(find_records(data), tuple(hp.leads), float(hp.fs), space, tuple(hp.band_hz))
    probs, _ = predict_signals(module, loaded.signals, batch_size=32)
    m = evaluate(space, loaded.labels, probs, module.thresholds.numpy())
    m["leads_used"] = {"12 leads": len(loaded.ids)} if loaded.ids else {}  # every record had all 12
    m["checkpoint"] = str(ckpt)
    m["skipped"] = loaded.failures
    m["records"] = loaded.ids
    write_json(out, m)
    return out.read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_evaluate_writes_the_in_memory_metrics_json(trained, sample_dir, tmp_path, capsys, workers):
    ref = in_memory_json(trained, [sample_dir], tmp_path / "ref.json")
    out = tmp_path / "eval.json"
    rc, stdout, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(sample_dir), "--out", str(out),
                           "--num-workers", str(workers)], capsys)
    assert rc == 0 and err == "" and "Challenge score" in stdout
    assert out.read_text() == ref  # byte for byte: metrics, per-class values, record list
    m = json.loads(ref)
    assert m["n_records"] == 50 and len(m["records"]) == 50 and m["skipped"] == []


def _bad_set(sample_dir, src):
    """Six good records and five bad ones, interleaved by name; two fail the header scan, three
    only when their signal is read. Returns the bad names in input (sorted) order."""
    copy_record(sample_dir, "E07500", src, name="A_CUT")
    (src / "A_CUT.mat").write_bytes((src / "A_CUT.mat").read_bytes()[:3000])
    copy_record(sample_dir, "E07501", src, name="B_BADFS", edit=lambda l: [l[0].replace(" 500 ", " 50 ", 1)] + l[1:])
    for rec in ("E07500", "E07501", "E07502", "E07503", "E07504", "E07505"):
        copy_record(sample_dir, rec, src)
    val = load_val(sample_dir, "E07506").astype(np.float64)
    val[3, 40:50] = np.nan
    copy_record(sample_dir, "E07506", src, name="F_NAN", val=val)
    copy_record(sample_dir, "E07507", src, name="G_LEAD", edit=lambda l: l[:12] + [l[12].replace(" V6", " V9")] + l[13:])
    copy_record(sample_dir, "E07508", src, name="H_NOMAT")
    (src / "H_NOMAT.mat").unlink()
    return ["A_CUT", "B_BADFS", "F_NAN", "G_LEAD", "H_NOMAT"]


def test_evaluate_lists_bad_records_goes_on_and_exits_2(trained, sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    bad = _bad_set(sample_dir, src)
    ref = in_memory_json(trained, [src], tmp_path / "ref.json")
    out = tmp_path / "eval" / "m.json"
    out.parent.mkdir()
    rc, stdout, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(src), "--out", str(out)], capsys)
    assert rc == 2 and "Challenge score" in stdout
    lines = err.splitlines()
    assert len(lines) == 6 and all(l.startswith("error: ") for l in lines[:5])
    assert lines[5].startswith("5 of 11 records failed; the other 6 written to")  # one summary line
    for name, line in zip(bad, lines):  # one line each, naming the record, in input order
        assert f"/{name}" in line
    assert "unsupported sampling rate" in lines[1] and "non-finite" in lines[2]
    assert "unknown lead name" in lines[3] and "missing" in lines[4]
    m = json.loads(out.read_text())
    assert m["records"] == ["E07500", "E07501", "E07502", "E07503", "E07504", "E07505"] and m["n_records"] == 6
    assert [l[len("error: "):] for l in lines[:5]] == m["skipped"]
    assert out.read_text() == ref  # the same skipped lines and metrics as the in-memory path
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # written atomically, no temporary left
    # an existing result is kept without --overwrite; with it, read-ahead workers give the same file
    rc, _, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(src), "--out", str(out)], capsys)
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    rc, _, err2 = run(["evaluate", "--checkpoint", str(trained), "--data", str(src), "--out", str(out),
                       "--num-workers", "2", "--overwrite"], capsys)
    assert rc == 2 and err2 == "\n".join(lines) + "\n" and out.read_text() == ref


def test_evaluate_with_no_usable_record_fails_with_one_line(trained, sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    _bad_set(sample_dir, src)
    for rec in ("E07500", "E07501", "E07502", "E07503", "E07504", "E07505"):
        for ext in (".hea", ".mat"):
            (src / f"{rec}{ext}").unlink()
    out = tmp_path / "m.json"
    rc, _, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(src), "--out", str(out)], capsys)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 6 and lines[-1] == f"error: {src}: no usable record"
    assert not out.exists()


def test_predict_with_read_ahead_writes_the_same_files(trained, sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    _bad_set(sample_dir, src)
    outs, errs = [], []
    for workers in ("0", "2"):
        out = tmp_path / f"pred{workers}"
        rc, _, err = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(out),
                          "--num-workers", workers], capsys)
        lines = err.splitlines()
        assert rc == 2 and len(lines) == 6 and all(l.startswith("error: ") for l in lines[:5])
        assert lines[5] == "5 of 11 records failed; the other 6 written"
        outs.append({p.name: p.read_text() for p in out.iterdir()})
        errs.append(err)
    assert outs[0] == outs[1] and errs[0] == errs[1]
    assert sorted(outs[0]) == sorted([f"E0750{i}.csv" for i in range(6)] + ["failures.txt", "summary.csv"])
    assert len(outs[0]["failures.txt"].splitlines()) == 5


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_only_a_few_signals_are_alive_at_a_time(trained, sample_dir, tmp_path, monkeypatch, command):
    import apps.ecg.data as data_mod
    import apps.ecg.dataset as dataset_mod

    refs, alive = [], []
    real = data_mod.preprocess

    def tracked(*a, **k):
        x = real(*a, **k)
        refs.append(weakref.ref(x))
        alive.append(sum(r() is not None for r in refs))
        return x

    monkeypatch.setattr(data_mod, "preprocess", tracked)
    monkeypatch.setattr(dataset_mod, "preprocess", tracked)
    module, paths = load_checkpoint(str(trained)), find_records([sample_dir])
    if command == "evaluate":
        _, ids, _ = evaluate_records(module, paths, show_progress=False)
    else:
        ids = predict_records(module, paths, tmp_path / "p", show_progress=False).written
    assert len(ids) >= 50 and len(alive) == 50 and max(alive) <= 2
    # the probe sees retention: reading everything first keeps all 50 alive
    refs.clear()
    alive.clear()
    kept, _ = load_records(paths, tuple(module.hparams.leads), float(module.hparams.fs))
    assert max(alive) == 50 and len(kept.signals) == 50
