import math

import lightning
import pytest
import torch
from torch import nn

from core.engine import configure_optimizers, make_optimizer, make_trainer, no_weight_decay_names, param_groups
from core.engine.optim import poly, step_decay, warmup_cosine
from core.layers import S4D, Mamba, Mamba2, RMSNorm


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.mamba = Mamba(16, d_state=4)
        self.mamba2 = Mamba2(32, d_state=8, headdim=16)
        self.s4d = S4D(16, d_state=8)
        self.norm = RMSNorm(16)
        self.ln = nn.LayerNorm(16)
        self.bn = nn.BatchNorm1d(16)
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(16, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_groups_follow_the_tags_and_conventions():
    net = _Net()
    no_wd = no_weight_decay_names(net)
    # mamba_ssm's tags, S4D's kernel, biases, norms: no decay
    for n in ("mamba.A_log", "mamba.D", "mamba.dt_proj.bias", "mamba.conv1d.bias",
              "mamba2.A_log", "mamba2.D", "mamba2.dt_bias", "mamba2.norm.weight",
              "s4d.kernel.log_dt", "s4d.kernel.log_A_real", "s4d.kernel.A_imag", "s4d.D",
              "norm.weight", "ln.weight", "ln.bias", "bn.weight", "bn.bias", "conv.bias", "head.bias"):
        assert n in no_wd, n
    # matrices and embeddings keep it (nanoGPT decays embeddings too); frozen ones are left out
    for n in ("emb.weight", "mamba.in_proj.weight", "mamba.x_proj.weight", "mamba.dt_proj.weight",
              "mamba.conv1d.weight", "mamba2.in_proj.weight", "mamba2.out_proj.weight", "s4d.kernel.C",
              "conv.weight", "head.weight", "frozen.weight", "frozen.bias"):
        assert n not in no_wd, n

    groups = param_groups(net, weight_decay=0.1)
    by_name = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable                   # every trainable parameter once, frozen ones absent
    assert {n for n, wd in by_name.items() if wd == 0.0} == no_wd
    assert {n for n, wd in by_name.items() if wd == 0.1} == trainable - no_wd
    for g in groups:                                    # names and tensors line up
        params = dict(net.named_parameters())
        assert all(params[n] is p for n, p in zip(g["param_names"], g["params"]))


def test_optim_tag_overrides_lr_and_tied_weights_count_once():
    lin = nn.Linear(4, 4)
    lin.weight._optim = {"lr": 1e-4, "weight_decay": 0.0}
    net = nn.Sequential(lin, nn.Linear(4, 4))
    net[1].weight = lin.weight                          # tied
    opt = make_optimizer(net, lr=1e-2, weight_decay=0.5)
    groups = {(g["lr"], g["weight_decay"]): g["param_names"] for g in opt.param_groups}
    assert groups[(1e-4, 0.0)] == ["0.weight"]
    assert sorted(groups[(1e-2, 0.0)]) == ["0.bias", "1.bias"]
    assert sum(len(g["params"]) for g in opt.param_groups) == 3


def test_decay_reaches_only_decayed_params():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = make_optimizer(m, lr=0.1, weight_decay=1.0, name="adamw")
    opt.zero_grad()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)                    # zero gradient: only decay can move a parameter
    opt.step()
    assert torch.equal(m.A_log, before["A_log"]) and torch.equal(m.D, before["D"])
    assert not torch.equal(m.in_proj.weight, before["in_proj.weight"])


def test_unknown_optimizer_or_schedule():
    with pytest.raises(ValueError, match="optimiser"):
        make_optimizer(nn.Linear(2, 2), lr=1.0, name="lion")
    with pytest.raises(ValueError, match="schedule"):
        configure_optimizers(nn.Linear(2, 2), lr=1.0, schedule="exp")


def test_warmup_cosine_values():
    f = warmup_cosine(100, min_factor=0.02)            # 5 warm-up steps
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == pytest.approx(1.0)
    mid = 5 + 95 // 2
    assert f(mid) == pytest.approx(0.5 * (1 + math.cos(math.pi * (mid - 5) / 95)))
    assert f(99) == pytest.approx(0.02) and f(500) == pytest.approx(0.02)
    g = warmup_cosine(10, warmup_steps=0, min_factor=0.0)
    assert g(0) == 1.0 and g(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))


def test_step_decay_and_poly_values():
    assert [step_decay(0.5, 0)(e) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert [step_decay(0.9, 3)(e) for e in range(6)] == pytest.approx([1, 1, 1, 1, 0.9, 0.81])
    assert poly(0.0) == 1.0 and poly(1.0) == 0.0 and poly(0.5, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly(1.5) == 0.0                             # clipped to the budget


class _Reg(lightning.LightningModule):
    def __init__(self, schedule, **kw):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.schedule, self.kw, self.lrs = schedule, kw, []

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        return configure_optimizers(self, lr=0.1, weight_decay=0.01, optimizer="adam", schedule=self.schedule,
                                    **self.kw)


@pytest.mark.parametrize("schedule,kw,expect", [
    ("warmup_cosine", {}, [0.1 * warmup_cosine(12)(s) for s in range(12)]),
    ("step_decay", {"decay": 0.5}, [0.1 * 0.5 ** (s // 4) for s in range(12)]),
    ("poly", {"steps_per_epoch": 4}, [0.1 * (1 - s / 12) ** 0.9 for s in range(12)]),
    ("constant", {}, [0.1] * 12),
])
def test_schedules_inside_lightning(tmp_path, schedule, kw, expect):
    x = torch.randn(64, 3)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    model = _Reg(schedule, **kw)
    make_trainer(tmp_path / "run", max_epochs=3, progress=False, loggers=(), enable_checkpointing=False).fit(model, dl)
    assert model.lrs == pytest.approx(expect, rel=1e-6)
