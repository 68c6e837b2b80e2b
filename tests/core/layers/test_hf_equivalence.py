"""Hugging Face ``MambaMixer`` / ``Mamba2Mixer`` (and whole ``MambaModel`` / ``Mamba2Model``
stacks) load into our layers with strict=True and give the same outputs."""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Mamba2Config, MambaConfig  # noqa: E402
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaModel  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer, Mamba2Model  # noqa: E402

from core.layers import Mamba, Mamba2, SSMBackbone, set_backend  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)


def _mamba_cfg(bias, conv_bias, layers=1):
    return MambaConfig(hidden_size=32, state_size=8, conv_kernel=4, expand=2, time_step_rank="auto",
                       use_bias=bias, use_conv_bias=conv_bias, num_hidden_layers=layers,
                       layer_norm_epsilon=1e-5, vocab_size=16)


def _mamba2_cfg(ngroups, chunk, layers=1):
    return Mamba2Config(hidden_size=32, state_size=8, conv_kernel=4, expand=2, head_dim=16, num_heads=4,
                        n_groups=ngroups, chunk_size=chunk, layer_norm_epsilon=1e-5,
                        num_hidden_layers=layers, vocab_size=16)


def _randomise(module):
    # Trained-looking weights: every parameter (A_log, D, dt bias, norms) moves off its init.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("bias,conv_bias", [(False, True), (True, False)])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_mamba_mixer_strict_load_same_output(bias, conv_bias, backend):
    torch.manual_seed(0)
    hf = MambaMixer(_mamba_cfg(bias, conv_bias), layer_idx=0).eval()
    _randomise(hf)
    ours = Mamba(32, d_state=8, d_conv=4, expand=2, bias=bias, conv_bias=conv_bias, backend=backend)
    ours.load_state_dict(hf.state_dict(), strict=True)
    for L in (1, 13):
        x = torch.randn(2, L, 32)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ngroups,chunk", [(1, 256), (2, 5)])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_mamba2_mixer_strict_load_same_output(ngroups, chunk, backend):
    torch.manual_seed(0)
    hf = Mamba2Mixer(_mamba2_cfg(ngroups, chunk), layer_idx=0).eval()
    _randomise(hf)
    ours = Mamba2(32, d_state=8, d_conv=4, expand=2, headdim=16, ngroups=ngroups, chunk_size=chunk,
                  backend=backend)
    ours.load_state_dict(hf.state_dict(), strict=True)
    for L in (1, 13):
        x = torch.randn(2, L, 32)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_whole_hf_stack_loads_into_backbone(kind):
    torch.manual_seed(0)
    if kind == "mamba":
        hf = MambaModel(_mamba_cfg(False, True, layers=2)).eval()
        kw = dict(d_state=8, d_conv=4, expand=2)
    else:
        hf = Mamba2Model(_mamba2_cfg(2, 5, layers=2)).eval()
        kw = dict(d_state=8, d_conv=4, expand=2, headdim=16, ngroups=2, chunk_size=5)
    _randomise(hf)
    ours = SSMBackbone(32, 2, mixer=kind, mixer_kwargs=kw, norm="rms", norm_epsilon=1e-5)
    sd = {k: v for k, v in hf.state_dict().items() if not k.startswith("embeddings.")}
    ours.load_state_dict(sd, strict=True)
    set_backend(ours, "reference")
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        ref = hf(inputs_embeds=x).last_hidden_state
        torch.testing.assert_close(ours(x), ref, rtol=1e-5, atol=1e-5)
