"""Suite-wide settings, and :func:`shared_data` for tests that read the real data in ../shared/data."""
import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist each worker already owns a core: more torch threads per
# worker oversubscribe the CPU and slow every test several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def under_ci() -> bool:
    """True when ``CI`` is set to true/1/yes (GitHub Actions, GitLab and most CI systems set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def shared_data(relpath: str, *required: str) -> Path:
    """``../shared/data/<relpath>`` (resolved) for a test that needs the real data.

    When it (or any of ``required``, paths inside it) is missing the test is skipped on a user's
    machine but FAILS under ``CI=true``, so CI can never pass by skipping the real-data tests.
    """
    root = SHARED_DATA / relpath
    for p in [root] + [root / r for r in required]:
        if not p.exists():
            msg = f"real data not found at {p}"
            if under_ci():
                pytest.fail(f"{msg} (CI=true: tests on ../shared/data must run, not skip)", pytrace=False)
            pytest.skip(msg)
    return root.resolve()


def cli_runner(main, capsys):
    """``run(*args) -> (exit code, stdout, stderr)``: an app's console ``main`` called in-process."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
