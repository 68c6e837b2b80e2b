"""Full-ranking metrics with one held-out item per user (RecBole's Hit, NDCG, MRR)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

KS = (5, 10, 20)


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores (B, n) with excluded items at -inf, target (B,) -> 0-based rank (B,) of each target.

    Ties count against the target (an untrained model with equal scores ranks it last, not first)."""
    s = scores.gather(1, target[:, None])
    return (scores > s).sum(1) + (scores == s).sum(1) - 1


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int] = KS) -> Dict[str, torch.Tensor]:
    """0-based ranks (B,) -> per-row ``hit@k`` (rank < k), ``ndcg@k`` (1/log2(rank+2) if hit),
    ``mrr@k`` (1/(rank+1) if hit), each (B,) float."""
    r = ranks.double()
    out = {}
    for k in ks:
        hit = (ranks < k).double()
        out[f"hit@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(r + 2)
        out[f"mrr@{k}"] = hit / (r + 1)
    return out
