"""The smallest real training run of every app through its CLI, shared by the contract test and the
DDP test: tiny synthetic data (or a few real utterances for asr) and a tiny model, one epoch.

``recipe(app, tmp)`` returns the train arguments (without ``-o``) and the evaluate arguments (without
``--checkpoint``/``-o``). ``comparable(metrics)`` drops what legitimately differs between two runs
of one seed (wall-clock times, paths).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

TINY_MEDSEG = {"data": {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "samples_per_volume": 2,
                        "aug": "light"},
               "train": {"batch_size": 2, "steps_per_epoch": 2, "sw_batch_size": 2}}


def _ecg(tmp: Path):
    from apps.ecg.demo import make_dataset

    make_dataset(tmp / "recs", 24, seed=0, fs_choices=(250.0,), duration=6.0)
    return (["--data", tmp / "recs", "--preset", "tiny", "--fs", "100", "--window-s", "4", "--batch-size", "4"],
            ["--data", tmp / "recs"])


def _medseg(tmp: Path):
    from apps.medseg.synth import make_demo_dataset

    make_demo_dataset(tmp / "data", n_train=4, n_test=1, seed=0)
    (tmp / "tiny.json").write_text(json.dumps(TINY_MEDSEG))
    return (["--data", tmp / "data", "--plan", "none", "--config", tmp / "tiny.json"], ["--data", tmp / "data"])


def _timeseries(tmp: Path):
    from apps.timeseries.demo import synthetic_csv

    csv = synthetic_csv(tmp / "series.csv", n=400, n_vars=3)
    # spacetime: two stages (linear path, then the SSM branch), the longest path through train()
    return (["--data", csv, "--model", "spacetime", "--seq-len", "32", "--pred-len", "8", "--batch-size", "16",
             "--set", "model.d_model=8", "--set", "model.d_state=4", "--set", "model.n_layers=1",
             "--set", "linear_stage.max_epochs=1", "--set", "min_steps_per_epoch=0"], ["--data", csv])


def _recsys(tmp: Path):
    from apps.recsys.demo import synthetic_log

    log = synthetic_log(tmp / "demo.inter", n_users=60, n_items=48, length=20)
    return (["--data", log, "--model", "tim4rec", "--batch-size", "16", "--set", "model.d_model=16",
             "--set", "model.d_state=8", "--set", "model.headdim=8"], ["--data", log])


def _asr(tmp: Path):
    import csv

    from tests.conftest import shared_data

    speech = shared_data("speech", "transcripts.tsv")
    with open(speech / "transcripts.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["source"].startswith(("LJ", "Libri"))]
    rows = sorted(rows, key=lambda r: float(r["duration_s"]))[:6]
    m = tmp / "short.tsv"
    m.write_text("path\ttranscript\n" + "".join(f"{speech / r['path']}\t{r['transcript']}\n" for r in rows),
                 encoding="utf-8")
    return (["--data", m, "--preset", "tiny", "--vocab-size", "40", "--set", "speed_perturb=[1.0]",
             "--set", "val_fraction=0.34", "--set", "batch_seconds=8", "--set", "model.d_model=16",
             "--set", "model.enc_layers=1", "--set", "model.dec_layers=1", "--set", "model.subsample_channels=4"],
            ["--data", m, "--decode", "greedy"])


def _graph(tmp: Path):
    from apps.graph.demo import synthetic_graphs, write_tu

    tu = write_tu(synthetic_graphs(40, seed=3), tmp / "tu", "TINY")
    return (["--data", tu, "--task", "classification", "--model", "gmn", "--batch-size", "8",
             "--set", "model.d_model=8", "--set", "model.n_layers=1", "--set", "model.walk_lengths=[2]",
             "--set", "model.num_walks=1", "--set", "model.d_state=4"], ["--data", tu])


RECIPES = {"ecg": _ecg, "medseg": _medseg, "timeseries": _timeseries, "recsys": _recsys, "asr": _asr,
           "graph": _graph}


def recipe(app: str, tmp: Path) -> Tuple[List[str], List[str]]:
    """(train args without -o, evaluate args without --checkpoint/-o) on tiny data made in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    train, evaluate = RECIPES[app](tmp)
    return [str(a) for a in train], [str(a) for a in evaluate]


_VOLATILE = ("time", "seconds", "_s", "checkpoint", "path", "dir", "data", "out", "rtf", "speed")


def comparable(obj: Any, run: str = "") -> Any:
    """``obj`` without wall-clock times and paths (keys naming them), run folder names replaced."""
    if isinstance(obj, dict):
        return {k: comparable(v, run) for k, v in obj.items()
                if not any(str(k).lower().endswith(s) or str(k).lower().startswith(s) for s in _VOLATILE)}
    if isinstance(obj, list):
        return [comparable(v, run) for v in obj]
    if isinstance(obj, str) and run:
        return obj.replace(run, "RUN")
    return obj


def metrics_of(run: Path) -> Dict[str, Any]:
    return comparable(json.loads((run / "metrics.json").read_text()), str(run))
