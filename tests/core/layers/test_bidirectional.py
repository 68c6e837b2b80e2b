"""BiMamba (Vim-style) and Hydra (quasiseparable): definitions, future dependence, and Hydra's
mixer equal to an explicitly materialised quasiseparable matrix in float64."""
import pytest
import torch

from core.layers import BiMamba, Hydra, Mamba, Mamba2

from .naive import gated_rmsnorm, mamba_naive


def _influence(layer, L=6, t=2):
    """|d y[:, t] / d x[:, s]| summed over channels, for every s."""
    x = torch.randn(1, L, layer.d_model if hasattr(layer, "d_model") else 8, dtype=torch.float64,
                    requires_grad=True)
    (g,) = torch.autograd.grad(layer(x)[:, t].sum(), x)
    return g.abs().sum(-1)[0]


@pytest.mark.parametrize("combine", ["add", "mean", "concat"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bimamba_definition(combine, backend):
    torch.manual_seed(0)
    m = BiMamba(8, combine=combine, d_state=4, backend=backend).double()
    assert m.fwd.backend == backend and m.bwd.backend == backend
    # own parameters for each direction
    assert m.fwd.in_proj.weight.data_ptr() != m.bwd.in_proj.weight.data_ptr()
    assert not torch.equal(m.fwd.in_proj.weight, m.bwd.in_proj.weight)
    for L in (1, 7):
        x = torch.randn(2, L, 8, dtype=torch.float64, requires_grad=True)
        y = m(x)
        y_f, y_b = mamba_naive(m.fwd, x), mamba_naive(m.bwd, x.flip(1)).flip(1)
        ref = {"add": lambda: y_f + y_b, "mean": lambda: (y_f + y_b) / 2,
               "concat": lambda: torch.cat([y_f, y_b], -1) @ m.proj.weight.t()}[combine]()
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(y)
        a = torch.autograd.grad((y * g).sum(), [x] + list(m.parameters()))
        b = torch.autograd.grad((ref * g).sum(), [x] + list(m.parameters()))
        for ga, gb in zip(a, b):
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)


def test_bimamba_mamba2_directions():
    m = BiMamba(8, mixer="mamba2", d_state=4, headdim=4, chunk_size=4)
    assert isinstance(m.fwd, Mamba2) and isinstance(m.bwd, Mamba2)
    assert m(torch.randn(2, 5, 8)).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="combine"):
        BiMamba(8, combine="max")


def test_bidirectional_outputs_depend_on_the_future():
    torch.manual_seed(0)
    causal = Mamba(8, d_state=4).double()
    inf = _influence(causal)
    assert (inf[3:] == 0).all() and (inf[:3] > 0).all()
    for layer in (BiMamba(8, d_state=4).double(), Hydra(8, d_state=4, headdim=4, d_conv=3).double()):
        inf = _influence(layer)
        assert (inf > 1e-8).all(), type(layer).__name__


def _hydra_matrix(p, H, P, G):
    """Materialise Hydra's (B, H, L, L) quasiseparable matrix from ``project`` outputs."""
    dt_f, dt_b, A = p["dt_f"], p["dt_b"], p["A"]
    Bsz, L, _ = dt_f.shape
    grp = torch.arange(H) // (H // G)
    B_f, C_f, B_b, C_b = (p[k][:, :, grp] for k in ("B_f", "C_f", "B_b", "C_b"))  # (B, L, H, N)
    M = dt_f.new_zeros(Bsz, H, L, L)
    for t in range(L):
        M[:, :, t, t] = p["diag"][:, t]
        for s in range(t):        # forward SSM, output shifted by one: C at t-1, decay over s+1..t-1
            decay = torch.exp(A * dt_f[:, s + 1:t].sum(1))
            M[:, :, t, s] = (C_f[:, t - 1] * B_f[:, s]).sum(-1) * dt_f[:, s] * decay
        for s in range(t + 1, L):  # backward SSM: C at t+1, decay over t+1..s-1
            decay = torch.exp(A * dt_b[:, t + 1:s].sum(1))
            M[:, :, t, s] = (C_b[:, t + 1] * B_b[:, s]).sum(-1) * dt_b[:, s] * decay
    return M


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_hydra_equals_materialised_quasiseparable_matrix(backend, ngroups):
    torch.manual_seed(0)
    H, P, N, L = 4, 2, 3, 7
    m = Hydra(4, d_state=N, headdim=P, expand=2, ngroups=ngroups, d_conv=3, chunk_size=4,
              backend=backend).double()
    with torch.no_grad():
        m.A_log.add_(0.5 * torch.randn(H, dtype=torch.float64))
        m.D.add_(torch.randn(H, dtype=torch.float64))
        m.dt_bias.add_(1.0)
    u = torch.randn(2, L, 4, dtype=torch.float64, requires_grad=True)
    p = m.project(u)
    M = _hydra_matrix(p, H, P, ngroups)
    xh = p["x"].reshape(2, L, H, P)
    y_ref = torch.einsum("bhts,bshp->bthp", M, xh).reshape(2, L, H * P)
    y = m.mix(p)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    out_ref = gated_rmsnorm(y_ref, p["z"], m.norm.weight, m.norm.group_size, m.norm.eps, True) \
        @ m.out_proj.weight.t()
    out = m(u)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    params = [u] + list(m.parameters())
    for a, b in zip(torch.autograd.grad((out * g).sum(), params), torch.autograd.grad((out_ref * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # quasiseparable: every strictly-lower / strictly-upper block has rank <= G * N
    for t0 in range(1, L):
        lower, upper = M[0, 0, t0:, :t0], M[0, 0, :t0, t0:]
        assert torch.linalg.matrix_rank(lower) <= min(N, *lower.shape)
        assert torch.linalg.matrix_rank(upper) <= min(N, *upper.shape)


def test_hydra_learnable_init_states_and_names():
    m = Hydra(16, d_state=8, headdim=8, learnable_init_states=True)
    names = set(m.state_dict())
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "init_states", "dt_bias", "A_log",
                     "D", "fc_D.weight", "norm.weight", "out_proj.weight"}
    assert m.in_proj.weight.shape == (2 * 32 + 4 * 8 + 2 * 4, 16)
    assert torch.equal(m.A_log, torch.zeros(4))
    with torch.no_grad():
        m.init_states.normal_()
    x = torch.randn(2, 5, 16)
    assert m(x).shape == (2, 5, 16)
    x1 = torch.randn(2, 1, 16)
    assert m(x1).shape == (2, 1, 16)


def test_hydra_init_states_enter_both_directions():
    torch.manual_seed(0)
    m = Hydra(8, d_state=4, headdim=4, d_conv=3, learnable_init_states=True, backend="reference").double()
    with torch.no_grad():
        m.init_states.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y = m(x)
    (g,) = torch.autograd.grad(y.sum(), m.init_states)
    assert g.abs().sum() > 0
    m.backend = "auto"
    torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-10)
