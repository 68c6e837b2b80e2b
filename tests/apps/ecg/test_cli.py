"""``ssm-ecg`` end to end on the real sample records: train, evaluate, predict, bad input, demo."""
from __future__ import annotations

import json

import numpy as np

from apps.ecg.infer import load_checkpoint
from apps.ecg.demo import synth_ecg, write_challenge_record
from apps.ecg.infer import read_challenge_csv
from apps.ecg.labels import LabelSpace

from .conftest import TRAIN_ARGS, copy_record, load_val, run


def test_train_writes_checkpoint_metrics_and_logs(trained):
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    assert (trained / "logs" / "metrics.csv").is_file()
    m = json.loads((trained / "metrics.json").read_text())
    assert m["n_records"] == 50 and m["n_val"] == 10 and m["n_skipped"] == 0
    assert 0 <= m["validation"]["macro_auroc"] <= 1
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["arch"] == "mamba" and cfg["fs"] == 250


def test_checkpoint_alone_holds_config_classes_and_thresholds(trained):
    module = load_checkpoint(str(trained / "checkpoints" / "best.ckpt"))
    assert list(module.hparams.classes) == LabelSpace.scored().classes
    assert tuple(module.hparams.leads)[:2] == ("I", "II") and module.hparams.fs == 250
    m = json.loads((trained / "metrics.json").read_text())
    np.testing.assert_allclose(module.thresholds.numpy(), m["validation"]["per_class"]["threshold"])


def test_train_refuses_non_empty_run_dir(trained, sample_dir, capsys):
    rc, _, err = run(["train", "--data", str(sample_dir), "--out", str(trained)] + TRAIN_ARGS, capsys)
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_evaluate_prints_table_and_writes_json(trained, sample_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc, stdout, _ = run(["evaluate", "--checkpoint", str(trained), "--data", str(sample_dir), "--out", str(out)],
                        capsys)
    assert rc == 0 and "Challenge score" in stdout and "NSR" in stdout
    m = json.loads(out.read_text())
    assert m["n_records"] == 50 and len(m["per_class"]["auroc"]) == 26


def test_predict_writes_challenge_files(trained, sample_dir, tmp_path, capsys):
    out = tmp_path / "pred"
    rc, stdout, _ = run(["predict", "--checkpoint", str(trained / "checkpoints" / "best.ckpt"), "-i",
                         str(sample_dir / "E07500.hea"), str(sample_dir / "HR06000.mat"), str(sample_dir / "JS20000"),
                         "-o", str(out)], capsys)
    assert rc == 0, stdout
    module = load_checkpoint(str(trained))
    th = module.thresholds.numpy()
    for rid in ("E07500", "HR06000", "JS20000"):
        lines = (out / f"{rid}.csv").read_text().splitlines()
        assert len(lines) == 4 and lines[0] == f"#{rid}"
        rid2, codes, b, p = read_challenge_csv(out / f"{rid}.csv")
        assert codes == LabelSpace.scored().codes and len(codes) == 26
        assert set(b.tolist()) <= {0, 1} and ((p >= 0) & (p <= 1)).all()
        np.testing.assert_array_equal(b, (p >= th - 5e-5).astype(int))
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("record_id,duration_s,labels,AF,AFL") and len(summary) == 4
    assert not list(out.glob(".*"))  # no temporary files left


def test_predict_goes_on_after_bad_records(trained, sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    copy_record(sample_dir, "E07500", src)
    copy_record(sample_dir, "E07501", src)
    copy_record(sample_dir, "E07502", src, name="NOMAT")
    (src / "NOMAT.mat").unlink()
    val = load_val(sample_dir, "E07503").astype(np.float64)
    val[0, :5] = np.inf
    copy_record(sample_dir, "E07503", src, name="INF", val=val)
    out = tmp_path / "pred"
    rc, stdout, err = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(out)], capsys)
    assert rc == 2
    assert "NOMAT" in err and "missing" in err and "INF" in err and "non-finite" in err
    assert sorted(p.name for p in out.glob("*.csv")) == ["E07500.csv", "E07501.csv", "summary.csv"]
    assert len((out / "failures.txt").read_text().splitlines()) == 2
    # existing outputs are not overwritten without --overwrite
    before = (out / "E07500.csv").read_text()
    rc, _, err = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(out)], capsys)
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (out / "E07500.csv").read_text() == before
    rc, _, _ = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(out), "--overwrite"], capsys)
    assert rc == 2 and (out / "E07500.csv").is_file()


def test_long_recording_gets_a_timeline(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "long"
    write_challenge_record(src, "LONG1", synth_ecg(rng, ["AF"], 257.0, 75.0), 257.0, ["164889003"])
    out = tmp_path / "pred"
    rc, _, _ = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(out)], capsys)
    assert rc == 0
    tl = (out / "LONG1_timeline.csv").read_text().splitlines()
    assert tl[0].startswith("start_s,end_s,labels,AF")
    assert len(tl) - 1 == 19  # 75 s in 4-s windows: 18 full + one aligned to the end
    assert tl[-1].split(",")[1] == "75.00"


def test_bad_checkpoint_and_bad_args(tmp_path, sample_dir, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    rc, _, err = run(["predict", "--checkpoint", str(bad), "-i", str(sample_dir), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "bad.ckpt" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "nope" in err
    rc, _, err = run(["train", "--data", str(sample_dir), "--out", str(tmp_path / "r2"), "--leads", "5"], capsys)
    assert rc == 2 and "--leads" in err


def test_demo_records_match_the_challenge_format(tmp_path):
    import wfdb

    from apps.ecg.data import read_record

    rng = np.random.default_rng(1)
    sig = synth_ecg(rng, ["NSR", "IAVB"], 500.0, 10.0)
    p = write_challenge_record(tmp_path, "D0001", sig, 500.0, ["426783006", "270492004"])
    head = (tmp_path / "D0001.hea").read_text().splitlines()
    assert head[0] == "D0001 12 500 5000"
    assert head[1].startswith("D0001.mat 16x1+24 1000.0(0)/mV 16 0 ") and head[1].endswith(" I")
    assert "# Dx: 426783006,270492004" in head or "#Dx: 426783006,270492004" in head
    r = read_record(p)
    np.testing.assert_allclose(r.signal, sig, atol=6e-4)
    w = wfdb.rdrecord(str(p))  # the wfdb package reads it too
    np.testing.assert_allclose(w.p_signal.T, r.signal, atol=1e-6)


def test_demo_runs_end_to_end_small(tmp_path):
    from apps.ecg.demo import run_demo

    rc = run_demo(tmp_path / "demo", seed=0, n_train=16, max_epochs=1, max_time="00:00:00:30")
    assert rc == 0
    pred = tmp_path / "demo" / "predictions"
    assert (pred / "summary.csv").is_file() and (pred / "N0006_timeline.csv").is_file()
    assert (tmp_path / "demo" / "evaluation.json").is_file()
