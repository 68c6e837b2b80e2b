"""LightningModule around the sequential recommenders (``nets.py``): losses, validation metrics, serving data.

Losses: ``ce`` is cross-entropy over every item (RecBole's CE); ``sampled`` is a sampled softmax with
``n_negatives`` shared negatives drawn from the training popularity and the logQ correction (logits minus
log(K q(i))), accidental hits masked, for catalogues too large for a full softmax.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import lightning as L
import torch
import torch.nn.functional as F

from .metrics import rank_metrics, target_ranks
from .nets import MODEL_DEFAULTS, MODELS, build_net

LOSSES = ("ce", "sampled")
TRAIN_MODES = ("window", "prefix")


class RecModule(L.LightningModule):
    """Everything needed to rebuild the network is a hyperparameter; the raw-id maps and user histories for
    serving travel in the checkpoint under ``"recsys"`` (plain lists and tensors: loadable with weights_only)."""

    def __init__(self, model_name: str, model_cfg: Dict[str, Any], n_items: int, max_len: int = 50,
                 loss: str = "ce", n_negatives: int = 1000, lr: float = 1e-3, weight_decay: float = 0.0,
                 train_mode: str = "window"):
        super().__init__()
        if model_name not in MODELS:
            raise ValueError(f"unknown model {model_name!r}; choose from {sorted(MODELS)}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        self.save_hyperparameters()
        self.net = build_net(model_name, n_items, max_len, **model_cfg)
        # log proposal probabilities for the sampled softmax (uniform until set from the training counts)
        self.register_buffer("log_q", torch.full((n_items + 1,), -math.log(n_items)), persistent=True)
        self.serving: Dict[str, Any] = {}

    # -- data carried for serving ------------------------------------------------------------------------------
    def set_popularity(self, counts: torch.Tensor) -> None:
        """counts (n_items+1,) training interactions per item -> the sampled-softmax proposal and cold-start list."""
        c = counts.double().clone()
        c[0] = 0
        q = (c + 1.0) / (c[1:].sum() + len(c) - 1)  # add-one: every real item can be drawn
        q[0] = 0
        self.log_q.copy_(torch.log(q.clamp(min=1e-30)).float())

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["recsys"] = self.serving

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.serving = checkpoint.get("recsys", {})

    # -- model -------------------------------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """items (B, L), gaps (B, L) -> (B, n_items + 1) scores for the next item (column 0 is padding)."""
        return self.net.scores(self.net.encode(items, gaps))

    def _loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h (M, d), target (M,) -> scalar loss."""
        E = self.net.item_embedding.weight
        if self.hparams.loss == "ce":
            return F.cross_entropy(h @ E.t(), target)
        K = int(self.hparams.n_negatives)
        probs = self.log_q.exp()
        neg = torch.multinomial(probs, K, replacement=True)                      # (K,) shared negatives
        pos_logit = (h * E[target]).sum(-1, keepdim=True) - (self.log_q[target][:, None] + math.log(K))
        neg_logit = h @ E[neg].t() - (self.log_q[neg][None] + math.log(K))
        neg_logit = neg_logit.masked_fill(neg[None] == target[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos_logit, neg_logit], 1)
        return F.cross_entropy(logits, torch.zeros_like(target))

    def training_step(self, batch, batch_idx):
        if "targets" in batch:  # windows: every real position predicts the next item
            h = self.net(batch["items"], batch["gaps"])
            keep = batch["targets"] > 0
            loss = self._loss(h[keep], batch["targets"][keep])
            n = int(keep.sum())
        else:
            loss = self._loss(self.net.encode(batch["items"], batch["gaps"]), batch["target"])
            n = batch["target"].shape[0]
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        scores = self(batch["items"], batch["gaps"])
        scores[:, 0] = float("-inf")
        m = rank_metrics(target_ranks(scores, batch["target"]), ks=(10,))
        B = scores.shape[0]
        for name in ("ndcg@10", "hit@10", "mrr@10"):
            self.log(f"val_{name}", m[name].mean().float(), on_epoch=True, prog_bar=name == "ndcg@10",
                     batch_size=B, sync_dist=True)

    def configure_optimizers(self):
        from core.engine import configure_optimizers

        # no decay on SSM tags, norms and biases (core.engine.optim)
        return configure_optimizers(self, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, optimizer="adam")


def model_config(name: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The model's defaults updated with ``overrides`` (unknown keys are an error)."""
    if name not in MODEL_DEFAULTS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODEL_DEFAULTS)}")
    cfg = dict(MODEL_DEFAULTS[name])
    unknown = sorted(set(overrides or {}) - set(cfg) - {"gap_mean", "gap_std", "backend", "eps"})
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides or {})
    return cfg
