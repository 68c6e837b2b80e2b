"""Directional scan orders for N-d data and ``MultiScanMamba``.

An N-d grid (batch, C, *S) is read as K sequences (batch, K, L, C), L = prod(S), one per
order, and merged back. Orders (``ndim = len(S)``):

* ``"forward"``: row-major, the last axis varies fastest (``x.flatten(2)``).
* ``"backward"``: ``"forward"`` reversed.
* ``"axis{i}"``: axis i varies fastest, the other axes keep their order (slowest first);
  ``"axis{ndim-1}"`` equals ``"forward"``. ``"axis{i}-rev"``: that sequence reversed.
* presets: ``"tri"`` = forward, backward, axis0 (SegMamba's tri-orientated scan: forward,
  reverse, inter-slice); ``"cross"`` = forward, axis0, backward, axis0-rev (VMamba's
  cross-scan; for ndim > 2 every axis and its reverse, the fastest-varying-last-axis first).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn

Orders = Union[str, Sequence[str]]
_AXIS = re.compile(r"^axis(\d+)(-rev)?$")


def expand_orders(orders: Orders, ndim: int) -> Tuple[str, ...]:
    """Preset name or list of orders -> tuple of single orders (validated for ``ndim`` axes)."""
    if isinstance(orders, str):
        if orders == "tri":
            orders = ("forward", "backward", "axis0")
        elif orders == "cross":
            axes = [ndim - 1] + list(range(ndim - 1))
            orders = tuple(f"axis{a}" if a != ndim - 1 else "forward" for a in axes)
            orders = orders + tuple(("backward" if o == "forward" else o + "-rev") for o in orders)
        else:
            orders = (orders,)
    out = tuple(orders)
    if not out:
        raise ValueError("scan orders: need at least one order")
    for o in out:
        m = _AXIS.match(o)
        if o not in ("forward", "backward") and (m is None or int(m.group(1)) >= ndim):
            raise ValueError(f"scan orders: unknown order {o!r} for {ndim}-d data; use 'forward', "
                             f"'backward', 'axis<i>' or 'axis<i>-rev' with i < {ndim}, or 'tri'/'cross'")
    return out


@lru_cache(maxsize=64)
def _perm_cached(spatial_shape: Tuple[int, ...], orders: Tuple[str, ...]) -> torch.Tensor:
    ndim = len(spatial_shape)
    L = 1
    for s in spatial_shape:
        L *= s
    grid = torch.arange(L).reshape(spatial_shape)
    rows = []
    for o in orders:
        if o == "forward":
            p = grid.reshape(-1)
        elif o == "backward":
            p = grid.reshape(-1).flip(0)
        else:
            m = _AXIS.match(o)
            axis = int(m.group(1))
            dims = [d for d in range(ndim) if d != axis] + [axis]
            p = grid.permute(dims).reshape(-1)
            if m.group(2):
                p = p.flip(0)
        rows.append(p)
    return torch.stack(rows)


def scan_permutations(spatial_shape: Sequence[int], orders: Orders = "tri") -> torch.Tensor:
    """LongTensor (K, L): row k lists the row-major flat indices of the grid in scan order k,
    so ``seq_k[i] = x.flatten()[perm[k, i]]``. Every row is a permutation of range(L)."""
    shape = tuple(int(s) for s in spatial_shape)
    return _perm_cached(shape, expand_orders(orders, len(shape))).clone()


def flatten_scans(x: torch.Tensor, orders: Orders = "tri") -> torch.Tensor:
    """(B, C, *S) -> (B, K, L, C): the grid read in each of the K orders."""
    B, C = x.shape[:2]
    perm = scan_permutations(x.shape[2:], orders).to(x.device)      # (K, L)
    flat = x.reshape(B, C, -1)                                       # (B, C, L)
    seqs = flat[:, :, perm]                                          # (B, C, K, L)
    return seqs.permute(0, 2, 3, 1)


def merge_scans(y: torch.Tensor, spatial_shape: Sequence[int], orders: Orders = "tri",
                reduce: str = "mean") -> torch.Tensor:
    """(B, K, L, C) -> (B, C, *S): every sequence put back on the grid, then ``reduce`` over K
    ("mean" or "sum"). The mean is a running mean, so K equal copies give back x exactly."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"merge_scans: reduce must be 'mean' or 'sum', got {reduce!r}")
    shape = tuple(int(s) for s in spatial_shape)
    perm = scan_permutations(shape, orders).to(y.device)
    K, L = perm.shape
    if y.shape[1] != K or y.shape[2] != L:
        raise ValueError(f"merge_scans: expected (B, {K}, {L}, C) for shape {shape} and {K} orders, "
                         f"got {tuple(y.shape)}")
    inv = torch.argsort(perm, dim=1)                                 # grid position -> sequence index
    out = None
    for k in range(K):
        grid_k = y[:, k].index_select(1, inv[k])                     # (B, L, C) in row-major order
        if out is None:
            out = grid_k
        elif reduce == "sum":
            out = out + grid_k
        else:
            out = out + (grid_k - out) / (k + 1)
    B, C = y.shape[0], y.shape[3]
    return out.transpose(1, 2).reshape(B, C, *shape)


class MultiScanMamba(nn.Module):
    """A sequence mixer run over several scan orders of an N-d grid, merged back.

    ``forward(x (B, C, *S)) -> (B, C, *S)`` with ``C == d_model``. ``mixer`` is any registered
    name ("mamba", "mamba2", "s4d", "bimamba", "hydra"); ``share=True`` uses one mixer for all
    orders (sequences batched together), else one per order. ``reduce`` merges ("mean"/"sum").
    ``ndim`` (number of spatial axes) is needed only for ``orders="cross"`` with ``share=False``.
    Extra keyword arguments go to the mixer constructor.
    """

    def __init__(self, d_model: int, orders: Orders = "tri", mixer: str = "mamba", share: bool = False,
                 reduce: str = "mean", ndim: int | None = None, layer_idx=None, **mixer_kwargs):
        super().__init__()
        from .block import make_mixer  # late: block imports the registry
        self.d_model, self.orders, self.share, self.reduce, self.ndim = d_model, orders, share, reduce, ndim
        if share:
            n = 1
        elif ndim is not None:
            n = len(expand_orders(orders, ndim))
        elif orders == "cross":
            raise ValueError("MultiScanMamba: orders='cross' depends on the number of axes; "
                             "pass ndim=, share=True or an explicit list of orders")
        else:
            n = 3 if orders == "tri" else len(expand_orders(orders, 1 << 16))
        self.mixers = nn.ModuleList(make_mixer(mixer, d_model, **mixer_kwargs) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, *S = x.shape
        if C != self.d_model:
            raise ValueError(f"MultiScanMamba: expected {self.d_model} channels, got {C}")
        orders = expand_orders(self.orders, len(S))
        seqs = flatten_scans(x, orders)                               # (B, K, L, C)
        K, L = seqs.shape[1], seqs.shape[2]
        if self.share:
            ys = self.mixers[0](seqs.reshape(B * K, L, C)).reshape(B, K, L, C)
        else:
            if K != len(self.mixers):
                raise ValueError(f"MultiScanMamba: {K} orders for {len(S)}-d input, built for "
                                 f"{len(self.mixers)}")
            ys = torch.stack([m(seqs[:, k]) for k, m in enumerate(self.mixers)], dim=1)
        return merge_scans(ys, S, orders, reduce=self.reduce)
