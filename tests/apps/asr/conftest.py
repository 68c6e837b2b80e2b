"""Shared fixtures: the real utterances in ../shared/data/speech, a tiny causal model trained on a
few of them (session-scoped), and a CLI runner."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import shared_data


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """../shared/data/speech (skipped on a user's machine without it, a failure under CI=true)."""
    return shared_data("speech", "transcripts.tsv")


@pytest.fixture(scope="session")
def transcripts(speech_dir) -> list:
    """Rows of transcripts.tsv as dicts (path made absolute)."""
    with open(speech_dir / "transcripts.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        r["path"] = str(speech_dir / r["path"])
    return rows


@pytest.fixture(scope="session")
def short_manifest(transcripts, tmp_path_factory) -> Path:
    """A TSV manifest of the 8 shortest English utterances."""
    rows = sorted((r for r in transcripts if r["source"].startswith(("LJ", "Libri"))),
                  key=lambda r: float(r["duration_s"]))[:8]
    p = tmp_path_factory.mktemp("asr_data") / "short.tsv"
    p.write_text("path\ttranscript\n" + "".join(f"{r['path']}\t{r['transcript']}\n" for r in rows), encoding="utf-8")
    return p


TRAIN_ARGS = ["--preset", "tiny", "--causal", "--max-epochs", "3", "--seed", "0", "--accelerator", "cpu",
              "--set", "speed_perturb=[1.0]", "--set", "val_fraction=0", "--set", "batch_seconds=12",
              "--set", "model.d_model=32", "--set", "model.enc_layers=2", "--set", "model.dec_layers=1",
              "--set", "model.subsample_channels=8", "--vocab-size", "40"]


@pytest.fixture(scope="session")
def trained(short_manifest, tmp_path_factory) -> Path:
    """Run folder of a tiny causal model trained 3 epochs on 8 real utterances (a few seconds)."""
    from apps.asr.cli import main

    out = tmp_path_factory.mktemp("asr") / "run"
    assert main(["train", "--data", str(short_manifest), "--out", str(out)] + TRAIN_ARGS) == 0
    return out


def run(argv, capsys):
    """``ssm-asr ARGV`` in this process: (exit code, stdout, stderr)."""
    from apps.asr.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
