"""Defaults of the recsys app (torch-free, so the CLI checks config keys before heavy imports)."""
from __future__ import annotations

from typing import Any, Dict

# RecBole's SASRec; Mamba4Rec's and TiM4Rec's published settings (hidden 64, d_state 32, expand 2).
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "tim4rec": dict(d_model=64, n_layers=2, d_state=32, d_conv=4, expand=2, headdim=32, chunk_size=64,
                    dropout=0.2, time_mix="causal"),
    "mamba4rec": dict(d_model=64, n_layers=1, d_state=32, d_conv=4, expand=2, dropout=0.2),
    "sasrec": dict(d_model=64, n_layers=2, n_heads=2, inner_size=256, dropout=0.5, attn_dropout=0.5),
}
MODEL_NAMES = tuple(MODEL_DEFAULTS)

TRAIN_DEFAULTS: Dict[str, Any] = dict(
    max_len=50, user_min=5, item_min=5,            # RecBole: MAX_ITEM_LIST_LENGTH, [5,inf) k-core
    batch_size=64, eval_batch_size=256, lr=1e-3, weight_decay=0.0,
    loss="ce", n_negatives=1000, train_mode="window",
    max_epochs=200, patience=10, model={},
)


def model_keys():
    """Every key a ``model`` section may hold (any model's options)."""
    return sorted({k for d in MODEL_DEFAULTS.values() for k in d} | {"backend", "eps"})
