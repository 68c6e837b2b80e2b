"""SIGTERM during training: exit 143, 'interrupted' on stderr, last.ckpt kept, --resume finishes the run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import make_csv

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_exits_nonzero_keeps_last_ckpt_and_resume_finishes(tmp_path, run_cli):
    csv = make_csv(tmp_path / "data.csv", n=500)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "apps.timeseries.cli", "train", "--data", str(csv), "--model", "dlinear",
           "--seq-len", "48", "--pred-len", "12", "--out", str(out), "--max-epochs", "500", "--seed", "0",
           "--batch-size", "8", "--set", "patience=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600                     # a loaded machine can take minutes to start
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if not last.is_file():
        proc.kill()
    assert proc.poll() is None and last.is_file(), proc.communicate()
    time.sleep(0.5)                                  # inside a later epoch
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "--resume" in stderr
    assert last.is_file() and not (out / "metrics.json").exists()
    info = json.loads((out / "interrupted.json").read_text())
    assert info["exit_code"] == 143 and info["signal"] == signal.SIGTERM
    done = info["epoch"]
    # resume (in-process): continues from last.ckpt up to the new epoch limit, writes the metrics
    code, stdout, err = run_cli("train", "--resume", out, "--max-epochs", done + 2)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == done + 2 and m["model"] == "dlinear" and m["seq_len"] == 48
    assert not (out / "interrupted.json").exists()
    # the epochs logged before the interruption are kept beside the resumed run's
    before = (out / "logs" / "metrics.part1.csv").read_text().splitlines()
    after = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert len(before) > 1 and len(after) > 1


def test_resume_needs_a_run(tmp_path, run_cli):
    code, _, err = run_cli("train", "--resume", tmp_path / "nothing")
    assert code == 2 and "cannot resume" in err
    code, _, err = run_cli("train", "--model", "dlinear")
    assert code == 2 and "--data" in err and "--resume" in err
