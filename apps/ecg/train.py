"""Training: the ``train`` pipeline from a folder of WFDB records to a run directory (the
LightningModule is :class:`apps.ecg.module.ECGModule`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from core.engine import (UserError, atomic_write, best_or_last_checkpoint, is_rank_zero, load_module, make_trainer,
                         seed_everything, write_json)

from .data import find_records, lead_set_name, load_records, parse_leads
from .dataset import (TrainData, record_signals, resolve_data_loading, scan_records, split_by_record,
                      window_dataset)
from .labels import LabelSpace
from .metrics import evaluate
from .model import all_model_keys, count_parameters, model_config
from .module import PRESENT_ABOVE, ECGModule, asymmetric_loss  # noqa: F401  (public names kept here)

DEFAULTS: Dict = {
    "model": {"preset": "small"},          # preset + any overrides of its keys (see model.PRESETS)
    "leads": 12,                           # 12, 6, 4, 3, 2 or "I,II,V2"
    "fs": 500.0,                           # every record is resampled to this rate
    "window_s": 10.0,                      # training crop / inference window length
    "band_hz": [0.5, 45.0],                # band-pass filter
    "labels": "scored",                    # "scored" (26 Challenge classes) or "all" (every code present)
    "min_count": 1,                        # with labels=all: drop codes seen fewer times
    "loss": "bce",                         # "bce" or "asl" (asymmetric loss)
    "asl": {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05},
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "batch_size": 16,
    "val_fraction": 0.2,
    "max_epochs": 20,
    "num_workers": 0,
    "data_loading": "auto",                # "memory" (all records read up front), "lazy" (headers up front,
                                           # signals on demand) or "auto" (lazy above dataset.AUTO_LAZY_ABOVE)
    "lead_masking": True,                  # one model for every Challenge lead set within `leads` (12/6/4/3/2):
                                           # random sets in training, absent leads zero-filled + presence mask
}

def trained_lead_sets(leads: Sequence[str], masking: bool) -> Optional[List[List[str]]]:
    """The Challenge lead sets (12, 6, 4, 3, 2) within ``leads``, largest first, ``leads`` itself
    first; ``None`` when masking is off or only one set fits (a plain fixed-lead model)."""
    from .data import LEAD_SETS

    if not masking:
        return None
    sets = [list(leads)]
    for n in sorted(LEAD_SETS, reverse=True):
        s = list(LEAD_SETS[n])
        if set(s) <= set(leads) and set(s) != set(leads):
            sets.append([lead for lead in leads if lead in s])
    return sets if len(sets) > 1 else None


def resolve_config(cfg: Dict) -> Dict:
    """Fill the model config from its preset; validate the few enumerations."""
    cfg = dict(cfg)
    m = dict(cfg.get("model") or {})
    preset = m.pop("preset", "small")
    try:
        cfg["model"] = model_config(preset, **m)
    except ValueError as e:
        raise UserError("config", str(e)) from None
    if cfg["labels"] not in ("scored", "all"):
        raise UserError("config labels", f"must be 'scored' or 'all', got {cfg['labels']!r}")
    if cfg["loss"] not in ("bce", "asl"):
        raise UserError("config loss", f"must be 'bce' or 'asl', got {cfg['loss']!r}")
    if not 0 < float(cfg["val_fraction"]) < 1:
        raise UserError("config val_fraction", "must be between 0 and 1")
    resolve_data_loading(cfg["data_loading"], 0)  # validates the name
    return cfg


def _loaders(data: TrainData, tr: np.ndarray, va: np.ndarray, window: int, batch_size: int, seed: int,
             num_workers: int):
    g = torch.Generator().manual_seed(seed)
    ds_tr = window_dataset(data, tr, window, train=True, seed=seed)
    ds_va = window_dataset(data, va, window, train=False)
    dl_tr = torch.utils.data.DataLoader(ds_tr, batch_size=batch_size, shuffle=True, generator=g,
                                        num_workers=num_workers, drop_last=len(ds_tr) > batch_size)
    dl_va = torch.utils.data.DataLoader(ds_va, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return dl_tr, dl_va


def train(data_inputs: Sequence[str | Path], out_dir: str | Path, cfg: Dict, seed: int = 0,
          trainer_kwargs: Optional[Dict] = None, progress: bool = True, log=print) -> Optional[Dict]:
    """Train on WFDB records; writes ``out_dir/checkpoints/{best,last}.ckpt``, ``metrics.json``,
    ``config.json``, ``skipped.txt`` (bad records) and logs. Returns the metrics dict (``None`` on
    the other ranks of a DDP run: rank 0 alone scores the validation records and writes).

    ``cfg["data_loading"]`` picks how records are read: all up front (``memory``), or headers up
    front and signals on demand (``lazy``, bounded memory); ``auto`` chooses by record count."""
    from .infer import predict_signals

    cfg = resolve_config(cfg)
    if not is_rank_zero():  # DDP: the other ranks stay quiet
        def log(*_a, **_k):
            return None
    out = Path(out_dir)
    seed_everything(seed)
    leads = parse_leads(cfg["leads"])
    fs = float(cfg["fs"])
    paths = find_records(data_inputs)
    t0 = time.time()
    space = LabelSpace.scored() if cfg["labels"] == "scored" else None
    loading = resolve_data_loading(cfg["data_loading"], len(paths))
    band = tuple(cfg["band_hz"])
    data: TrainData
    if loading == "lazy":  # headers now, signals when a batch needs them
        data, space = scan_records(paths, leads, fs, space, band, show_progress=progress,
                                   num_workers=int(cfg["num_workers"]))  # headers parsed in parallel
    else:
        data, space = load_records(paths, leads, fs, space, band, show_progress=progress)
    if cfg["labels"] == "all" and int(cfg["min_count"]) > 1:
        space = LabelSpace.from_dx(data.dx, int(cfg["min_count"]))
        data.labels = np.stack([space.encode(d) for d in data.dx])
    for line in data.failures:
        log(f"skipped: {line}")
    if data.failures and is_rank_zero():
        with atomic_write(out / "skipped.txt", overwrite=True) as f:
            f.write("\n".join(data.failures) + "\n")
    if not data.ids:
        raise UserError(str(data_inputs[0]), "no usable record (see the lines above)")
    log(f"{len(data.ids)} records {'scanned' if loading == 'lazy' else 'read'} in {time.time() - t0:.1f} s "
        f"({len(data.failures)} skipped, data_loading={loading}); "
        f"{len(space)} classes, {int(data.labels.sum())} positive labels")
    tr, va = split_by_record(len(data.ids), float(cfg["val_fraction"]), seed)
    window = int(round(float(cfg["window_s"]) * fs))
    dl_tr, dl_va = _loaders(data, tr, va, window, int(cfg["batch_size"]), seed, int(cfg["num_workers"]))
    sets = trained_lead_sets(leads, bool(cfg.get("lead_masking", False)))
    module = ECGModule(space.classes, leads, fs, float(cfg["window_s"]), tuple(cfg["band_hz"]), cfg["model"],
                       cfg["loss"], cfg["asl"], float(cfg["lr"]), float(cfg["weight_decay"]), sets)
    if sets:
        log("lead masking: one model for " + "; ".join(lead_set_name(s) for s in sets))
    n_params = count_parameters(module.net)
    log(f"model {cfg['model']['arch']}: {n_params:,} parameters; train {len(tr)} / validation {len(va)} records")
    tk = dict(trainer_kwargs or {})
    tk.setdefault("max_epochs", cfg["max_epochs"])
    if tk.get("max_epochs") is None and tk.get("max_time") is None:
        tk["max_epochs"] = cfg["max_epochs"]
    if is_rank_zero():
        write_json(out / "config.json", {**cfg, "leads": list(leads), "seed": seed,
                                         "data": [str(d) for d in data_inputs]})
    tk.setdefault("log_every_n_steps", max(1, min(10, len(dl_tr))))
    trainer = make_trainer(out, monitor="val_loss", mode="min", progress=progress, num_sanity_val_steps=0, **tk)
    t1 = time.time()
    trainer.fit(module, dl_tr, dl_va)
    train_s = time.time() - t1
    if not trainer.is_global_zero:  # DDP: rank 0 scores the whole validation set and writes
        return None
    ckpt = best_or_last_checkpoint(out)
    best = load_module(ckpt, ECGModule)
    # validation metrics on whole records with the stored thresholds
    probs, _ = predict_signals(best, record_signals(data, va, int(cfg["num_workers"])))
    val = evaluate(space, data.labels[va], probs, best.thresholds.numpy())
    per_set = {}
    for s in (best.lead_sets or [])[1:]:  # the same records with only this lead set's leads
        keep = np.array([lead in s for lead in leads], dtype=np.float32)[:, None]
        ps, _ = predict_signals(best, (x * keep for x in record_signals(data, va, int(cfg["num_workers"]))))
        per_set[lead_set_name(s)] = evaluate(space, data.labels[va], ps, best.thresholds_for(s))["macro_auroc"]
    metrics = {
        "checkpoint": str(ckpt),
        "n_records": len(data.ids), "n_train": int(len(tr)), "n_val": int(len(va)),
        "n_skipped": len(data.failures), "data_loading": loading, "n_params": n_params,
        "epochs": int(trainer.current_epoch),
        "train_seconds": round(train_s, 1),
        "train_loss_last": _metric(trainer, "train_loss_epoch"),
        "val_loss_last": _metric(trainer, "val_loss"),
        "validation": val,
        "lead_sets": [list(s) for s in (best.lead_sets or [leads])],
        "validation_macro_auroc_per_lead_set": {lead_set_name(leads): val["macro_auroc"], **per_set},
        "val_records": [data.ids[i] for i in va],
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def _metric(trainer, key: str) -> Optional[float]:
    v = trainer.callback_metrics.get(key)
    return None if v is None else float(v)
