"""PyG ``NeighborLoader`` for node-level tasks on large graphs, without pyg-lib / torch-sparse.

PyG's ``NeighborSampler`` needs one of those compiled packages for its sampling routine; this
subclass keeps PyG's CSC conversion and loader and replaces only the routine with a vectorised
pure-torch one (uniform sampling without replacement, per hop). With pyg-lib installed the
stock sampler is used instead.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch


def _torch_neighbor_sampler_cls():
    from torch_geometric.sampler import NeighborSampler, SamplerOutput

    class TorchNeighborSampler(NeighborSampler):
        """``NeighborSampler`` whose homogeneous, directional sampling runs in plain torch."""

        def _sample(self, seed, seed_time=None, **kwargs):
            if isinstance(seed, dict) or seed_time is not None or self.disjoint:
                raise ValueError("the pure-torch sampler handles homogeneous, non-temporal, non-disjoint "
                                 "sampling only; install pyg-lib for the rest")
            colptr, row = self.colptr, self.row
            fanouts = self.num_neighbors.get_mapped_values()
            n_total = int(colptr.numel() - 1)
            local = torch.full((n_total,), -1, dtype=torch.long)
            nodes = seed.long().clone()
            local[nodes] = torch.arange(len(nodes))
            frontier = nodes
            rows, cols, edges = [], [], []
            n_nodes, n_edges = [len(nodes)], []
            for k in fanouts:
                start, end = colptr[frontier], colptr[frontier + 1]
                deg = end - start
                take = deg if k < 0 else deg.clamp(max=k)
                # candidate edges of every frontier node, a random key each; keep the `take` smallest
                owner = torch.repeat_interleave(torch.arange(len(frontier)), deg)
                offs = torch.arange(int(deg.sum())) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
                eid = start[owner] + offs
                keys = torch.rand(len(eid))
                order = torch.argsort(owner.double() + keys.double() * 0.5)
                owner, eid = owner[order], eid[order]
                rank = torch.arange(len(eid)) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
                keep = rank < take[owner]
                owner, eid = owner[keep], eid[keep]
                src = row[eid]
                new = torch.unique(src[local[src] < 0])
                local[new] = torch.arange(len(nodes), len(nodes) + len(new))
                nodes = torch.cat([nodes, new])
                rows.append(local[src])
                cols.append(local[frontier[owner]])
                edges.append(eid)
                n_nodes.append(len(new))
                n_edges.append(len(eid))
                frontier = new
            cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
            return SamplerOutput(node=nodes, row=cat(rows), col=cat(cols), edge=cat(edges), batch=None,
                                 num_sampled_nodes=n_nodes, num_sampled_edges=n_edges)

    return TorchNeighborSampler


def neighbor_loader(data, num_neighbors: Sequence[int], input_nodes: Optional[torch.Tensor] = None,
                    batch_size: int = 256, shuffle: bool = False, **kwargs):
    """``torch_geometric.loader.NeighborLoader`` over ``data``: each batch holds ``batch_size`` seed
    nodes first (``batch.batch_size``), then their sampled ``num_neighbors`` hops; ``batch.n_id``
    maps back to ``data``'s node ids."""
    import warnings

    import torch_geometric.typing as pt
    from torch_geometric.loader import NeighborLoader

    sampler = None
    if not (pt.WITH_PYG_LIB or pt.WITH_TORCH_SPARSE):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "without pyg-lib is deprecated": we bring our own routine
            sampler = _torch_neighbor_sampler_cls()(data, num_neighbors=list(num_neighbors))
    return NeighborLoader(data, num_neighbors=list(num_neighbors), input_nodes=input_nodes,
                          batch_size=batch_size, shuffle=shuffle, neighbor_sampler=sampler, **kwargs)


def sampled_counts(loader) -> List[int]:
    """Number of nodes in each batch (for tests and progress)."""
    return [int(b.num_nodes) for b in loader]
