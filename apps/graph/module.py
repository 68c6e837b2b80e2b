"""The LightningModule around :class:`~apps.graph.model.GraphNet`, losses and metrics.

Tasks: "classification" (cross-entropy, accuracy; label -1 is ignored), "multilabel" (BCE on
logits, macro average precision over labels as LRGB computes it; NaN targets ignored),
"regression" (L1 loss, MAE).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .model import DEFAULTS, GraphNet

TASKS = ("classification", "multilabel", "regression")
METRIC = {"classification": ("accuracy", "max"), "multilabel": ("ap", "max"), "regression": ("mae", "min")}


def out_dim(schema: Dict, task: str) -> int:
    """Prediction width for ``task`` given the data schema."""
    if task == "classification":
        if "classes" not in schema:
            raise ValueError("classification needs class labels; this data has continuous targets")
        return len(schema["classes"])
    return int(schema.get("num_targets", 1))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro AP over columns that have both a positive and a negative (LRGB's eval): ``(N, T)``."""
    aps = []
    for j in range(targets.shape[1]):
        ok = ~np.isnan(targets[:, j])
        y, s = targets[ok, j], scores[ok, j]
        if y.sum() == 0 or y.sum() == len(y):
            continue
        order = np.argsort(-s, kind="stable")
        y = y[order]
        tp = np.cumsum(y)
        prec = tp / np.arange(1, len(y) + 1)
        aps.append(float((prec * y).sum() / y.sum()))
    return float(np.mean(aps)) if aps else float("nan")


def compute_metric(task: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """Accuracy / macro AP / MAE of raw outputs ``pred (N, C)`` against ``target``."""
    if len(pred) == 0:
        return float("nan")
    if task == "classification":
        ok = target >= 0
        return float((pred.argmax(-1)[ok] == target[ok]).float().mean()) if ok.any() else float("nan")
    if task == "multilabel":
        return average_precision(pred.float().numpy(), target.float().view(len(pred), -1).numpy())
    t = target.float().view(len(pred), -1)
    ok = ~torch.isnan(t)
    return float((pred.float()[ok] - t[ok]).abs().mean())


def compute_loss(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(pred, target.long().view(-1), ignore_index=-1)
    t = target.float().view(pred.shape)
    ok = ~torch.isnan(t)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(pred[ok], t[ok])
    return F.l1_loss(pred[ok], t[ok])


def select_targets(batch, pred: torch.Tensor, level: str):
    """(pred, target) rows that count: NeighborLoader seeds first, or nodes in ``batch.mask``."""
    y = batch.y
    if level == "node" and getattr(batch, "batch_size", None) is not None and hasattr(batch, "n_id"):
        k = int(batch.batch_size)
        return pred[:k], y[:k]
    if getattr(batch, "mask", None) is not None:
        return pred[batch.mask], y[batch.mask]
    return pred, y


class GraphModule(L.LightningModule):
    """``GraphNet`` + loss/metric for ``task`` at ``level`` ("graph", "node", "edge").

    Everything needed to rebuild it (model config, data schema, task) is saved in the checkpoint.
    Validation may get several loaders: index 0 logs ``val_loss``/``val_metric``, index k>0
    ``val{k}_metric`` (cross-validation uses 1 for the outer test fold).
    """

    def __init__(self, model: Dict, schema: Dict, task: str, level: str = "graph", lr: float = 1e-3,
                 weight_decay: float = 0.0, max_epochs: Optional[int] = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.save_hyperparameters()
        self.task, self.level = task, level
        self.net = GraphNet({**DEFAULTS, **model}, schema, out_dim(schema, task), level)
        self._val: Dict[int, List] = {}
        self.history: List[Dict] = []  # per-epoch validation metrics (cross-validation reads it)

    def forward(self, batch) -> torch.Tensor:
        return self.net(batch)

    def training_step(self, batch, batch_idx):
        pred, y = select_targets(batch, self(batch), self.level)
        loss = compute_loss(self.task, pred, y)
        bs = int(getattr(batch, "num_graphs", 1) or 1)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        pred, y = select_targets(batch, self(batch), self.level)
        self._val.setdefault(dataloader_idx, []).append((pred.detach().float().cpu(), y.detach().cpu()))

    def on_validation_epoch_end(self):
        rec = {"epoch": int(self.current_epoch)}
        for k, parts in sorted(self._val.items()):
            pred = torch.cat([p for p, _ in parts])
            y = torch.cat([t for _, t in parts])
            if self.trainer.world_size > 1:  # every rank saw a shard: score on all of them
                pred, y = self._gather(pred), self._gather(y)
            metric = compute_metric(self.task, pred, y)
            name = "val" if k == 0 else f"val{k}"
            if k == 0:
                loss = float(compute_loss(self.task, pred, y))
                self.log("val_loss", loss, prog_bar=True, rank_zero_only=True, sync_dist=False)
                rec["val_loss"] = loss
            self.log(f"{name}_metric", metric, prog_bar=True, sync_dist=False)
            rec[f"{name}_metric"] = metric
        self._val.clear()
        if not self.trainer.sanity_checking:
            self.history.append(rec)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        out = self.all_gather(t)
        return out.reshape(-1, *t.shape[1:]) if out.dim() > t.dim() else out

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            skip = getattr(p, "_no_weight_decay", False) or p.ndim < 2 or "norm" in name or "emb" in name
            (no_decay if skip else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr)
        epochs = self.hparams.max_epochs
        if not epochs:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(epochs)), eta_min=self.hparams.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
