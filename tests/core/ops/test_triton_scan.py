"""Our Triton kernels: the cases in triton_cases.py, run by the Triton interpreter in a subprocess.

TRITON_INTERPRET=1 has to be set before triton is imported (its standard
library is jitted at import), which a pytest worker that already imported
core.ops cannot do; so the cases run in a fresh interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from core.ops import available_backends, triton_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def test_registered_and_runs_on_cpu_only_when_interpreting(monkeypatch):
    assert "triton" in available_backends("selective_scan")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_scan.can_run(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_scan.can_run(torch.zeros(1))


@pytest.mark.triton
def test_triton_kernels_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           str(Path(__file__).with_name("triton_cases.py"))]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail, tail
