"""Training lowers the loss; train / evaluate / predict / cross-validation through the CLI."""
from __future__ import annotations

import csv
import json

import torch

from apps.graph.train import summarise_cv

from .conftest import TINY_GMN, two_triangles_and_path, write_tu_files


def test_training_lowers_the_loss(tiny_tu):
    from torch_geometric.loader import DataLoader

    from apps.graph.train import load_dataset, resolve_config
    from apps.graph.module import GraphModule, compute_loss

    torch.manual_seed(0)
    cfg = resolve_config(overrides=dict(model=TINY_GMN))
    loaded = load_dataset(str(tiny_tu), cfg)
    module = GraphModule(cfg["model"], loaded.schema, "classification", lr=1e-2)
    opt = module.configure_optimizers()
    batch = next(iter(DataLoader(loaded.graphs, batch_size=48)))
    module.train()
    losses = []
    for _ in range(25):
        loss = compute_loss("classification", module(batch), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_train_run_writes_checkpoint_and_metrics(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["task"] == "classification" and m["model"] == "gmn" and 0 <= m["test"]["accuracy"] <= 1
    assert m["split_sizes"] == {"train": 38, "val": 5, "test": 5}
    assert (tiny_run / "checkpoints" / "best.ckpt").is_file()


def test_predict_csv_and_bad_graphs(tiny_run, tiny_tu, tmp_path, run_cli):
    out = tmp_path / "pred.csv"
    code, stdout, err = run_cli("predict", "--checkpoint", tiny_run, "-i", tiny_tu, "-o", out)
    assert code == 0, err
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["graph_id", "pred", "prob_0", "prob_1"] and len(rows) == 49
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 49)]
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-5 and r[1] in ("0", "1") for r in rows[1:])
    # the same again refuses to overwrite, and leaves the file alone
    before = out.read_text()
    code, _, err = run_cli("predict", "--checkpoint", tiny_run, "-i", tiny_tu, "-o", out)
    assert code == 2 and "--overwrite" in err and out.read_text() == before

    bad = two_triangles_and_path()
    bad["A"][6] = "4, 99"
    bad["node_labels"] = ["0", "1", "2"] * 3
    folder = write_tu_files(tmp_path / "bad", "B", bad)
    out2 = tmp_path / "pred2.csv"
    code, stdout, err = run_cli("predict", "--checkpoint", tiny_run, "-i", folder, "-o", out2)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "graph 2" in lines[0] and "line 7" in lines[0]
    assert "Traceback" not in err
    assert [r[0] for r in list(csv.reader(out2.open()))[1:]] == ["1", "3"]   # the others went on


def test_evaluate_and_bad_checkpoint(tiny_run, tiny_tu, tmp_path, run_cli):
    code, stdout, err = run_cli("evaluate", "--checkpoint", tiny_run / "checkpoints" / "best.ckpt",
                                "--data", tiny_tu, "-o", tmp_path / "m.json")
    assert code == 0, err
    res = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= res["accuracy"] <= 1 and res["n"] == 48 and res["failed"] == 0
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(b"not a checkpoint")
    code, _, err = run_cli("predict", "--checkpoint", fake, "-i", tiny_tu, "-o", tmp_path / "x.csv")
    assert code == 2 and "fake.ckpt: not a checkpoint" in err and not (tmp_path / "x.csv").exists()
    code, _, err = run_cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "r")
    assert code == 2 and "not found" in err


def test_summarise_cv_both_protocols():
    # 2 folds x 3 epochs: (inner val, test) accuracy curves
    folds = [{"val": [0.5, 0.9, 0.7], "test": [0.6, 0.7, 0.9]},
             {"val": [0.8, 0.6, 0.6], "test": [0.5, 0.9, 0.8]}]
    s = summarise_cv(folds)
    assert s["optimistic"]["epoch"] == 3 and abs(s["optimistic"]["mean"] - 0.85) < 1e-9   # mean curve .55 .8 .85
    assert s["fair"]["epochs"] == [2, 1] and abs(s["fair"]["mean"] - 0.6) < 1e-9         # (0.7 + 0.5) / 2


def test_cross_validation_cli_same_folds_two_models(tiny_tu, tmp_path, run_cli):
    out = tmp_path / "cv"
    code, stdout, err = run_cli("train", "--data", tiny_tu, "--out", out, "--folds", "2", "--model", "gin",
                                "--compare", "gmn", "--max-epochs", "1", "--set", "model.d_model=8",
                                "--set", "model.n_layers=1", "--set", "model.walk_lengths=[2]",
                                "--set", "model.num_walks=1", "--set", "model.d_state=4")
    assert code == 0, err
    res = json.loads((out / "cv.json").read_text())
    assert set(res["models"]) == {"gin", "gmn"} and "fair" in stdout and "optimistic" in stdout
    for r in res["models"].values():
        assert len(r["per_fold"]) == 2 and len(r["per_fold"][0]["test"]) == 1
        assert abs(r["fair"]["mean"] - r["optimistic"]["mean"]) < 1e-9   # one epoch: both protocols pick it
