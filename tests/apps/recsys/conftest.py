from __future__ import annotations


import pytest

from apps.recsys.cli import main
from tests.conftest import cli_runner, shared_data


@pytest.fixture(scope="session")
def ml100k():
    return shared_data("recsys/ml-100k/ml-100k.inter")


@pytest.fixture(scope="session")
def ml100k_df(ml100k):
    from apps.recsys.data import read_interactions

    return read_interactions(ml100k)[0]


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    from apps.recsys.demo import synthetic_log

    return synthetic_log(tmp_path_factory.mktemp("log") / "demo.inter", n_users=60, n_items=48, length=20)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth):
    """A tiny causal TiM4Rec trained for 2 epochs through the CLI (shared by the serving tests)."""
    out = tmp_path_factory.mktemp("run") / "tim"
    code = main(["train", "--data", str(synth), "--model", "tim4rec", "--out", str(out), "--max-epochs", "2",
                 "--seed", "0", "--set", "model.d_model=16", "--set", "model.d_state=8", "--set", "model.headdim=8",
                 "--batch-size", "16"])
    assert code == 0
    return out


@pytest.fixture
def run_cli(capsys):
    """Run ``ssm-recsys ARGS`` in-process: returns (exit code, stdout, stderr)."""
    return cli_runner(main, capsys)
