import math

import numpy as np
import pandas as pd
import pytest
import torch

from apps.recsys.data import load_dataset, train_loader
from apps.recsys.infer import UserState, topk_chunked
from apps.recsys.metrics import rank_metrics, target_ranks
from apps.recsys.model import RecModule
from apps.recsys.nets import MODEL_DEFAULTS, build_net

SMALL = {"tim4rec": dict(d_model=16, d_state=8, headdim=8, n_layers=2),
         "mamba4rec": dict(d_model=16, d_state=8, n_layers=2),
         "sasrec": dict(d_model=16, inner_size=32)}


def test_metrics_on_hand_computed_ranking():
    scores = torch.tensor([[float("-inf"), 0.9, 0.1, 0.5, 0.3],   # target 3 -> rank 1 (0-based)
                           [float("-inf"), 0.2, 0.8, 0.1, 0.7],   # target 1 -> rank 2
                           [float("-inf"), 0.4, 0.4, 0.4, 0.1]])  # target 2, tied with two -> rank 2 (pessimistic)
    ranks = target_ranks(scores, torch.tensor([3, 1, 2]))
    assert ranks.tolist() == [1, 2, 2]
    big = torch.tensor([0, 4, 25])
    m = rank_metrics(big, ks=(5, 10))
    assert m["hit@5"].tolist() == [1, 1, 0]
    assert m["ndcg@5"].tolist() == pytest.approx([1.0, 1 / math.log2(6), 0.0])
    assert m["mrr@10"].tolist() == pytest.approx([1.0, 0.2, 0.0])


def _net(name, **kw):
    torch.manual_seed(0)
    net = build_net(name, 30, 20, **dict(MODEL_DEFAULTS[name], **SMALL[name], **kw)).eval()
    for m in net.modules():  # non-trivial time path (its conv starts at zero)
        if hasattr(m, "conv_weight"):
            torch.nn.init.normal_(m.conv_weight, 0, 0.5)
    return net


@pytest.mark.parametrize("name", ["tim4rec", "mamba4rec"])
def test_step_equals_full_forward(name):
    net = _net(name)
    items = torch.randint(1, 31, (3, 15))
    gaps = torch.rand(3, 15) * 1e5
    h = net(items, gaps)
    st = net.init_state(3)
    steps = torch.stack([net.step(items[:, t], gaps[:, t], st)[0] for t in range(15)], 1)
    torch.testing.assert_close(steps, h, rtol=1e-4, atol=1e-4)


def test_tim4rec_uses_gaps_causally_and_sequence_form_does_not():
    items = torch.randint(1, 31, (2, 10))
    gaps = torch.rand(2, 10) * 1e4
    later = gaps.clone()
    later[:, 7] *= 50
    for mix, causal in (("causal", True), ("sequence", False)):
        net = _net("tim4rec", time_mix=mix)
        a, b = net(items, gaps), net(items, later)
        assert not torch.allclose(a[:, 7:], b[:, 7:])              # the gaps change the output
        assert torch.allclose(a[:, :7], b[:, :7]) == causal        # ...and earlier positions only without causality
    with pytest.raises(NotImplementedError):
        _net("tim4rec", time_mix="sequence").init_state(1)


@pytest.mark.parametrize("name,loss", [("tim4rec", "ce"), ("mamba4rec", "ce"), ("sasrec", "ce"),
                                       ("tim4rec", "sampled")])
def test_training_lowers_the_loss(synth, name, loss):
    torch.manual_seed(0)
    d = load_dataset(synth, max_len=20)
    mod = RecModule(name, dict(MODEL_DEFAULTS[name], **SMALL[name], dropout=0.0), d.n_items, 20, loss=loss,
                    n_negatives=20, lr=5e-3)
    mod.set_popularity(torch.from_numpy(d.item_counts()))
    batch = next(iter(train_loader(d, "window", 32)))
    opt = mod.configure_optimizers()
    losses = []
    for _ in range(25):
        loss_v = _loss(mod, batch)
        opt.zero_grad()
        loss_v.backward()
        opt.step()
        losses.append(float(loss_v.detach()))
    assert losses[-1] < 0.8 * losses[0]


def _loss(mod, batch):
    h = mod.net(batch["items"], batch["gaps"])
    keep = batch["targets"] > 0
    return mod._loss(h[keep], batch["targets"][keep])


def test_sampled_softmax_logq_matches_formula():
    torch.manual_seed(0)
    mod = RecModule("sasrec", dict(MODEL_DEFAULTS["sasrec"], **SMALL["sasrec"]), 10, 5, loss="sampled",
                    n_negatives=4)
    mod.set_popularity(torch.tensor([0, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1]))
    h, tgt = torch.randn(3, 16), torch.tensor([1, 2, 3])
    torch.manual_seed(1)
    got = mod._loss(h, tgt)
    torch.manual_seed(1)
    neg = torch.multinomial(mod.log_q.exp(), 4, replacement=True)
    E, lq = mod.net.item_embedding.weight, mod.log_q
    logits = torch.cat([(h * E[tgt]).sum(-1, keepdim=True) - lq[tgt][:, None], h @ E[neg].t() - lq[neg][None]], 1)
    logits -= math.log(4)
    logits[:, 1:] = logits[:, 1:].masked_fill(neg[None] == tgt[:, None], float("-inf"))
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long)))
    assert mod.log_q[1] > mod.log_q[2]  # popular items are proposed more often


def test_sasrec_dropout_sites_match_recbole():
    """RecBole's SASRec drops out the embedding and, per layer, the attention output and the FFN output (no
    dropout between the FFN's two linears, unlike torch's TransformerEncoderLayer): 1 + 2 * n_layers hidden
    dropouts per forward (attention-probability dropout is inside MultiheadAttention)."""
    net = build_net("sasrec", 20, 6, **dict(MODEL_DEFAULTS["sasrec"], **SMALL["sasrec"])).train()
    calls = []
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(lambda *a: calls.append(1))
    net(torch.randint(1, 21, (2, 6)), torch.zeros(2, 6))
    assert len(calls) == 1 + 2 * len(net.layers)


def test_topk_chunked_matches_full_sort_with_exclusions():
    torch.manual_seed(0)
    mod = RecModule("sasrec", dict(MODEL_DEFAULTS["sasrec"], **SMALL["sasrec"]), 50, 5)
    h = torch.randn(4, 16)
    excl = [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([50, 7]), np.arange(1, 45)]
    s, i = topk_chunked(mod, h, 8, excl, chunk=7)
    full = h @ mod.net.item_embedding.weight.t()
    full[:, 0] = float("-inf")
    for b, e in enumerate(excl):
        full[b, torch.from_numpy(e).long()] = float("-inf")
    ref = full.topk(8, dim=1)
    torch.testing.assert_close(s, ref.values)
    assert torch.equal(i[:3], ref.indices[:3])
    assert torch.isinf(s[3, 6:]).all()  # only 6 items left for the last user


@pytest.mark.parametrize("name", ["tim4rec", "mamba4rec"])
def test_incremental_update_equals_full_reencode(name):
    torch.manual_seed(0)
    mod = RecModule(name, dict(MODEL_DEFAULTS[name], **SMALL[name]), 30, 20).eval()
    for m in mod.modules():
        if hasattr(m, "conv_weight"):
            torch.nn.init.normal_(m.conv_weight, 0, 0.5)
    items = np.random.default_rng(0).integers(1, 31, 40)
    times = np.cumsum(np.random.default_rng(1).exponential(1e4, 40))
    st = UserState.from_history(mod, items[:30], times[:30])
    for j in range(30, 40):  # ten new interactions, one step each
        h_inc = st.update(int(items[j]), float(times[j]))
        g = np.diff(times[:j + 1], prepend=times[0]).astype(np.float32)
        h_full = mod.net.encode(torch.from_numpy(items[None, :j + 1]), torch.from_numpy(g[None]))[0]
        torch.testing.assert_close(h_inc, h_full, rtol=1e-4, atol=1e-4)
        a = topk_chunked(mod, h_inc[None], 10, [items[:j + 1]], chunk=8)[1]
        b = topk_chunked(mod, h_full[None], 10, [items[:j + 1]], chunk=8)[1]
        assert torch.equal(a, b)
