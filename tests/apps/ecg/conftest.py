"""Shared fixtures: the 50 real Challenge records, a tiny model trained on them, and helpers that
write broken copies to tmp_path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tests.conftest import cli_runner, shared_data



@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return shared_data("ecg/cinc2021-sample", "E07500.hea")


TRAIN_ARGS = ["--preset", "tiny", "--fs", "250", "--window-s", "4", "--batch-size", "8", "--max-epochs", "2",
              "--seed", "0", "--accelerator", "cpu"]


@pytest.fixture(scope="session")
def trained(sample_dir, tmp_path_factory) -> Path:
    """Run directory of a tiny model trained for 2 epochs on the sample records (shared: ~10 s)."""
    from apps.ecg.cli import main

    out = tmp_path_factory.mktemp("ecg") / "run"
    rc = main(["train", "--data", str(sample_dir), "--out", str(out)] + TRAIN_ARGS)
    assert rc == 0
    return out


def copy_record(src_dir: Path, rec: str, dst_dir: Path, name: str | None = None, edit=None, val=None) -> Path:
    """Copy ``rec`` to ``dst_dir/name``; ``edit(lines) -> lines`` changes the header text,
    ``val`` replaces the signal matrix. Returns the new record path (no extension)."""
    name = name or rec
    dst_dir.mkdir(parents=True, exist_ok=True)
    lines = (src_dir / f"{rec}.hea").read_text().splitlines()
    lines = [l.replace(f"{rec}.mat", f"{name}.mat") for l in lines]
    lines[0] = lines[0].replace(rec, name, 1)
    if edit is not None:
        lines = edit(lines)
    (dst_dir / f"{name}.hea").write_text("\n".join(lines) + "\n")
    if val is None:
        shutil.copy(src_dir / f"{rec}.mat", dst_dir / f"{name}.mat")
    else:
        scipy.io.savemat(str(dst_dir / f"{name}.mat"), {"val": val}, format="4")
    return dst_dir / name


def load_val(src_dir: Path, rec: str) -> np.ndarray:
    return scipy.io.loadmat(str(src_dir / f"{rec}.mat"))["val"]


def run(argv, capsys):
    """``ssm-ecg ARGV`` in this process: (exit code, stdout, stderr)."""
    from apps.ecg.cli import main

    return cli_runner(main, capsys)(*argv)
