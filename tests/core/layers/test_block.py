"""Block, GatedMLP, SSMBackbone: mamba_ssm semantics, init, streaming equal to forward."""
import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.layers import (MIXERS, Block, GatedMLP, InferenceParams, Mamba, RMSNorm, SSMBackbone,
                         make_mixer, set_backend)

SMALL = {"mamba": dict(d_state=4), "mamba2": dict(d_state=4, headdim=4, chunk_size=4),
         "s4d": dict(d_state=4), "bimamba": dict(d_state=4), "hydra": dict(d_state=4, headdim=4)}


def test_rmsnorm_and_gated_mlp_match_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    n = RMSNorm(16, eps=1e-5).double()
    nn.init.normal_(n.weight)
    torch.testing.assert_close(n(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * n.weight)
    mlp = GatedMLP(16, hidden_features=20, out_features=8, multiple_of=8).double()
    assert mlp.fc1.weight.shape == (48, 16) and mlp.fc2.weight.shape == (8, 24)  # 20 -> 24
    h = x @ mlp.fc1.weight.t()
    torch.testing.assert_close(mlp(x), (h[..., :24] * F.silu(h[..., 24:])) @ mlp.fc2.weight.t())
    assert GatedMLP(96).fc2.weight.shape == (96, 256)  # 8/3 * 96 = 256


@pytest.mark.parametrize("with_mlp", [False, True])
def test_block_residual_interface(with_mlp):
    torch.manual_seed(0)
    blk = Block(8, partial(Mamba, d_state=4, backend="reference"),
                partial(GatedMLP, hidden_features=16, multiple_of=8) if with_mlp else None,
                norm_cls=RMSNorm).double()
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    r = torch.randn(2, 5, 8, dtype=torch.float64)
    out, res = blk(h, r)
    res_ref = h + r
    out_ref = blk.mixer(blk.norm(res_ref))
    if with_mlp:
        res_ref = out_ref + res_ref
        out_ref = blk.mlp(blk.norm2(res_ref))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(res, res_ref)
    out0, res0 = blk(h)  # first block: residual starts as the input
    torch.testing.assert_close(res0, blk.mixer(blk.norm(h)) + h if with_mlp else h)
    blk32 = Block(8, partial(Mamba, d_state=4), nn.Identity, residual_in_fp32=True).to(torch.bfloat16)
    assert blk32.mlp is None
    assert blk32(torch.randn(1, 3, 8, dtype=torch.bfloat16))[1].dtype == torch.float32


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_backbone_every_mixer(mixer):
    torch.manual_seed(0)
    bb = SSMBackbone(8, 2, mixer=mixer, mixer_kwargs=SMALL[mixer], d_intermediate=16, norm="layer")
    x = torch.randn(2, 5, 8, requires_grad=True)
    y = bb(x)
    assert y.shape == (2, 5, 8) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for n, p in bb.named_parameters() if "A_imag" not in n or p.requires_grad)
    assert [layer.mixer.layer_idx for layer in bb.layers] == [0, 1]
    assert bb.causal == (mixer not in ("bimamba", "hydra"))


def test_backbone_init_like_mamba_ssm():
    torch.manual_seed(0)
    bb = SSMBackbone(64, 4, mixer="mamba", d_intermediate=128)
    m = bb.layers[0].mixer
    # dt_proj.bias keeps its dt init (_no_reinit); other Linear biases are zeroed
    assert F.softplus(m.dt_proj.bias).min() >= 1e-3 * 0.999
    bound = 1 / math.sqrt(m.d_inner) / math.sqrt(2 * 4)  # kaiming_uniform(a=sqrt 5) / sqrt(n_res * n_layer)
    assert m.out_proj.weight.abs().max() <= bound and m.out_proj.weight.abs().max() > 0.9 * bound
    fc2 = bb.layers[0].mlp.fc2.weight
    assert fc2.abs().max() <= 1 / math.sqrt(fc2.shape[1]) / math.sqrt(8)
    with pytest.raises(ValueError, match="unknown mixer"):
        SSMBackbone(8, 1, mixer="transformer")
    with pytest.raises(ValueError, match="norm"):
        SSMBackbone(8, 1, norm="batch")


@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "s4d"])
def test_backbone_streaming_equals_forward(mixer):
    torch.manual_seed(0)
    bb = SSMBackbone(8, 2, mixer=mixer, mixer_kwargs=dict(SMALL[mixer], backend="reference"),
                     d_intermediate=16).double().eval()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        y = bb(x)
        params = InferenceParams(max_seqlen=7, max_batch_size=2)
        outs = [bb.step(x[:, :3], params)]              # chunked prefill
        outs += [bb.step(x[:, t:t + 1], params) for t in range(3, 7)]
        assert params.seqlen_offset == 7
        torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)
        # the same with caches allocated up front
        params = InferenceParams(7, 2, key_value_memory_dict=bb.allocate_inference_cache(2, 7))
        outs = [bb.step(x[:, t:t + 1], params) for t in range(7)]
        torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer", ["bimamba", "hydra"])
def test_bidirectional_backbone_refuses_streaming(mixer):
    bb = SSMBackbone(8, 1, mixer=mixer, mixer_kwargs=SMALL[mixer])
    with pytest.raises(NotImplementedError, match="bidirectional"):
        bb.step(torch.randn(1, 1, 8), InferenceParams(4, 1))
    with pytest.raises(NotImplementedError, match="bidirectional"):
        make_mixer(mixer, 8, **SMALL[mixer]).allocate_inference_cache(1, 4)


def test_set_backend_reaches_every_layer():
    bb = SSMBackbone(8, 2, mixer="bimamba", mixer_kwargs=SMALL["bimamba"])
    set_backend(bb, "reference")
    assert all(getattr(m, "backend", "reference") == "reference" for m in bb.modules())
    assert sum(hasattr(m, "backend") for m in bb.modules()) == 4
