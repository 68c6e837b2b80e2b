"""Shared fixtures: real data folder, tiny TU folders, one tiny trained GMN run per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import cli_runner

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "graph"


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory):
    # PE/SE cache inside the test's temp dir, never the user's home
    os.environ["SSM_GRAPH_CACHE"] = str(tmp_path_factory.mktemp("graph_cache"))
    os.environ["SSM_NO_PROGRESS"] = "1"


def need(path: Path) -> Path:
    """Real data under ../shared/data/graph: skipped on a user's machine, a failure under CI=true."""
    from tests.conftest import shared_data

    return shared_data(f"graph/{path.name}")


@pytest.fixture(scope="session")
def tiny_tu(tmp_path_factory) -> Path:
    from apps.graph.demo import synthetic_graphs, write_tu

    return write_tu(synthetic_graphs(48, seed=3), tmp_path_factory.mktemp("tiny_tu"), "TINY")


TINY_GMN = dict(layer="gmn", d_model=16, n_layers=1, walk_lengths=[3, 2], num_walks=1, d_state=4, expand=1,
                rw_steps=4, lap_k=2)


@pytest.fixture(scope="session")
def tiny_run(tiny_tu, tmp_path_factory) -> Path:
    """A GMN trained for 2 epochs on ``tiny_tu`` (run folder)."""
    from apps.graph.train import train

    out = tmp_path_factory.mktemp("run") / "gmn"
    train(str(tiny_tu), str(out), task="classification", overrides=dict(model=TINY_GMN, batch_size=16),
          max_epochs=2, progress=False)
    return out


@pytest.fixture
def run_cli(capsys):
    """Run ``ssm-graph ARGS`` in-process: (exit code, stdout, stderr)."""
    from apps.graph.cli import main
    return cli_runner(main, capsys)


def write_tu_files(folder: Path, name: str, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, lines in files.items():
        (folder / f"{name}_{key}.txt").write_text("\n".join(lines) + "\n")
    return folder


def two_triangles_and_path():
    """Graph 1: triangle, graph 2: path of 3, graph 3: triangle (TU lines, 1-based)."""
    A = ["1, 2", "2, 1", "2, 3", "3, 2", "1, 3", "3, 1",
         "4, 5", "5, 4", "5, 6", "6, 5",
         "7, 8", "8, 7", "8, 9", "9, 8", "7, 9", "9, 7"]
    return {"A": A, "graph_indicator": ["1"] * 3 + ["2"] * 3 + ["3"] * 3,
            "graph_labels": ["1", "-1", "1"], "node_labels": ["0", "1", "2"] * 3}
