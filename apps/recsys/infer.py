"""Evaluation and serving: checkpoint loading (no code runs), full-ranking metrics, chunked top-k with seen items
excluded, cold start, and constant-time incremental updates of a user's recurrent state."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from core.engine import UserError, safe_load

from .data import SeqData, loader
from .metrics import KS, rank_metrics, target_ranks
from .model import RecModule


def load_checkpoint(path: str | Path) -> RecModule:
    """Rebuild a :class:`RecModule` from a checkpoint file or run folder (``weights_only`` loading: a
    checkpoint from elsewhere cannot run code). Any problem is one :class:`UserError` line."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.ckpt", p / "checkpoints" / "last.ckpt"):
            if cand.is_file():
                p = cand
                break
    ck = safe_load(p)  # weights_only + the project's allow-list: pickled code is refused in one line
    try:
        hp = dict(ck["hyper_parameters"])
        module = RecModule(**hp)
        module.load_state_dict(ck["state_dict"], strict=True)
        module.serving = ck.get("recsys", {})
    except Exception as e:  # another app's checkpoint, missing keys...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(p, f"not a recsys checkpoint ({first})") from None
    if not module.serving.get("item_ids"):
        raise UserError(p, "checkpoint carries no id map (not written by ssm-recsys train)")
    module.eval()
    return module


@torch.no_grad()
def evaluate_split(module: RecModule, data: SeqData, split: str = "test", batch_size: int = 256,
                   ks: Sequence[int] = KS) -> Dict[str, float]:
    """RecBole full ranking: every item scored (padding excluded; history items are not masked, as in RecBole's
    sequential evaluation), HR/NDCG/MRR at ``ks`` averaged over the split's users."""
    module.eval()
    sums: Dict[str, float] = {}
    n = 0
    dev = module.device
    for batch in loader(data, split, batch_size):
        scores = module(batch["items"].to(dev), batch["gaps"].to(dev))
        scores[:, 0] = float("-inf")
        for k, v in rank_metrics(target_ranks(scores, batch["target"].to(dev)), ks).items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        n += scores.shape[0]
    return {k: round(v / max(n, 1), 6) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------- serving
@dataclass
class Histories:
    """Users' (item index, timestamp) histories as the checkpoint carries them, plus new events."""

    items: List[np.ndarray]
    times: List[np.ndarray]
    new_from: List[int] = field(default_factory=list)  # index where appended events begin (per user)


def user_history(module: RecModule, u: int) -> Tuple[np.ndarray, np.ndarray]:
    """User index ``u``'s stored (items (n,), times (n,))."""
    sv = module.serving
    s, e = int(sv["offsets"][u]), int(sv["offsets"][u + 1])
    return sv["items"][s:e].numpy(), sv["times"][s:e].numpy()


def _gaps(times: np.ndarray) -> np.ndarray:
    g = np.diff(times, prepend=times[:1]).astype(np.float32)
    return np.clip(g, 0, None)


@torch.no_grad()
def encode_histories(module: RecModule, items: List[np.ndarray], times: List[np.ndarray]) -> torch.Tensor:
    """Full re-encode of the last ``max_len`` interactions of each history -> (B, d_model)."""
    L = module.hparams.max_len
    B = len(items)
    it = np.zeros((B, L), np.int64)
    gp = np.zeros((B, L), np.float32)
    for b, (i, t) in enumerate(zip(items, times)):
        g = _gaps(t)[-L:]
        it[b, :len(g)], gp[b, :len(g)] = i[-L:], g
    return module.net.encode(torch.from_numpy(it).to(module.device), torch.from_numpy(gp).to(module.device))


class UserState:
    """A user's recurrent state (causal models): ``update`` costs one step whatever the history length.

    ``UserState.from_history(module, items, times)`` steps through the history once (or restore a cached
    state); ``update(item, timestamp)`` then equals a full re-encode of history + the new interaction."""

    def __init__(self, module: RecModule):
        if not module.net.causal_step:
            raise ValueError(f"{module.hparams.model_name} is not recurrent: re-encode the history instead")
        self.module, self.state = module, module.net.init_state(1)
        self.last_time: Optional[float] = None
        self.hidden: Optional[torch.Tensor] = None

    @classmethod
    def from_history(cls, module: RecModule, items: np.ndarray, times: np.ndarray,
                     prev_time: Optional[float] = None) -> "UserState":
        """``prev_time``: timestamp of the interaction before ``items[0]`` (its gap), if the history was cut."""
        st = cls(module)
        st.last_time = prev_time
        for i, t in zip(items, times):
            st.update(int(i), float(t))
        return st

    @torch.no_grad()
    def update(self, item: int, timestamp: float) -> torch.Tensor:
        """One new interaction (item index, timestamp in seconds) -> hidden (d_model,)."""
        gap = 0.0 if self.last_time is None else max(timestamp - self.last_time, 0.0)
        dev = self.module.device
        h, self.state = self.module.net.step(torch.tensor([item], device=dev),
                                             torch.tensor([gap], dtype=torch.float32, device=dev), self.state)
        self.last_time, self.hidden = timestamp, h[0]
        return self.hidden


@torch.no_grad()
def topk_chunked(module: RecModule, h: torch.Tensor, k: int, exclude: Optional[List[np.ndarray]] = None,
                 chunk: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items for hidden states h (B, d) scoring ``chunk`` items at a time (memory B * chunk, so 10^6
    items fit), with ``exclude[b]`` item indices removed. Returns (scores (B, k), item indices (B, k)); rows
    with fewer than k candidates end in -inf / index 0."""
    E = module.net.item_embedding.weight
    h = h.to(E.device)
    n = E.shape[0] - 1
    B = h.shape[0]
    rows = np.concatenate([np.full(len(x), b) for b, x in enumerate(exclude)]) if exclude else np.zeros(0, int)
    cols = np.concatenate(list(exclude)) if exclude else np.zeros(0, int)
    best_s = torch.full((B, 0), float("-inf"), device=E.device)
    best_i = torch.zeros((B, 0), dtype=torch.long, device=E.device)
    for start in range(1, n + 1, chunk):
        end = min(start + chunk, n + 1)
        s = h @ E[start:end].t()
        sel = (cols >= start) & (cols < end)
        if sel.any():
            s[torch.from_numpy(rows[sel]).to(E.device), torch.from_numpy(cols[sel] - start).to(E.device)] = float("-inf")
        cat_s = torch.cat([best_s, s], 1)
        cat_i = torch.cat([best_i, torch.arange(start, end, device=E.device).expand(B, -1)], 1)
        top = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
        best_s, best_i = top.values, cat_i.gather(1, top.indices)
    return best_s.cpu(), best_i.cpu()


def read_users_file(path: str | Path) -> List[str]:
    """One raw user id per line (a first line ``user_id``/``user`` is a header); blank lines ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "file not found")
    lines = [ln.strip().split(",")[0].split("\t")[0] for ln in p.read_text(encoding="utf-8", errors="replace")
             .splitlines()]
    lines = [ln for ln in lines if ln]
    if lines and lines[0].lower() in ("user", "user_id", "userid", "user_id:token"):
        lines = lines[1:]
    if not lines:
        raise UserError(p, "no user ids in the file")
    return lines


@dataclass
class RecReport:
    cold_users: List[str] = field(default_factory=list)
    cold_served: int = 0
    unknown_items: int = 0
    late_events: int = 0
    incremental_updates: int = 0


def recommend(module: RecModule, users: Sequence[str], k: int = 10, exclude_seen: bool = True,
              cold_start: Optional[str] = None, events: Optional[pd.DataFrame] = None,
              chunk: int = 65536, batch_size: int = 256) -> Tuple[pd.DataFrame, RecReport]:
    """Top-k for raw user ids -> (frame user, rank, item, score in raw ids; report of counted problems).

    ``events`` (user, item, timestamp) are new interactions applied on top of the stored histories: for the
    causal models through the recurrent step (constant cost per event), otherwise by re-encoding. Users
    unknown to the checkpoint are cold: skipped (listed in the report) unless they have events, or
    ``cold_start="popular"`` serves the most popular items."""
    if k < 1:
        raise UserError("--k", f"must be >= 1, got {k}")
    sv = module.serving
    uidx = {u: i for i, u in enumerate(sv["user_ids"])}
    iidx = {it: i + 1 for i, it in enumerate(sv["item_ids"])}
    rep = RecReport()
    new: Dict[str, List[Tuple[int, float]]] = {}
    if events is not None and len(events):
        ev = events.assign(_o=np.arange(len(events))).sort_values(["timestamp", "_o"], kind="stable")
        for u, it, t in zip(ev["user"], ev["item"], ev["timestamp"]):
            j = iidx.get(str(it))
            if j is None:
                rep.unknown_items += 1
                continue
            new.setdefault(str(u), []).append((j, float(t)))
    served: List[str] = []
    items, times, seen, n_hist = [], [], [], []
    for u in dict.fromkeys(str(x) for x in users):  # unique, in the given order
        if u in uidx:
            hi, ht = user_history(module, uidx[u])
        elif u in new:
            hi, ht = np.zeros(0, np.int64), np.zeros(0)
        else:
            rep.cold_users.append(u)
            continue
        ev_u = new.get(u, [])
        if ev_u and len(ht) and ev_u[0][1] < ht[-1]:
            rep.late_events += sum(1 for _, t in ev_u if t < ht[-1])
        ei = np.array([j for j, _ in ev_u], np.int64)
        et = np.array([t for _, t in ev_u], np.float64)
        served.append(u)
        n_hist.append(len(hi))
        items.append(np.concatenate([hi, ei]))
        times.append(np.concatenate([ht, et]))
        seen.append(np.unique(items[-1]) if exclude_seen else np.zeros(0, np.int64))
    out = []
    L = module.hparams.max_len
    for s in range(0, len(served), batch_size):
        sl = slice(s, s + batch_size)
        hs = []
        for b in range(sl.start, min(sl.stop, len(served))):
            if module.net.causal_step and len(items[b]) > n_hist[b]:
                # state over the stored window, then one constant-cost step per new event
                a = max(n_hist[b] - L, 0)
                st = UserState.from_history(module, items[b][a:n_hist[b]], times[b][a:n_hist[b]],
                                            float(times[b][a - 1]) if a > 0 else None)
                for j, t in zip(items[b][n_hist[b]:], times[b][n_hist[b]:]):
                    st.update(int(j), float(t))
                    rep.incremental_updates += 1
                hs.append(st.hidden)
            else:
                hs.append(None)
        todo = [i for i, x in enumerate(hs) if x is None]
        if todo:
            enc = encode_histories(module, [items[sl.start + i] for i in todo], [times[sl.start + i] for i in todo])
            for j, i in enumerate(todo):
                hs[i] = enc[j]
        sc, ix = topk_chunked(module, torch.stack(hs), k, seen[sl], chunk)
        for b, u in enumerate(served[sl]):
            for r in range(sc.shape[1]):
                if torch.isfinite(sc[b, r]):
                    out.append((u, r + 1, sv["item_ids"][int(ix[b, r]) - 1], float(sc[b, r])))
    if rep.cold_users and cold_start == "popular":
        pop = sv["popularity"].clone().double()
        pop[0] = -1
        top = pop.topk(min(k, len(pop) - 1))
        for u in rep.cold_users:
            for r, (c, j) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                out.append((u, r + 1, sv["item_ids"][j - 1], float(c)))
        rep.cold_served = len(rep.cold_users)
    return pd.DataFrame(out, columns=["user", "rank", "item", "score"]), rep
