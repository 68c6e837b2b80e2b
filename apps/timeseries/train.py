"""Training: a LightningModule around any forecaster, early stopping on validation MSE."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
import torch
import torch.nn.functional as F

from core.engine import (UserError, best_or_last_checkpoint, load_module, make_trainer, merge_config,
                         prepare_run_dir, seed_everything, write_json)

from .data import SeriesData, auto_cycle_len, load_series
from .models import MODELS, build_model

# Per-model defaults, tuned on ETTh1 validation (see bench/RESULTS.md, "## timeseries").
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "chimera": dict(d_model=32, d_state=4, expand=1, n_layers=1, patch_len=8, dropout=0.2,
                    head_dropout=0.1, bidirectional=True, linear_skip=True, revin=True,
                    zero_init_head=False),
    "spacetime": dict(d_model=32, d_state=16, n_layers=2, embed_lags=8, dropout=0.1,
                      channel_mixing=False, linear_skip=True, revin=True, zero_init_head=False),
    "dlinear": dict(kernel_size=25, revin=False),
}

TRAIN_DEFAULTS: Dict[str, Any] = dict(
    batch_size=32, lr=1e-3, weight_decay=0.0, loss="mae", lr_decay=0.5, lr_hold=0, patience=3,
    max_epochs=10, cycle="auto", model={},
)


class ForecastModule(L.LightningModule):
    """Wraps ``MODELS[model_name]``; everything needed to rebuild data and model is a hyperparameter."""

    def __init__(self, model_name: str, model_cfg: Dict[str, Any], seq_len: int, pred_len: int,
                 enc_in: int, c_out: int, lr: float = 1e-3, weight_decay: float = 0.0,
                 loss: str = "mse", lr_decay: float = 0.5, data_info: Optional[Dict[str, Any]] = None,
                 cycle_len: int = 0, lr_hold: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, seq_len, pred_len, enc_in, c_out, cycle_len=cycle_len, **model_cfg)

    def forward(self, x: torch.Tensor, t_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, seq_len, enc_in) scaled, t_index (B,) step index of each window's first row
        (needed when ``cycle_len > 0``) -> (B, pred_len, c_out) scaled."""
        if self.hparams.cycle_len > 0:
            if t_index is None:
                raise ValueError("this model removes a calendar cycle: pass t_index, the windows' step index")
            return self.model(x, t_index)
        return self.model(x)

    def _loss(self, pred, y):
        kind = self.hparams.loss
        if kind == "mae":
            return F.l1_loss(pred, y)
        if kind == "huber":
            return F.smooth_l1_loss(pred, y, beta=0.5)
        return F.mse_loss(pred, y)

    def training_step(self, batch, batch_idx):
        x, y, t = batch
        loss = self._loss(self(x, t), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, t = batch
        pred = self(x, t)
        # sums so the epoch value is the exact mean over all windows (last partial batch included)
        self.log("val_loss", F.mse_loss(pred, y), on_epoch=True, prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        decay, hold = self.hparams.lr_decay, self.hparams.lr_hold
        # TSLib "type1" (hold 0, decay 0.5); LTSF-Linear's "type3" is hold 3, decay 0.9
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda ep: decay ** max(0, ep - hold))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def resolve_config(model: str, config: Optional[Dict[str, Any]] = None,
                   overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults <- config file <- --set overrides; ``model`` holds the model's keyword arguments."""
    if model not in MODELS:
        raise UserError("--model", f"unknown model {model!r}; choose from {sorted(MODELS)}")
    base = dict(TRAIN_DEFAULTS, model=dict(MODEL_DEFAULTS[model]))
    cfg = merge_config(base, config or {}, overrides or {})
    unknown = sorted(set(cfg["model"]) - set(MODEL_DEFAULTS[model]))
    if unknown:
        raise UserError("config", f"unknown {model} option(s) {unknown}; known: {sorted(MODEL_DEFAULTS[model])}")
    if cfg["cycle"] != "auto" and (isinstance(cfg["cycle"], bool) or not isinstance(cfg["cycle"], int)
                                   or cfg["cycle"] < 0):
        raise UserError("config", f"cycle must be 'auto' or a number of steps >= 0 (0 = off), got {cfg['cycle']!r}")
    if cfg["loss"] not in ("mse", "mae", "huber"):
        raise UserError("config", f"loss must be mse, mae or huber, got {cfg['loss']!r}")
    return cfg


def data_info(data: SeriesData) -> Dict[str, Any]:
    """What evaluate/forecast need to treat a new CSV exactly like the training one."""
    return dict(columns=data.columns, target=data.target, features=data.features,
                scaler=data.scaler.state(), train_path=data.path)


def train(data_path: str, model: str, seq_len: int, pred_len: int, out: str, features: str = "M",
          target: Optional[str] = "OT", date_col: Optional[str] = None, fill: bool = False,
          config: Optional[Dict[str, Any]] = None, overrides: Optional[Dict[str, Any]] = None,
          max_epochs: Optional[int] = None, max_time: Optional[str] = None, seed: Optional[int] = None,
          overwrite: bool = False, progress: bool = True, split: Optional[str] = None,
          trainer_kwargs: Optional[Dict[str, Any]] = None, num_workers: int = 0) -> Dict[str, Any]:
    """Train on ``data_path`` by the protocol, keep the best-validation checkpoint, test it.

    Writes under ``out``: checkpoints/best.ckpt, logs/, config.json, metrics.json. Returns the metrics.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    from .infer import evaluate_split

    cfg = resolve_config(model, config, overrides)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    data = load_series(data_path, seq_len, pred_len, features, target, date_col, fill, split)  # validates first
    out_dir = prepare_run_dir(out, overwrite, clear=("metrics.json", "config.json"))
    cycle_len = auto_cycle_len(data.timestamps) if cfg["cycle"] == "auto" else int(cfg["cycle"])
    seed_everything(seed)
    module = ForecastModule(model, cfg["model"], seq_len, pred_len, len(data.in_cols), len(data.out_cols),
                            lr=cfg["lr"], weight_decay=cfg["weight_decay"], loss=cfg["loss"],
                            lr_decay=cfg["lr_decay"], data_info=data_info(data), cycle_len=cycle_len,
                            lr_hold=int(cfg["lr_hold"]))
    write_json(out_dir / "config.json", dict(cfg, data=str(data_path), seq_len=seq_len, pred_len=pred_len,
                                             features=features, target=data.target, seed=seed,
                                             cycle_len=cycle_len))
    tk = dict(trainer_kwargs or {})
    tk.setdefault("max_time", max_time)
    trainer = make_trainer(out_dir, max_epochs=cfg["max_epochs"], monitor="val_loss", progress=progress,
                           callbacks=[EarlyStopping("val_loss", patience=cfg["patience"], mode="min")],
                           deterministic=False, **tk)
    t0 = time.time()
    trainer.fit(module, data.loader("train", cfg["batch_size"], num_workers),
                data.loader("val", cfg["batch_size"], num_workers))
    train_s = time.time() - t0
    cb = trainer.checkpoint_callback
    best = Path(cb.best_model_path) if cb is not None and cb.best_model_path else best_or_last_checkpoint(out_dir)
    module = load_module(best, ForecastModule)
    result = dict(model=model, data=str(data_path), seq_len=seq_len, pred_len=pred_len, features=features,
                  seed=seed, cycle_len=cycle_len, epochs=int(trainer.current_epoch), train_time_s=round(train_s, 1),
                  n_params=sum(p.numel() for p in module.parameters()), checkpoint=str(best))
    result["val"] = evaluate_split(module, data, "val")
    result["test"] = evaluate_split(module, data, "test")
    write_json(out_dir / "metrics.json", result)
    return result
