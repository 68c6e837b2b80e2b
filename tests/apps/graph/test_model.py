"""Tokenisation, orderings, ragged bidirectional scans and the shared forward signature."""
from __future__ import annotations

import pytest
import torch

from apps.graph.model import GraphNet, degree_order, random_walks, token_layout, walk_tokens
from core.layers import BiMamba

SCHEMA = {"node_cat": [4], "node_dim": 2, "edge_cat": [3], "edge_dim": 0}


def _batch(n_graphs=3, seed=0):
    from torch_geometric.data import Batch, Data
    from torch_geometric.utils import to_undirected

    gen = torch.Generator().manual_seed(seed)
    gs = []
    for k in range(n_graphs):
        n = 5 + 2 * k
        ei = to_undirected(torch.stack([torch.arange(n - 1), torch.arange(1, n)]))  # a path
        ei = to_undirected(torch.cat([ei, torch.tensor([[0], [n - 1]])], 1))      # + closing edge: a cycle
        gs.append(Data(x_cat=torch.randint(0, 4, (n, 1), generator=gen), x=torch.randn(n, 2, generator=gen),
                       edge_index=ei, e_cat=torch.randint(0, 3, (ei.shape[1], 1), generator=gen),
                       edge_attr=torch.zeros(ei.shape[1], 0), y=torch.tensor([k % 2]), num_nodes=n,
                       rwse=torch.rand(n, 16, generator=gen), lap_pe=torch.randn(n, 8, generator=gen)))
    return Batch.from_data_list(gs)


def test_token_layout_longest_first_node_last():
    assert token_layout([2, 8, 4], 2) == [8, 8, 4, 4, 2, 2, 0]
    assert token_layout([0, 3], 1) == [3, 0]


def test_random_walks_follow_edges_and_tokens_end_with_the_node():
    b = _batch()
    n = b.num_nodes
    w = random_walks(b.edge_index, n, 5, 3, torch.Generator().manual_seed(1))
    assert w.shape == (n, 3, 6) and torch.equal(w[:, :, 0], torch.arange(n).view(-1, 1).expand(n, 3))
    edges = set(map(tuple, b.edge_index.t().tolist()))
    steps = torch.stack([w[..., :-1], w[..., 1:]], -1).view(-1, 2).tolist()
    assert all(tuple(s) in edges for s in steps)
    h = torch.randn(n, 4)
    walks = {5: w, 2: w[..., :3]}
    toks = walk_tokens(h, walks, token_layout([2, 5], 3))
    assert toks.shape == (n, 7, 4)
    torch.testing.assert_close(toks[:, -1], h)                           # the node itself is last
    torch.testing.assert_close(toks[:, 0], h[w[:, 0]].mean(1))           # longest walk first
    torch.testing.assert_close(toks[:, 3], h[w[:, 0, :3]].mean(1))
    iso = random_walks(torch.zeros(2, 0, dtype=torch.long), 3, 4, 1)
    assert torch.equal(iso[:, 0, -1], torch.arange(3))                  # isolated nodes stay put


def test_degree_order_groups_graphs_and_breaks_ties_at_random():
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    deg = torch.tensor([3., 1., 1., 2., 1., 1., 2.])
    orders = {tuple(degree_order(batch, deg, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    for o in orders:
        o = list(o)
        assert set(o[:4]) == {0, 1, 2, 3} and o[3] == 0 and o[2] == 3 and o[6] == 6
    assert len(orders) == 4                                              # 2 ties x 2 ties, all seen
    assert degree_order(batch, deg, randomise=False).tolist() == [1, 2, 3, 0, 4, 5, 6]


def test_padded_node_sequences_ignore_padding():
    """Graph-Mamba pads each graph's node sequence; core's BiMamba with ``lengths`` must give every
    graph what it gets alone, whatever sits in the padding."""
    torch.manual_seed(0)
    layer = BiMamba(8, d_state=4, expand=1).eval()
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, 8)
    x[1, 3:] = 100.0                                                     # garbage in the padding
    y = layer(x, lengths=lengths)
    torch.testing.assert_close(y[0], layer(x[:1])[0])
    torch.testing.assert_close(y[1, :3], layer(x[1:2, :3])[0])


@pytest.mark.parametrize("layer", ["gmn", "graph_mamba", "gin", "gps"])
def test_one_forward_signature_all_levels(layer):
    b = _batch()
    cfg = dict(layer=layer, d_model=16, n_layers=1, d_state=4, expand=1, heads=2, walk_lengths=[3], num_walks=1)
    for level, rows in (("graph", b.num_graphs), ("node", b.num_nodes), ("edge", b.edge_index.shape[1])):
        net = GraphNet(cfg, SCHEMA, 3, level)
        out = net(b)
        assert out.shape == (rows, 3) and torch.isfinite(out).all()
        out.sum().backward()
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(b), net(b))                   # evaluation is reproducible


def test_graph_mamba_eval_average_is_near_invariant_to_node_order():
    """Averaging several random tie-breaks at evaluation makes the prediction (almost) independent of
    how the nodes are numbered: much less spread than single orderings."""
    from torch_geometric.data import Batch

    torch.manual_seed(0)
    b = _batch(1)
    g = b.to_data_list()[0]
    cfg = dict(layer="graph_mamba", d_model=16, n_layers=1, d_state=4, expand=1, lap_k=0)

    def relabel(perm):
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm))
        h = g.clone()
        h.x_cat, h.x, h.rwse = g.x_cat[perm], g.x[perm], g.rwse[perm]
        h.edge_index = inv[g.edge_index]
        return Batch.from_data_list([h])

    perms = [torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    spread = {}
    for k in (1, 32):
        torch.manual_seed(1)  # the same weights for both k
        net = GraphNet({**cfg, "eval_orderings": k}, SCHEMA, 2, "graph").eval()
        with torch.no_grad():
            outs = torch.stack([net(relabel(p)) for p in perms])
        spread[k] = float(outs.std(0).mean())
    assert spread[32] < 0.5 * spread[1]
