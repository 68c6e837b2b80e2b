"""Mamba-1 block: mamba_ssm init, float64 forward/gradients against a step-by-step oracle,
streaming (step, chunked prefill) equal to the full forward."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.layers import InferenceParams, Mamba, set_backend

from .naive import mamba_naive

BACKENDS = ["reference", "auto"]


def make(seed=0, backend="auto", **kw):
    torch.manual_seed(seed)
    args = dict(d_model=8, d_state=4, d_conv=3, expand=2)
    args.update(kw)
    m = Mamba(**args, backend=backend).double()
    with torch.no_grad():  # move away from the symmetric init so every parameter matters
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
        m.D.add_(0.5 * torch.randn_like(m.D))
        m.dt_proj.bias.add_(torch.randn_like(m.dt_proj.bias))
    return m


def test_init_matches_mamba_ssm():
    m = Mamba(d_model=512, d_state=16, dt_min=0.001, dt_max=0.1)
    assert m.d_inner == 1024 and m.dt_rank == math.ceil(512 / 16)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2048, 512), "conv1d.weight": (1024, 1, 4), "conv1d.bias": (1024,),
        "x_proj.weight": (32 + 32, 1024), "dt_proj.weight": (1024, 32), "dt_proj.bias": (1024,),
        "A_log": (1024, 16), "D": (1024,), "out_proj.weight": (512, 1024)}
    assert m.A_log.dtype == torch.float32
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).expand(1024, 16))
    assert torch.equal(m.D, torch.ones(1024))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: log dt is uniform on [log dt_min, log dt_max]
    u = (dt.log() - math.log(0.001)) / (math.log(0.1) - math.log(0.001))
    assert abs(u.mean() - 0.5) < 0.05 and abs(u.var() - 1 / 12) < 0.02
    std = 32 ** -0.5
    assert m.dt_proj.weight.abs().max() <= std and m.dt_proj.weight.abs().max() > 0.9 * std


def test_init_options():
    m = Mamba(d_model=32, dt_init="constant", dt_scale=2.0, dt_rank=4, dt_min=1e-6, dt_max=1e-5,
              dt_init_floor=1e-3, bias=True, conv_bias=False)
    assert torch.allclose(m.dt_proj.weight, torch.full_like(m.dt_proj.weight, 2.0 * 4 ** -0.5))
    torch.testing.assert_close(F.softplus(m.dt_proj.bias), torch.full((64,), 1e-3))  # the floor
    assert m.in_proj.bias is not None and m.conv1d.bias is None
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(d_model=8, dt_init="bogus")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_grads_match_oracle(backend, L, bias):
    m = make(backend=backend, bias=bias)
    x = torch.randn(2, L, 8, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref = mamba_naive(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    params = [x] + list(m.parameters())
    grads = torch.autograd.grad((y * g).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), params)
    for p, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"grad of {p}")


def test_float32_auto_close_to_reference():
    torch.manual_seed(1)
    m = Mamba(d_model=16, d_state=8)
    x = torch.randn(2, 33, 16)
    y = m(x)
    set_backend(m, "reference")
    torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_equals_forward(backend):
    m = make(backend=backend)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        conv_state, ssm_state = m.allocate_inference_cache(2, 9)
        assert conv_state.shape == (2, 16, 3) and ssm_state.shape == (2, 16, 4)
        outs = []
        for t in range(9):
            out, conv_state, ssm_state = m.step(x[:, t:t + 1], conv_state, ssm_state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks", [(4, 1, 1, 3), (1, 2, 6), (9,)])
def test_chunked_prefill_then_step(chunks):
    m = make(layer_idx=3)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    params = InferenceParams(max_seqlen=9, max_batch_size=2)
    with torch.no_grad():
        y = m(x)
        for repeat in range(2):  # the second pass checks that offset 0 restarts from zero states
            params.reset(9, 2)
            outs, t = [], 0
            for c in chunks:
                outs.append(m(x[:, t:t + c], inference_params=params))
                params.seqlen_offset += c
                t += c
            torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)
    assert set(params.key_value_memory_dict) == {3}


def test_step_rejects_chunks():
    m = make()
    cs, ss = m.allocate_inference_cache(1, 4)
    with pytest.raises(ValueError, match="one token"):
        m.step(torch.randn(1, 2, 8, dtype=torch.float64), cs, ss)
