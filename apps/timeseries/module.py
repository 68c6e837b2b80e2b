"""The LightningModule around any forecaster: loss, validation MSE, the TSLib learning-rate schedule.

Everything evaluate/forecast need (model name and config, data columns, scaler) is a hyperparameter,
so a checkpoint alone rebuilds the model and treats a new CSV exactly like the training one.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import lightning as L
import torch
import torch.nn.functional as F

from core.engine import configure_optimizers

from .models import build_model, linear_path, set_linear_only

STAGES = ("joint", "linear", "residual")


class ForecastModule(L.LightningModule):
    """Wraps ``MODELS[model_name]``; everything needed to rebuild data and model is a hyperparameter."""

    def __init__(self, model_name: str, model_cfg: Dict[str, Any], seq_len: int, pred_len: int,
                 enc_in: int, c_out: int, lr: float = 1e-3, weight_decay: float = 0.0,
                 loss: str = "mse", lr_decay: float = 0.5, data_info: Optional[Dict[str, Any]] = None,
                 cycle_len: int = 0, lr_hold: int = 0, stage: str = "joint", lr_period: int = 1):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.save_hyperparameters()
        self.model = build_model(model_name, seq_len, pred_len, enc_in, c_out, cycle_len=cycle_len, **model_cfg)
        if stage != "joint":
            # "linear": the linear path alone; "residual": the SSM branch on top of a frozen linear path
            set_linear_only(self.model, stage == "linear")
            linear = {id(p) for p in linear_path(self.model)}
            for p in self.model.parameters():
                p.requires_grad_((id(p) in linear) == (stage == "linear"))

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
        self.log("val_loss", F.mse_loss(pred, y), on_epoch=True, prog_bar=True, batch_size=x.shape[0],
                 sync_dist=True)  # DDP: every rank sees the mean over all shards (checkpointing agrees)

    def configure_optimizers(self):
        # trainable parameters only (a stage trains only its own part); TSLib "type1" decay is hold 0,
        # decay 0.5; LTSF-Linear's "type3" is hold 3, decay 0.9
        period = max(1, int(self.hparams.get("lr_period", 1)))  # passes per schedule epoch (small data)
        if period == 1:
            return configure_optimizers(self, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                        optimizer="adam", schedule="step_decay", decay=self.hparams.lr_decay,
                                        hold=self.hparams.lr_hold)
        from core.engine.optim import make_optimizer, step_decay

        opt = make_optimizer(self, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, name="adam")
        factor = step_decay(self.hparams.lr_decay, self.hparams.lr_hold)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda ep: factor(ep // period))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
