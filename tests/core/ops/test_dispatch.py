"""Backend registry and the causal conv ops (dispatch.py) vs the float64 reference."""
import pytest
import torch

from core.ops import (available_backends, causal_conv1d, causal_conv1d_ref, causal_conv1d_update,
                      causal_conv1d_update_ref, resolve_backend)


def test_cpu_backends_visible_and_auto_picks_cpu(monkeypatch):
    for op in ("selective_scan", "ssd_scan", "causal_conv1d"):
        names = available_backends(op, "cpu")
        assert names[0] == "cpu" and "reference" in names, names
        assert resolve_backend(op, "auto", torch.zeros(1)) == "cpu"
    # the Triton interpreter is never picked by "auto", only by name
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("selective_scan", "auto", torch.zeros(1)) == "cpu"


def test_unknown_or_impossible_backend_raises():
    with pytest.raises(ValueError, match="not available"):
        resolve_backend("selective_scan", "nope", torch.zeros(1))
    if "mamba_ssm" in available_backends("selective_scan"):
        with pytest.raises(ValueError, match="cannot run"):
            resolve_backend("selective_scan", "mamba_ssm", torch.zeros(1))


def _conv_inputs(b=2, d=3, L=9, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    return r(b, d, L), r(d, W), r(d), r(b, d, W - 1)


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("L", [1, 5, 17])
@pytest.mark.parametrize("bias,act,init", [(False, None, False), (True, "silu", False), (True, "swish", True),
                                           (False, None, True)])
def test_causal_conv1d_matches_reference(backend, W, L, bias, act, init):
    x, w, bb, h0 = _conv_inputs(L=L, W=W)
    kw = dict(bias=bb if bias else None, activation=act, initial_states=h0 if init else None)
    out = causal_conv1d(x, w, backend=backend, **kw)
    ref = causal_conv1d_ref(x, w, **kw)
    torch.testing.assert_close(out, ref)
    ins = [t for t in (x, w, bb, h0) if t is not None and (t is not bb or bias) and (t is not h0 or init)]
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad((out * g).sum(), ins), torch.autograd.grad((ref * g).sum(), ins)):
        torch.testing.assert_close(a, e)


def test_causal_conv1d_gradcheck():
    x, w, bb, h0 = _conv_inputs(b=1, d=2, L=5, W=3)
    f = lambda *a: causal_conv1d(a[0], a[1], bias=a[2], activation="silu", initial_states=a[3])  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, bb, h0))


@pytest.mark.parametrize("backend", [b for b in available_backends("causal_conv1d_update", "cpu")])
def test_update_steps_equal_the_full_conv(backend):
    x, w, bb, h0 = [t.detach() for t in _conv_inputs(L=8, W=4)]
    full = causal_conv1d(x, w, bias=bb, activation="silu", initial_states=h0)
    state = torch.cat([torch.zeros(2, 3, 1, dtype=x.dtype), h0], dim=-1)  # (batch, dim, width)
    steps = [causal_conv1d_update(x[:, :, t], state, w, bias=bb, activation="silu", backend=backend)
             for t in range(8)]
    torch.testing.assert_close(torch.stack(steps, -1), full)
    torch.testing.assert_close(state, x[:, :, -4:])
    s2 = torch.zeros_like(state)
    torch.testing.assert_close(causal_conv1d_update(x[:, :, 0], s2, w, backend=backend),
                               causal_conv1d_update_ref(x[:, :, 0], torch.zeros_like(state), w))


def test_bad_activation_raises():
    x, w, _, _ = _conv_inputs()
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
