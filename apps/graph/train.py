"""Training runs: one train/val/test run, or k-fold cross-validation under two named protocols.

Splits: a dataset's official split when it has one (Peptides-func), else a stratified random
80/10/10 split by ``--seed``. Node-level data (one graph with node labels) trains on
``NeighborLoader`` batches of seed nodes; graph- and edge-level data on batches of whole graphs.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from core.engine import UserError, make_trainer, merge_config, prepare_run_dir, seed_everything, write_json

from .model import DEFAULTS

TRAIN_DEFAULTS: Dict[str, Any] = dict(
    model=copy.deepcopy(DEFAULTS), batch_size=32, lr=1e-3, weight_decay=1e-5, val_fraction=0.1,
    test_fraction=0.1, num_neighbors=[15, 10], node_batch_size=256, max_epochs=100)


def resolve_config(config: Optional[Dict] = None, overrides: Optional[Dict] = None) -> Dict[str, Any]:
    """defaults <- config file <- overrides; an unknown key at any depth is a one-line error."""
    from core.engine.cli import check_keys
    check_keys(config or {}, TRAIN_DEFAULTS, "--config")
    check_keys(overrides or {}, TRAIN_DEFAULTS, "--set")
    cfg = merge_config(TRAIN_DEFAULTS, config or {}, overrides or {})
    unknown = sorted(set(cfg["model"]) - set(DEFAULTS))
    if unknown:
        raise UserError("config", f"unknown model keys {unknown}; known: {sorted(DEFAULTS)}")
    from .model import LAYERS

    if cfg["model"]["layer"] not in LAYERS:
        raise UserError("config", f"model.layer must be one of {list(LAYERS)}, got {cfg['model']['layer']!r}")
    return cfg


def report(loaded, skip_bad: bool = False, what: str = "data") -> None:
    """Print repair notes and one line per failed graph to stderr; without ``skip_bad`` any failure
    stops the run (exit 2) before training starts."""
    for line in loaded.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in loaded.failures:
        print(f"error: {line}", file=sys.stderr)
    if loaded.failures and not skip_bad:
        raise UserError(what, f"{len(loaded.failures)} graph(s) failed (listed above); fix them or pass "
                              "--skip-bad to train on the rest")
    if not loaded.graphs:
        raise UserError(what, "no usable graphs")


def load_dataset(path: str, cfg: Dict, schema: Optional[Dict] = None, limit: Optional[int] = None):
    """Graphs with the model's PE/SE (cached once per dataset and settings)."""
    from .features import load_encoded

    m = cfg["model"]
    return load_encoded(path, schema, rw_steps=int(m["rw_steps"]), lap_k=int(m["lap_k"]), limit=limit)


def task_level(loaded, task: Optional[str]) -> tuple:
    """(task, level) checked against the labels the data has."""
    s = loaded.schema
    level = s.get("level", "graph")
    has_y = any(getattr(g, "y", None) is not None for g in loaded.graphs)
    if not has_y:
        raise UserError("--data", "no labels found (graph_labels / label columns); cannot train")
    if task is None:
        task = "multilabel" if s.get("multilabel") else "classification" if "classes" in s else "regression"
    if task == "classification" and "classes" not in s:
        raise UserError("--task", "classification needs integer class labels; these targets are continuous")
    if task in ("multilabel", "regression") and "num_targets" not in s:
        if "classes" in s:
            raise UserError("--task", f"{task} needs numeric target columns; these labels are classes")
    return task, level


def _stratify(graphs) -> Optional[np.ndarray]:
    ys = [g.y for g in graphs]
    if ys[0].numel() != 1 or ys[0].dtype != torch.long:
        return None
    y = np.array([int(t) for t in ys])
    return y if np.bincount(y - y.min()).min() >= 2 else None


def random_split(n: int, strat: Optional[np.ndarray], val: float, test: float, seed: int) -> Dict[str, List[int]]:
    """Stratified (when labels allow) train/val/test index lists."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    if n < 3:
        return {"train": list(idx), "val": list(idx), "test": list(idx)}
    rest, te = train_test_split(idx, test_size=max(test, 1 / n), random_state=seed, stratify=strat)
    tr, va = train_test_split(rest, test_size=max(val / (1 - test), 1 / len(rest)), random_state=seed,
                              stratify=strat[rest] if strat is not None else None)
    return {"train": sorted(tr.tolist()), "val": sorted(va.tolist()), "test": sorted(te.tolist())}


def make_loaders(loaded, level: str, cfg: Dict, split: Dict[str, List[int]], num_workers: int = 0,
                 seed: int = 0) -> Dict[str, Any]:
    """train/val/test loaders. Node level: ``split`` holds node ids of the single graph."""
    from torch_geometric.loader import DataLoader

    from .sampling import neighbor_loader

    if level == "node":
        g = loaded.graphs[0]
        return {k: neighbor_loader(g, cfg["num_neighbors"], torch.tensor(v, dtype=torch.long),
                                   batch_size=cfg["node_batch_size"], shuffle=(k == "train"),
                                   num_workers=num_workers)
                for k, v in split.items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: DataLoader([loaded.graphs[i] for i in v], batch_size=cfg["batch_size"], shuffle=(k == "train"),
                          num_workers=num_workers, generator=gen if k == "train" else None)
            for k, v in split.items()}


def default_split(loaded, level: str, cfg: Dict, seed: int) -> Dict[str, List[int]]:
    if loaded.split is not None:
        return loaded.split
    if level == "node":
        if len(loaded.graphs) != 1:
            raise UserError("--data", "node-level data must be one graph (graph_id absent or constant)")
        y = loaded.graphs[0].y
        lab = torch.nonzero(~torch.isnan(y.float()) & (y.float() >= 0) if y.dtype != torch.long else y >= 0)
        lab = lab.view(-1).numpy()
        strat = y[lab].numpy() if y.dtype == torch.long else None
        sp = random_split(len(lab), strat if strat is not None and np.bincount(strat).min() >= 2 else None,
                          cfg["val_fraction"], cfg["test_fraction"], seed)
        return {k: [int(lab[i]) for i in v] for k, v in sp.items()}
    if level == "edge" and len(loaded.graphs) < 3:
        raise UserError("--data", "edge-level tasks are split by graph: give at least 3 graphs")
    return random_split(len(loaded.graphs), _stratify(loaded.graphs), cfg["val_fraction"], cfg["test_fraction"],
                        seed)


def train(data: str, out: str, task: Optional[str] = None, config: Optional[Dict] = None,
          overrides: Optional[Dict] = None, max_epochs: Optional[int] = None, max_time: Optional[str] = None,
          seed: Optional[int] = 0, overwrite: bool = False, skip_bad: bool = False,
          trainer_kwargs: Optional[Dict] = None, num_workers: int = 0, progress: bool = True,
          limit: Optional[int] = None) -> Dict[str, Any]:
    """Train on ``data``, keep the best epoch by the validation metric, score it on the test split.

    Writes ``out/checkpoints/{best,last}.ckpt``, ``out/logs/metrics.csv``, ``out/metrics.json``.
    Returns ``{"task", "level", "val", "test", "checkpoint", "split_sizes", "seconds"}``.
    """
    from .infer import evaluate_loader
    from .module import METRIC, GraphModule

    cfg = resolve_config(config, overrides)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    out_dir = prepare_run_dir(out, overwrite, clear=("metrics.json",))
    seed = 0 if seed is None else seed
    seed_everything(seed)
    loaded = load_dataset(data, cfg, limit=limit)
    # again: encodings computed now draw random numbers, ones read from the cache do not
    seed_everything(seed)
    report(loaded, skip_bad, data)
    task, level = task_level(loaded, task)
    split = default_split(loaded, level, cfg, seed)
    loaders = make_loaders(loaded, level, cfg, split, num_workers, seed)
    module = GraphModule(cfg["model"], loaded.schema, task, level, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                         max_epochs=None if max_time else cfg["max_epochs"])
    metric, mode = METRIC[task]
    t0 = time.time()
    tk = {"log_every_n_steps": max(1, min(10, len(loaders["train"]))), **(trainer_kwargs or {})}
    trainer = make_trainer(out_dir, max_epochs=cfg["max_epochs"], max_time=max_time, monitor="val_metric", mode=mode,
                           progress=progress, **tk)
    trainer.fit(module, loaders["train"], loaders["val"])
    ckpt = Path(trainer.checkpoint_callback.best_model_path or out_dir / "checkpoints" / "last.ckpt")
    res = {"task": task, "level": level, "metric": metric, "model": cfg["model"]["layer"],
           "split_sizes": {k: len(v) for k, v in split.items()}, "epochs": int(trainer.current_epoch),
           "seconds": round(time.time() - t0, 1), "checkpoint": str(ckpt)}
    if trainer.is_global_zero:
        from .infer import load_checkpoint

        best = load_checkpoint(ckpt)
        res["val"] = evaluate_loader(best, loaders["val"])
        res["test"] = evaluate_loader(best, loaders["test"])
        write_json(out_dir / "metrics.json", res)
    return res


# ------------------------------------------------------------------------------- cross-validation

def cross_validate(data: str, out: str, folds: int = 10, task: Optional[str] = None, config: Optional[Dict] = None,
                   overrides: Optional[Dict] = None, models: Sequence[str] = ("gmn",), max_epochs: Optional[int] = None,
                   seed: Optional[int] = 0, overwrite: bool = False, skip_bad: bool = False,
                   trainer_kwargs: Optional[Dict] = None, progress: bool = True, inner_val: float = 0.1,
                   fold_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Stratified k-fold CV of one or more ``models`` on the same folds, scored two ways:

    * ``optimistic`` (GIN paper, Xu et al. 2019): per epoch, the test-fold accuracy averaged over
      folds; the best epoch of that mean curve. Selection sees the test folds.
    * ``fair`` (Errica et al. 2020): each fold picks its epoch on an inner validation split
      (``inner_val`` of its training part, stratified) and reports the test fold at that epoch.
    Both come from the same training runs (every model trains on the training part minus the
    inner split). Writes ``out/cv.json``; returns it.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from torch_geometric.loader import DataLoader

    from .module import GraphModule

    cfg = resolve_config(config, overrides)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    out_dir = prepare_run_dir(out, overwrite, clear=("cv.json",))
    seed = 0 if seed is None else seed
    loaded = load_dataset(data, cfg)
    report(loaded, skip_bad, data)
    task, level = task_level(loaded, task)
    if level != "graph" or task != "classification":
        raise UserError("--folds", "cross-validation is for graph classification")
    y = np.array([int(g.y) for g in loaded.graphs])
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(skf.split(np.zeros(len(y)), y))
    res: Dict[str, Any] = {"data": str(data), "folds": folds, "seed": seed, "max_epochs": cfg["max_epochs"],
                           "inner_val": inner_val, "models": {}}
    for name in models:
        mcfg = {**cfg["model"], "layer": name}
        per_fold = []
        t0 = time.time()
        for k, (tr, te) in enumerate(splits):
            if fold_ids is not None and k not in fold_ids:
                continue
            seed_everything(seed + k)
            tr_in, va = train_test_split(tr, test_size=inner_val, random_state=seed + k, stratify=y[tr])
            mk = lambda ids, sh: DataLoader([loaded.graphs[i] for i in ids], batch_size=cfg["batch_size"],  # noqa
                                            shuffle=sh, generator=torch.Generator().manual_seed(seed + k))
            module = GraphModule(mcfg, loaded.schema, task, level, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                 max_epochs=cfg["max_epochs"])
            trainer = make_trainer(out_dir / name / f"fold{k}", max_epochs=cfg["max_epochs"], progress=progress,
                                   loggers=("csv",), enable_checkpointing=False,
                                   **{"log_every_n_steps": 1, **(trainer_kwargs or {})})
            trainer.fit(module, mk(tr_in, True), [mk(va, False), mk(te, False)])
            hist = module.history
            per_fold.append({"fold": k, "val": [h["val_metric"] for h in hist], "test": [h["val1_metric"] for h in hist]})
            best = int(np.argmax(per_fold[-1]["val"]))
            print(f"{name} fold {k}: test acc {per_fold[-1]['test'][best]:.3f} at inner-val-best epoch {best + 1}",
                  file=sys.stderr, flush=True)
        res["models"][name] = summarise_cv(per_fold)
        res["models"][name]["seconds"] = round(time.time() - t0, 1)
        write_json(out_dir / "cv.json", res)
    return res


def summarise_cv(per_fold: List[Dict]) -> Dict[str, Any]:
    """The two protocols from per-fold, per-epoch (inner-val, test-fold) accuracy curves."""
    n_ep = min(len(f["test"]) for f in per_fold)
    test = np.array([f["test"][:n_ep] for f in per_fold])            # (folds, epochs)
    val = np.array([f["val"][:n_ep] for f in per_fold])
    curve = test.mean(0)
    e_opt = int(np.argmax(curve))
    picks = val.argmax(1)                                              # first epoch with the best inner val
    fair = test[np.arange(len(test)), picks]
    return {"optimistic": {"mean": float(curve[e_opt]), "std": float(test[:, e_opt].std()), "epoch": e_opt + 1},
            "fair": {"mean": float(fair.mean()), "std": float(fair.std()), "epochs": (picks + 1).tolist()},
            "per_fold": per_fold}
