"""Training run: read the log, apply the protocol, fit with early stopping on validation NDCG@10, test.

Writes under ``out``: ``checkpoints/best.ckpt`` (network, config, raw-id maps, user histories), ``logs/``,
``config.json``, ``metrics.json`` (validation and test HR/NDCG/MRR at 5/10/20).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from core.engine import (UserError, best_or_last_checkpoint, is_rank_zero, make_trainer, merge_config, prepare_run_dir,
                         seed_everything, write_json)

from .config import TRAIN_DEFAULTS
from .data import SeqData, load_dataset, loader, train_loader
from .model import RecModule, model_config
from .nets import MODELS, gap_stats

def resolve_config(model: str, config: Optional[Dict[str, Any]] = None,
                   overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults <- config file <- overrides; ``model`` holds the network's keyword arguments."""
    if model not in MODELS:
        raise UserError("--model", f"unknown model {model!r}; choose from {sorted(MODELS)}")
    cfg = merge_config(TRAIN_DEFAULTS, config or {}, overrides or {})
    try:
        cfg["model"] = model_config(model, cfg["model"])
    except ValueError as e:
        raise UserError("config", str(e)) from None
    if cfg["loss"] not in ("ce", "sampled"):
        raise UserError("config", f"loss must be ce or sampled, got {cfg['loss']!r}")
    if cfg["train_mode"] not in ("window", "prefix"):
        raise UserError("config", f"train_mode must be window or prefix, got {cfg['train_mode']!r}")
    if model == "tim4rec" and cfg["model"]["time_mix"] == "sequence" and cfg["train_mode"] != "prefix":
        raise UserError("config", "time_mix=sequence sees every gap of its window, so it trains on RecBole's "
                                  "prefixes only: set train_mode=prefix")
    for key in ("max_len", "batch_size", "eval_batch_size", "n_negatives"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError("config", f"{key} must be a positive integer, got {cfg[key]!r}")
    return cfg


def serving_payload(data: SeqData) -> Dict[str, Any]:
    """What ``recommend`` needs besides the network: raw ids, every user's full history, popularity."""
    counts = np.bincount(data.items, minlength=data.n_items + 1)
    return dict(user_ids=list(data.user_ids), item_ids=list(data.item_ids),
                items=torch.from_numpy(data.items.astype(np.int64)), times=torch.from_numpy(data.times),
                offsets=torch.from_numpy(data.offsets), popularity=torch.from_numpy(counts))


def build_module(model: str, cfg: Dict[str, Any], data: SeqData) -> RecModule:
    """A fresh module for ``data`` (gap statistics and popularity from its training part)."""
    mcfg = dict(cfg["model"])
    if model == "tim4rec":
        n = data.lengths()
        train_pos = np.arange(len(data.items)) - np.repeat(data.offsets[:-1], n) < np.repeat(np.maximum(n - 2, 0), n)
        mcfg["gap_mean"], mcfg["gap_std"] = gap_stats(data.gaps()[train_pos])
    module = RecModule(model, mcfg, data.n_items, cfg["max_len"], loss=cfg["loss"], n_negatives=cfg["n_negatives"],
                       lr=cfg["lr"], weight_decay=cfg["weight_decay"], train_mode=cfg["train_mode"])
    module.set_popularity(torch.from_numpy(data.item_counts("train")))
    module.serving = serving_payload(data)
    return module


def train(data_path: str, model: str, out: str, fmt: str = "auto", columns: Optional[Dict[str, str]] = None,
          config: Optional[Dict[str, Any]] = None, overrides: Optional[Dict[str, Any]] = None,
          max_epochs: Optional[int] = None, max_time: Optional[str] = None, seed: Optional[int] = None,
          overwrite: bool = False, progress: bool = True, trainer_kwargs: Optional[Dict[str, Any]] = None,
          num_workers: int = 0, data: Optional[SeqData] = None) -> Dict[str, Any]:
    """Train ``model`` on the interaction log ``data_path`` by RecBole's sequential protocol; returns metrics.

    ``columns`` maps user/item/time to column names for CSV/Parquet/atomic files; ``data`` reuses an
    already-built :class:`SeqData` (benchmarks: several models on one split).
    """
    from lightning.pytorch.callbacks import EarlyStopping

    from .infer import evaluate_split, load_checkpoint

    cfg = resolve_config(model, config, overrides)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    if data is None:
        cols = columns or {}
        data = load_dataset(data_path, fmt, cfg["max_len"], cfg["user_min"], cfg["item_min"],
                            cols.get("user"), cols.get("item"), cols.get("time"))
    out_dir = prepare_run_dir(out, overwrite, clear=("metrics.json", "config.json"))
    seed_everything(seed)
    if is_rank_zero():
        write_json(out_dir / "config.json", dict(cfg, model_name=model, data=str(data_path), seed=seed))
    module = build_module(model, cfg, data)
    tk = dict(trainer_kwargs or {})
    trainer = make_trainer(out_dir, max_epochs=cfg["max_epochs"], max_time=max_time, monitor="val_ndcg@10",
                           mode="max", progress=progress,
                           callbacks=[EarlyStopping("val_ndcg@10", patience=cfg["patience"], mode="max")],
                           num_sanity_val_steps=0, **tk)
    t0, c0 = time.time(), time.process_time()
    trainer.fit(module, train_loader(data, cfg["train_mode"], cfg["batch_size"], num_workers),
                loader(data, "val", cfg["eval_batch_size"]))
    wall, cpu = time.time() - t0, time.process_time() - c0
    if trainer.global_rank != 0:
        return {}
    cb = trainer.checkpoint_callback
    best = Path(cb.best_model_path) if cb is not None and cb.best_model_path else best_or_last_checkpoint(out_dir)
    module = load_checkpoint(best)
    result = dict(model=model, data=str(data_path), seed=seed, epochs=int(trainer.current_epoch),
                  train_time_s=round(wall, 1), train_cpu_s=round(cpu, 1),
                  n_params=sum(p.numel() for p in module.parameters()), checkpoint=str(best),
                  n_users=data.n_users, n_items=data.n_items, n_interactions=int(len(data.items)))
    result["val"] = evaluate_split(module, data, "val", cfg["eval_batch_size"])
    result["test"] = evaluate_split(module, data, "test", cfg["eval_batch_size"])
    write_json(out_dir / "metrics.json", result)
    return result
