from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apps.timeseries.cli import main
from tests.conftest import cli_runner


def make_csv(path, n=400, freq="h", n_vars=3, seed=0, start="2022-01-01"):
    """Small hourly CSV: daily sine + trend + noise per column, last column 'OT'."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    cols = {f"v{i}": np.sin(2 * np.pi * t / 24 + i) + 0.01 * t + 0.1 * rng.normal(size=n) for i in range(n_vars - 1)}
    cols["OT"] = np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n)
    df = pd.DataFrame(cols)
    df.insert(0, "date", pd.date_range(start, periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def run_cli(capsys):
    """Run ``ssm-timeseries ARGS`` in-process: returns (exit code, stdout, stderr)."""
    return cli_runner(main, capsys)
