"""Mamba-2 block: mamba_ssm init and shapes, float64 forward/gradients against a step-by-step
oracle for every option, streaming equal to the full forward."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.layers import InferenceParams, Mamba2

from .naive import mamba2_naive

OPTIONS = {
    "default": {},
    "groups": dict(ngroups=2),
    "D_has_hdim": dict(D_has_hdim=True),
    "no_rmsnorm": dict(rmsnorm=False),
    "norm_before_gate": dict(norm_before_gate=True),
    "d_ssm": dict(d_ssm=8),           # half the channels go through the gated MLP
    "dt_limit": dict(dt_limit=(0.05, 0.3), bias=True),
}


def make(seed=0, backend="auto", **kw):
    torch.manual_seed(seed)
    args = dict(d_model=8, d_state=3, d_conv=3, expand=2, headdim=4, chunk_size=4)
    args.update(kw)
    m = Mamba2(**args, backend=backend).double()
    with torch.no_grad():
        m.D.add_(0.5 * torch.randn_like(m.D))
        m.dt_bias.add_(torch.randn_like(m.dt_bias))
        if m.rmsnorm:
            m.norm.weight.add_(0.3 * torch.randn_like(m.norm.weight))
    return m


def test_init_and_shapes_match_mamba_ssm():
    m = Mamba2(d_model=64, d_state=16, headdim=32, ngroups=2, dt_min=0.001, dt_max=0.1)
    assert (m.d_inner, m.nheads, m.conv_dim) == (128, 4, 128 + 64)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"in_proj.weight": (2 * 128 + 2 * 2 * 16 + 4, 64), "conv1d.weight": (192, 1, 4),
                      "conv1d.bias": (192,), "dt_bias": (4,), "A_log": (4,), "D": (4,),
                      "norm.weight": (128,), "out_proj.weight": (64, 128)}
    A = torch.exp(Mamba2(d_model=512, headdim=8, d_state=4).A_log)
    assert A.min() >= 1 and A.max() <= 16 and A.std() > 3      # uniform on A_init_range (1, 16)
    assert torch.equal(m.D, torch.ones(4)) and m.A_log._no_weight_decay and m.D._no_weight_decay
    assert m.dt_bias._no_weight_decay
    dt = F.softplus(Mamba2(d_model=1024, headdim=2, d_state=2).dt_bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    u = (dt.log() - math.log(0.001)) / (math.log(0.1) - math.log(0.001))
    assert abs(u.mean() - 0.5) < 0.05
    assert m.norm.group_size == 64 and not m.norm.norm_before_gate
    assert Mamba2(d_model=8, headdim=4, D_has_hdim=True).D.shape == (16,)
    assert not hasattr(Mamba2(d_model=8, headdim=4, rmsnorm=False), "norm")
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(d_model=8, headdim=5)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_forward_and_grads_match_oracle(backend, option):
    m = make(backend=backend, **OPTIONS[option])
    for L in (1, 7):
        x = torch.randn(2, L, 8, dtype=torch.float64, requires_grad=True)
        y = m(x)
        y_ref = mamba2_naive(m, x)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(y)
        params = [x] + list(m.parameters())
        names = ["x"] + [n for n, _ in m.named_parameters()]
        for n, a, b in zip(names, torch.autograd.grad((y * g).sum(), params),
                           torch.autograd.grad((y_ref * g).sum(), params)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"grad of {n}")


@pytest.mark.parametrize("option", ["default", "groups", "D_has_hdim", "no_rmsnorm", "d_ssm", "dt_limit"])
def test_step_equals_forward(option):
    m = make(**OPTIONS[option])
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        conv_state, ssm_state = m.allocate_inference_cache(2, 9)
        assert conv_state.shape == (2, m.conv_dim, 3) and ssm_state.shape == (2, m.nheads, 4, 3)
        outs = []
        for t in range(9):
            out, conv_state, ssm_state = m.step(x[:, t:t + 1], conv_state, ssm_state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks", [(5, 1, 3), (2, 2, 2, 2, 1), (1,) * 9])
def test_chunked_prefill_then_step(chunks):
    m = make(layer_idx=0, ngroups=2)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    params = InferenceParams(max_seqlen=9, max_batch_size=2)
    with torch.no_grad():
        y = m(x)
        outs, t = [], 0
        for c in chunks:
            outs.append(m(x[:, t:t + c], inference_params=params))
            params.seqlen_offset += c
            t += c
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


def test_float32_auto_close_to_reference():
    torch.manual_seed(1)
    m = Mamba2(d_model=16, d_state=8, headdim=8, chunk_size=16)
    x = torch.randn(2, 37, 16)
    y = m(x)
    m.backend = "reference"
    torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-5)
