"""Graph networks behind one forward signature: ``GraphNet(batch) -> predictions``.

``layer`` picks the body, everything else (input encoders, PE/SE, heads) is shared:
  * "gmn": Graph Mamba Network (Behrouz & Hashemi 2024): per node, tokens from random walks of
    several lengths (length 0: the node itself), ordered longest walks first and the node last,
    a bidirectional selective SSM (``core.layers.BiMamba``) over each node's tokens; optional
    local MPNN (GINE or gated GCN) added GPS-style.
  * "graph_mamba": Graph-Mamba (Wang et al. 2024): gated GCN + BiMamba over each graph's nodes
    sorted by degree, ties broken at random in training; evaluation averages ``eval_orderings``
    orderings (fixed seed, so predictions are reproducible).
  * "gin": GIN/GINE (Xu et al. 2019), sum readout of every layer.
  * "gps": GraphGPS (Rampasek et al. 2022) with PyG ``GPSConv``: GINE + full multi-head attention.
Shapes: a PyG ``Batch`` with ``x_cat (n, Kc)``, ``x (n, F)``, ``edge_index (2, m)``, ``e_cat``,
``edge_attr``, ``batch (n,)``, optional ``rwse (n, S)`` / ``lap_pe (n, P)``. Output: ``(G, C)``
for level "graph", ``(n, C)`` for "node", ``(m, C)`` for "edge".
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.layers import BiMamba

LAYERS = ("gmn", "graph_mamba", "gin", "gps")

DEFAULTS: Dict = dict(layer="gmn", d_model=64, n_layers=3, dropout=0.1, d_state=16, expand=2, d_conv=4,
                      walk_lengths=[8, 4, 2], num_walks=2, local="gine", eval_orderings=4, heads=4,
                      pool="mean", rw_steps=16, lap_k=8)


# --------------------------------------------------------------------------------------- tokenisation

def csr(edge_index: torch.Tensor, num_nodes: int):
    """(rowptr (n+1,), col (m,)) of ``edge_index`` sorted by source."""
    row, col = edge_index
    order = torch.argsort(row * num_nodes + col)
    deg = torch.bincount(row, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=row.device)
    rowptr[1:] = torch.cumsum(deg, 0)
    return rowptr, col[order]


def random_walks(edge_index: torch.Tensor, num_nodes: int, length: int, num_walks: int,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform random walks from every node: ``(n, num_walks, length + 1)`` node ids, column 0 the
    start node. A node without neighbours stays where it is."""
    rowptr, col = csr(edge_index, num_nodes)
    deg = rowptr[1:] - rowptr[:-1]
    cur = torch.arange(num_nodes, device=edge_index.device).repeat_interleave(num_walks)
    path = [cur]
    for _ in range(length):
        d = deg[cur]
        r = torch.rand(cur.shape, generator=generator, device="cpu").to(cur.device)
        step = rowptr[cur] + (r * d).long().clamp(max=(d - 1).clamp(min=0))
        nxt = torch.where(d > 0, col[step.clamp(max=max(len(col) - 1, 0))] if len(col) else cur, cur)
        path.append(nxt)
        cur = nxt
    return torch.stack(path, -1).view(num_nodes, num_walks, length + 1)


def token_layout(walk_lengths: Sequence[int], num_walks: int) -> List[int]:
    """The walk length of every token, in sequence order: longest walks first, the node itself
    (length 0) last, e.g. ``[8, 8, 4, 4, 2, 2, 0]`` for lengths (2, 4, 8) x 2 walks."""
    return [m for m in sorted({int(m) for m in walk_lengths if m > 0}, reverse=True)
            for _ in range(num_walks)] + [0]


def walk_tokens(h: torch.Tensor, walks: Dict[int, torch.Tensor], layout: Sequence[int]) -> torch.Tensor:
    """Token features ``(n, T, d)``: a walk token is the mean of its nodes' features (the walk's
    neighbourhood), the last token the node's own features; order as ``layout``."""
    toks = []
    for m in dict.fromkeys(layout):
        if m == 0:
            toks.append(h.unsqueeze(1))
        else:
            w = walks[m]                                  # (n, num_walks, m + 1)
            toks.append(h[w].mean(2))                     # (n, num_walks, d)
    return torch.cat(toks, 1)


def degree_order(batch: torch.Tensor, degree: torch.Tensor, generator: Optional[torch.Generator] = None,
                 randomise: bool = True) -> torch.Tensor:
    """Permutation of nodes: grouped by graph, ascending degree within a graph (Graph-Mamba puts
    high-degree nodes last so they see the most context), ties broken at random."""
    tie = (torch.rand(degree.shape, generator=generator).to(degree.device) if randomise
           else torch.zeros(degree.shape, device=degree.device))
    key = batch.double() * (degree.max().double() + 2) + degree.double() + tie.double() * 0.5
    return torch.argsort(key)


# ------------------------------------------------------------------------------------------ encoders

class CatEncoder(nn.Module):
    """Sum of one embedding per categorical column (OGB's AtomEncoder/BondEncoder) plus a linear map
    of continuous columns: ``(N, K) long, (N, F) float -> (N, d)``."""

    def __init__(self, cat_dims: Sequence[int], n_cont: int, d: int):
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(int(c), d) for c in cat_dims)
        self.lin = nn.Linear(n_cont, d) if n_cont else None
        self.bias = nn.Parameter(torch.zeros(d))  # graphs without features still get a vector

    def forward(self, cat: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        out = self.bias.expand(max(cat.shape[0], cont.shape[0]), -1)
        for j, e in enumerate(self.embs):
            out = out + e(cat[:, j].clamp(0, e.num_embeddings - 1))
        if self.lin is not None:
            out = out + self.lin(cont.float())
        return out


def _mlp(d_in: int, d_out: int, hidden: Optional[int] = None) -> nn.Sequential:
    hidden = hidden or d_in
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def _local_conv(kind: str, d: int):
    from torch_geometric.nn import GINEConv, ResGatedGraphConv

    if kind == "gine":
        return GINEConv(_mlp(d, d), edge_dim=d)
    if kind == "gatedgcn":
        return ResGatedGraphConv(d, d, edge_dim=d)
    raise ValueError(f"unknown local MPNN {kind!r}; choose gine or gatedgcn")


class _FFN(nn.Module):
    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, h):
        return self.norm(h + self.net(h))


class GMNLayer(nn.Module):
    """One GMN layer: ``h + BiMamba(walk tokens)[last] (+ local MPNN(h))``, then norm and FFN."""

    def __init__(self, d: int, cfg: Dict):
        super().__init__()
        self.mamba = BiMamba(d, d_state=cfg["d_state"], expand=cfg["expand"], d_conv=cfg["d_conv"])
        self.local = _local_conv(cfg["local"], d) if cfg.get("local") else None
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d) if self.local is not None else None
        self.drop = nn.Dropout(cfg["dropout"])
        self.ffn = _FFN(d, cfg["dropout"])

    def forward(self, h, edge_index, e, ctx):
        toks = walk_tokens(h, ctx["walks"], ctx["layout"])          # (n, T, d)
        g = self.mamba(toks)[:, -1]                                  # the node's own (last) token
        out = self.norm1(h + self.drop(g))
        if self.local is not None:
            out = out + self.norm2(h + self.drop(self.local(h, edge_index, e)))
        return self.ffn(out)


class GraphMambaLayer(nn.Module):
    """One Graph-Mamba layer: gated GCN + BiMamba over each graph's nodes in degree order."""

    def __init__(self, d: int, cfg: Dict):
        super().__init__()
        self.mamba = BiMamba(d, d_state=cfg["d_state"], expand=cfg["expand"], d_conv=cfg["d_conv"])
        self.local = _local_conv(cfg.get("local") or "gatedgcn", d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg["dropout"])
        self.ffn = _FFN(d, cfg["dropout"])

    def forward(self, h, edge_index, e, ctx):
        from torch_geometric.utils import to_dense_batch

        outs = []
        for perm in ctx["orders"]:                                   # one in training, several in eval
            dense, mask = to_dense_batch(h[perm], ctx["batch"][perm])
            # core's ragged BiMamba: the backward scan reads each graph's nodes reversed within its length
            y = self.mamba(dense, lengths=mask.sum(1))[mask]
            g = torch.empty_like(y)
            g[perm] = y
            outs.append(g)
        g = torch.stack(outs).mean(0)
        out = self.norm1(h + self.drop(g)) + self.norm2(h + self.drop(self.local(h, edge_index, e)))
        return self.ffn(out)


class GINLayer(nn.Module):
    def __init__(self, d: int, cfg: Dict):
        super().__init__()
        from torch_geometric.nn import GINEConv

        self.conv = GINEConv(_mlp(d, d), edge_dim=d, train_eps=True)
        self.bn = nn.BatchNorm1d(d)
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, h, edge_index, e, ctx):
        return self.drop(F.relu(self.bn(self.conv(h, edge_index, e))))


class GPSLayer(nn.Module):
    def __init__(self, d: int, cfg: Dict):
        super().__init__()
        from torch_geometric.nn import GPSConv

        self.conv = GPSConv(d, _local_conv("gine", d), heads=cfg["heads"], dropout=cfg["dropout"])

    def forward(self, h, edge_index, e, ctx):
        return self.conv(h, edge_index, ctx["batch"], edge_attr=e)


_LAYER_CLS = {"gmn": GMNLayer, "graph_mamba": GraphMambaLayer, "gin": GINLayer, "gps": GPSLayer}


class GraphNet(nn.Module):
    """Encoders -> ``n_layers`` layers of kind ``cfg['layer']`` -> graph/node/edge head.

    ``schema`` (from the data loaders) fixes the input encoders; ``out_dim`` the prediction width.
    ``forward(batch) -> (G|n|m, out_dim)``.
    """

    def __init__(self, cfg: Dict, schema: Dict, out_dim: int, level: str = "graph"):
        super().__init__()
        cfg = {**DEFAULTS, **cfg}
        if cfg["layer"] not in LAYERS:
            raise ValueError(f"unknown layer {cfg['layer']!r}; choose one of {LAYERS}")
        self.cfg, self.level = cfg, level
        d = cfg["d_model"]
        self.node_enc = CatEncoder(schema.get("node_cat", []), schema.get("node_dim", 0), d)
        self.edge_enc = CatEncoder(schema.get("edge_cat", []), schema.get("edge_dim", 0), d)
        self.rw_enc = nn.Linear(cfg["rw_steps"], d) if cfg["rw_steps"] else None
        self.lap_enc = nn.Linear(cfg["lap_k"], d) if cfg["lap_k"] else None
        self.layers = nn.ModuleList(_LAYER_CLS[cfg["layer"]](d, cfg) for _ in range(cfg["n_layers"]))
        self.layout = token_layout(cfg["walk_lengths"], cfg["num_walks"])
        if level == "graph" and cfg["layer"] == "gin":      # GIN's readout: every layer's pooled sum
            self.head = _mlp(d * (cfg["n_layers"] + 1), out_dim, d)
        elif level == "edge":
            self.head = _mlp(2 * d, out_dim, d)
        else:
            self.head = _mlp(d, out_dim, d)
        self.eval_seed = 0

    def _context(self, batch, n: int) -> Dict:
        from torch_geometric.utils import degree

        gen = None
        if not self.training:  # fixed randomness: evaluation and predict are reproducible
            gen = torch.Generator().manual_seed(self.eval_seed)
        b = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
            n, dtype=torch.long, device=batch.edge_index.device)
        ctx = {"batch": b, "layout": self.layout}
        if self.cfg["layer"] == "gmn":
            ctx["walks"] = {m: random_walks(batch.edge_index, n, m, self.cfg["num_walks"], gen)
                            for m in set(self.layout) if m > 0}
        if self.cfg["layer"] == "graph_mamba":
            deg = degree(batch.edge_index[0], n)
            k = 1 if self.training else max(1, int(self.cfg["eval_orderings"]))
            ctx["orders"] = [degree_order(b, deg, gen) for _ in range(k)]
        return ctx

    def encode(self, batch) -> torch.Tensor:
        n = int(batch.num_nodes)
        dev = batch.edge_index.device
        get = lambda k, w, dt: getattr(batch, k, None) if getattr(batch, k, None) is not None \
            else torch.zeros(n if k[0] == "x" else batch.edge_index.shape[1], w, dtype=dt, device=dev)  # noqa
        h = self.node_enc(get("x_cat", 0, torch.long), get("x", 0, torch.float))
        if self.rw_enc is not None and getattr(batch, "rwse", None) is not None:
            h = h + self.rw_enc(batch.rwse.float())
        if self.lap_enc is not None and getattr(batch, "lap_pe", None) is not None:
            pe = batch.lap_pe.float()
            if self.training:  # eigenvectors are defined up to sign: flip at random per graph & column
                b = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(n, dtype=torch.long)
                sign = torch.randint(0, 2, (int(b.max()) + 1, pe.shape[1]), device=pe.device) * 2 - 1
                pe = pe * sign[b]
            h = h + self.lap_enc(pe)
        return h

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        h = self.encode(batch)
        n = h.shape[0]
        e = self.edge_enc(getattr(batch, "e_cat", None) if getattr(batch, "e_cat", None) is not None
                          else torch.zeros(batch.edge_index.shape[1], 0, dtype=torch.long),
                          getattr(batch, "edge_attr", None) if getattr(batch, "edge_attr", None) is not None
                          else torch.zeros(batch.edge_index.shape[1], 0))
        ctx = self._context(batch, n)
        hs = [h]
        for layer in self.layers:
            h = layer(h, batch.edge_index, e, ctx)
            hs.append(h)
        if self.level == "node":
            return self.head(h)
        if self.level == "edge":
            src, dst = batch.edge_index
            return self.head(torch.cat([h[src] * h[dst], h[src] + h[dst]], -1))
        b, size = ctx["batch"], int(getattr(batch, "num_graphs", 1) or 1)
        if self.cfg["layer"] == "gin":
            return self.head(torch.cat([global_add_pool(x, b, size) for x in hs], -1))
        pool = global_add_pool if self.cfg["pool"] == "sum" else global_mean_pool
        return self.head(pool(h, b, size))
