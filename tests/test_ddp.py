"""Training works from our CLIs with ``--accelerator cpu --devices 2 --strategy ddp`` (gloo): the
relaunched rank finds the run folder rank 0 made without complaint, and only rank 0 writes (one
checkpoint folder, one metrics file). A few steps on tiny synthetic data per app."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max-epochs", "1", "--seed", "0"]


def _train(app: str, args, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", SSM_NO_PROGRESS="1", PYTHONPATH=str(ROOT),
               MASTER_PORT=str(29500 + os.getpid() % 1000))
    r = subprocess.run([sys.executable, "-m", f"apps.{app}.cli", "train", *map(str, args), *DDP],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not empty" not in r.stderr
    return r


def _one_of_each(run: Path) -> dict:
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) in (["best.ckpt", "last.ckpt"], ["last.ckpt"])
    assert len(list(run.rglob("metrics.json"))) == 1
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]  # no temporary file left
    return json.loads((run / "metrics.json").read_text())


def test_ecg_ddp(tmp_path):
    from apps.ecg.demo import make_dataset

    make_dataset(tmp_path / "recs", 24, seed=0, fs_choices=(250.0,), duration=6.0)
    run = tmp_path / "run"
    _train("ecg", ["--data", tmp_path / "recs", "-o", run, "--preset", "tiny", "--fs", "100", "--window-s", "4",
                   "--batch-size", "4"], tmp_path)
    m = _one_of_each(run)
    assert m["n_val"] == 5  # thresholds and metrics over the whole validation set, on rank 0
    assert len(m["validation"]["per_class"]["threshold"]) == 26


@pytest.mark.parametrize("app", ["medseg", "timeseries", "recsys", "asr", "graph"])
def test_every_app_trains_under_ddp(app, tmp_path):
    from tests.tiny_runs import recipe

    train, _ = recipe(app, tmp_path / "data")
    run = tmp_path / "run"
    r = _train(app, [*train, "-o", run], tmp_path)
    m = _one_of_each(run)
    assert m, r.stdout
    if app == "timeseries":  # rank 0 scored every window of the whole splits (400 rows: 70/10/20)
        assert (m["val"]["windows"], m["test"]["windows"]) == (40 - 8 + 1, 80 - 8 + 1)
    if app == "graph":
        assert (m["val"]["n"], m["test"]["n"]) == (m["split_sizes"]["val"], m["split_sizes"]["test"])
