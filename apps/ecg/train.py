"""Training: the LightningModule (config, classes and thresholds travel in the checkpoint) and
the ``train`` pipeline from a folder of WFDB records to a run directory."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from core.engine import (UserError, best_or_last_checkpoint, configure_optimizers, load_module, make_trainer,
                         seed_everything, write_json)

from .data import find_records, lead_set_name, load_records, parse_leads
from .dataset import (TrainData, record_signals, resolve_data_loading, scan_records, split_by_record,
                      window_dataset)
from .labels import LabelSpace
from .metrics import evaluate, tune_thresholds
from .model import build_model, count_parameters, model_config

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

PRESENT_ABOVE = 1e-2  # a normalised lead whose window never exceeds this is absent (zero-filled or flat)


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


def asymmetric_loss(logits: torch.Tensor, y: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021): focusing on hard negatives and shifting easy ones to
    zero. ``logits, y (B, C)`` -> scalar (sum over classes, mean over the batch)."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    eps = 1e-8
    loss_pos = y * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    loss_neg = (1 - y) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg.pow(gamma_neg)
    return -(loss_pos + loss_neg).sum(-1).mean()


class ECGModule(L.LightningModule):
    """Multi-label ECG classifier. ``forward(x (B, n_leads, L)) -> logits (B, C)``.

    Everything ``predict`` needs is in the checkpoint: hyper-parameters (model config, class
    list, leads, sampling rate, window) and the per-class ``thresholds`` buffer tuned on the
    validation records for the Challenge score.
    """

    def __init__(self, classes: Sequence[str], leads: Sequence[str], fs: float = 500.0, window_s: float = 10.0,
                 band_hz: Sequence[float] = (0.5, 45.0), model: Optional[dict] = None, loss: str = "bce",
                 asl: Optional[dict] = None, lr: float = 1e-3, weight_decay: float = 1e-2,
                 lead_sets: Optional[Sequence[Sequence[str]]] = None):
        super().__init__()
        self.save_hyperparameters()
        self.space = LabelSpace(list(classes))
        # lead masking: the net reads the leads (absent ones zero) plus one presence channel per lead
        self.lead_sets = [tuple(s) for s in lead_sets] if lead_sets else None
        n_in = 2 * len(leads) if self.lead_sets else len(leads)
        self.net = build_model(model or model_config("small"), n_in, len(classes))
        self.register_buffer("thresholds", torch.full((len(classes),), 0.5))
        if self.lead_sets:
            keep = torch.tensor([[float(lead in s) for lead in leads] for s in self.lead_sets])
            self.register_buffer("set_keep", keep, persistent=False)                    # (S, n_leads)
            self.register_buffer("set_thresholds", torch.full((len(self.lead_sets), len(classes)), 0.5))
        self._val_probs: List[torch.Tensor] = []
        self._val_labels: List[torch.Tensor] = []
        self.last_val_metrics: Optional[dict] = None

    @property
    def window(self) -> int:
        """Window length in samples."""
        return int(round(self.hparams.window_s * self.hparams.fs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, n_leads, L)`` -> logits ``(B, C)``. A lead-masked model takes absent leads as
        zero rows and adds their presence mask ``(B, n_leads, L)`` as input channels."""
        if self.lead_sets:
            present = (x.detach().abs().amax(-1, keepdim=True) > PRESENT_ABOVE).to(x.dtype)
            x = torch.cat([x, present.expand_as(x)], 1)
        return self.net(x)

    def thresholds_for(self, leads: Sequence[str]) -> np.ndarray:
        """Per-class thresholds ``(C,)`` tuned on validation for the lead set ``leads``."""
        if self.lead_sets:
            for i, s in enumerate(self.lead_sets):
                if set(s) == set(leads):
                    return self.set_thresholds[i].detach().cpu().numpy()
        return self.thresholds.detach().cpu().numpy()

    def set_index(self, leads: Sequence[str]) -> int:
        for i, s in enumerate(self.lead_sets or [tuple(self.hparams.leads)]):
            if set(s) == set(leads):
                return i
        raise UserError("--leads", f"{','.join(leads)} is not a lead set of this model "
                                   f"({'; '.join(','.join(s) for s in (self.lead_sets or [self.hparams.leads]))})")

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "asl":
            return asymmetric_loss(logits, y, **(self.hparams.asl or {}))
        return F.binary_cross_entropy_with_logits(logits, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.lead_sets:  # every record in the batch shows a random Challenge lead set
            pick = torch.randint(len(self.lead_sets), (len(x),), device=x.device)
            x = x * self.set_keep[pick][:, :, None].to(x.dtype)
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        keeps = self.set_keep if self.lead_sets else torch.ones(1, x.shape[1], device=x.device)
        probs, losses = [], []
        for keep in keeps:  # every lead set, each on all validation windows
            logits = self(x * keep[None, :, None].to(x.dtype))
            losses.append(self.loss_fn(logits, y))
            probs.append(torch.sigmoid(logits).detach().float().cpu())
        self.log("val_loss", torch.stack(losses).mean(), prog_bar=True, on_epoch=True, batch_size=len(x))
        self._val_probs.append(torch.stack(probs))        # (S, B, C)
        self._val_labels.append(y.detach().cpu())

    def on_validation_epoch_end(self):
        if not self._val_probs:
            return
        p_all = torch.cat(self._val_probs, 1).numpy()
        y = torch.cat(self._val_labels).numpy()
        self._val_probs.clear()
        self._val_labels.clear()
        for i, p in enumerate(p_all):
            th = tune_thresholds(self.space, y, p)
            if self.lead_sets:
                self.set_thresholds[i].copy_(torch.as_tensor(th, dtype=self.set_thresholds.dtype))
            if i == 0:
                self.thresholds.copy_(torch.as_tensor(th, dtype=self.thresholds.dtype))
                m = evaluate(self.space, y, p, th)
                self.last_val_metrics = m
                for k in ("macro_auroc", "macro_auprc", "macro_f1", "challenge_score"):
                    v = m[k]
                    self.log(f"val_{k}", float(v) if np.isfinite(v) else 0.0, prog_bar=k == "challenge_score")
            else:
                v = evaluate(self.space, y, p, th)["macro_auroc"]
                self.log(f"val_macro_auroc_{len(self.lead_sets[i])}leads", float(v) if np.isfinite(v) else 0.0)

    def configure_optimizers(self):
        # AdamW without decay on SSM/norm/bias parameters; linear warm-up (5 %), cosine decay to 2 %
        return configure_optimizers(self, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                    optimizer="adamw", schedule="warmup_cosine", min_factor=0.02)


def resolve_config(cfg: Dict) -> Dict:
    """Fill the model config from its preset; validate the few enumerations."""
    cfg = dict(cfg)
    m = dict(cfg.get("model") or {})
    preset = m.pop("preset", "small")
    try:
        cfg["model"] = model_config(preset, **m)
    except ValueError as e:
        raise UserError("config model.preset", str(e)) from None
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
          trainer_kwargs: Optional[Dict] = None, progress: bool = True, log=print) -> Dict:
    """Train on WFDB records; writes ``out_dir/checkpoints/{best,last}.ckpt``, ``metrics.json``,
    ``config.json``, ``skipped.txt`` (bad records) and logs. Returns the metrics dict.

    ``cfg["data_loading"]`` picks how records are read: all up front (``memory``), or headers up
    front and signals on demand (``lazy``, bounded memory); ``auto`` chooses by record count."""
    from .infer import predict_signals

    cfg = resolve_config(cfg)
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
    if data.failures:
        with open(out / "skipped.txt", "w") as f:
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
    write_json(out / "config.json", {**cfg, "leads": list(leads), "seed": seed, "data": [str(d) for d in data_inputs]})
    tk.setdefault("log_every_n_steps", max(1, min(10, len(dl_tr))))
    trainer = make_trainer(out, monitor="val_loss", mode="min", progress=progress, num_sanity_val_steps=0, **tk)
    t1 = time.time()
    trainer.fit(module, dl_tr, dl_va)
    train_s = time.time() - t1
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
