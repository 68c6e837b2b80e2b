"""N-d scan orders: bijections, axis semantics, exact round trips, MultiScanMamba."""
import itertools

import pytest
import torch

from core.layers import (MultiScanMamba, expand_orders, flatten_scans, merge_scans,
                         scan_permutations)

SHAPES = [(5,), (3, 4), (2, 3, 4), (1, 3, 1, 2)]


def all_orders(ndim):
    return ["forward", "backward"] + [f"axis{i}{r}" for i in range(ndim) for r in ("", "-rev")]


@pytest.mark.parametrize("shape", SHAPES)
def test_permutations_are_bijections(shape):
    orders = all_orders(len(shape))
    perm = scan_permutations(shape, orders)
    L = int(torch.tensor(shape).prod())
    assert perm.shape == (len(orders), L) and perm.dtype == torch.long
    for row in perm:
        assert torch.equal(row.sort().values, torch.arange(L))


@pytest.mark.parametrize("shape", SHAPES)
def test_axis_order_makes_that_axis_fastest(shape):
    ndim = len(shape)
    for axis in range(ndim):
        perm = scan_permutations(shape, [f"axis{axis}"])[0]
        coords = torch.stack(torch.unravel_index(perm, shape), dim=1)   # (L, ndim) visited coordinates
        # Consecutive positions differ by +1 along `axis` except at wrap-arounds, every shape[axis] steps.
        n = shape[axis]
        blocks = coords.reshape(-1, n, ndim)
        assert torch.equal(blocks[:, :, axis], torch.arange(n).expand(blocks.shape[0], n))
        others = [d for d in range(ndim) if d != axis]
        # within a block the other coordinates are constant; blocks follow row-major order of the others
        assert (blocks[:, :, others] == blocks[:, :1, others]).all()
        keys = blocks[:, 0, others].tolist()
        assert keys == sorted(keys) and len({tuple(k) for k in keys}) == len(keys)
        rev = scan_permutations(shape, [f"axis{axis}-rev"])[0]
        assert torch.equal(rev, perm.flip(0))
    last = scan_permutations(shape, [f"axis{ndim - 1}", "forward", "backward"])
    assert torch.equal(last[0], last[1]) and torch.equal(last[2], last[1].flip(0))
    assert torch.equal(last[1], torch.arange(last.shape[1]))


def test_presets():
    assert expand_orders("tri", 3) == ("forward", "backward", "axis0")
    assert expand_orders("cross", 2) == ("forward", "axis0", "backward", "axis0-rev")
    x = torch.arange(6.0).reshape(1, 1, 2, 3)                       # rows [0 1 2], [3 4 5]
    seqs = flatten_scans(x, "cross")[0, :, :, 0]
    # VMamba cross-scan: row-major, column-major, and both reversed
    assert seqs.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    vol = torch.arange(8.0).reshape(1, 1, 2, 2, 2)                   # (D, H, W)
    tri = flatten_scans(vol, "tri")[0, :, :, 0]
    assert tri[2].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]              # inter-slice: depth fastest
    with pytest.raises(ValueError, match="unknown order"):
        expand_orders(["axis3"], 3)
    with pytest.raises(ValueError, match="unknown order"):
        expand_orders("diagonal", 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_exact(shape):
    x = torch.randn(2, 3, *shape)
    for orders in [all_orders(len(shape)), "tri", "cross"] + [[o] for o in all_orders(len(shape))]:
        seqs = flatten_scans(x, orders)
        K = len(expand_orders(orders, len(shape)))
        assert seqs.shape == (2, K, x[0, 0].numel(), 3)
        assert torch.equal(merge_scans(seqs, shape, orders), x)
        torch.testing.assert_close(merge_scans(seqs, shape, orders, reduce="sum"), K * x)


def test_flatten_matches_gather_definition():
    x = torch.randn(2, 3, 3, 4)
    perm = scan_permutations((3, 4), "cross")
    seqs = flatten_scans(x, "cross")
    flat = x.reshape(2, 3, -1)
    for k, i in itertools.product(range(4), range(12)):
        assert torch.equal(seqs[:, k, i], flat[:, :, perm[k, i]])


def test_merge_checks_shape():
    with pytest.raises(ValueError, match="expected"):
        merge_scans(torch.randn(1, 2, 12, 3), (3, 4), "tri")


@pytest.mark.parametrize("share", [False, True])
def test_multiscan_equals_explicit(share):
    torch.manual_seed(0)
    ms = MultiScanMamba(8, orders="tri", share=share, d_state=4, backend="reference").double()
    x = torch.randn(2, 8, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    y = ms(x)
    assert y.shape == x.shape
    seqs = flatten_scans(x, "tri")
    mixers = [ms.mixers[0]] * 3 if share else list(ms.mixers)
    ref = merge_scans(torch.stack([m(seqs[:, k]) for k, m in enumerate(mixers)], 1), (2, 3, 2), "tri")
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert len(ms.mixers) == (1 if share else 3)
    # gradient reaches every voxel
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert (gx.abs().sum(1) > 0).all()


def test_multiscan_cross_needs_ndim():
    with pytest.raises(ValueError, match="ndim"):
        MultiScanMamba(8, orders="cross", d_state=4)
    ms = MultiScanMamba(8, orders="cross", ndim=2, d_state=4)
    assert len(ms.mixers) == 4 and ms(torch.randn(1, 8, 3, 5)).shape == (1, 8, 3, 5)
