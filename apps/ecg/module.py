"""The ECG LightningModule: multi-label loss, lead masking (one model for every Challenge lead set),
validation thresholds tuned for the Challenge score, and everything ``predict`` needs (config, classes,
leads, lead sets, thresholds) saved in the checkpoint."""
from __future__ import annotations

from typing import List, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from core.engine import UserError, configure_optimizers

from .labels import LabelSpace
from .metrics import evaluate, tune_thresholds
from .model import build_model, model_config

PRESENT_ABOVE = 1e-2  # a normalised lead whose window never exceeds this is absent (zero-filled or flat)


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
        self.log("val_loss", torch.stack(losses).mean(), prog_bar=True, on_epoch=True, batch_size=len(x),
                 sync_dist=True)
        self._val_probs.append(torch.stack(probs))        # (S, B, C)
        self._val_labels.append(y.detach().cpu())

    def on_validation_epoch_end(self):
        if not self._val_probs:
            return
        p_all = torch.cat(self._val_probs, 1)             # (S, N, C)
        y = torch.cat(self._val_labels)
        self._val_probs.clear()
        self._val_labels.clear()
        if self.trainer is not None and self.trainer.world_size > 1:
            # DDP: thresholds and metrics over the whole validation set, the same on every rank
            # (the distributed sampler gives each rank the same number of windows)
            g = self.all_gather(p_all.to(self.device)).cpu()   # (W, S, N, C)
            p_all = g.permute(1, 0, 2, 3).reshape(g.shape[1], -1, g.shape[-1])
            y = self.all_gather(y.to(self.device)).reshape(-1, y.shape[-1]).cpu()
        p_all, y = p_all.numpy(), y.numpy()
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
