"""Independent float64 re-implementations of the layers, written step by step from the papers /
mamba_ssm's definitions (no core.ops), used as test oracles."""
import torch
import torch.nn.functional as F


def conv_causal(x, weight, bias):
    """x (B, L, D), weight (D, 1, W) -> (B, L, D): out_t = sum_k w[k] x[t - W + 1 + k]."""
    B, L, D = x.shape
    W = weight.shape[-1]
    out = []
    for t in range(L):
        acc = bias.clone() if bias is not None else x.new_zeros(D)
        acc = acc.expand(B, D)
        for k in range(W):
            s = t - W + 1 + k
            if s >= 0:
                acc = acc + weight[:, 0, k] * x[:, s]
        out.append(acc)
    return torch.stack(out, 1)


def mamba_naive(m, u):
    """Mamba-1 block, one time step after another. u (B, L, d_model)."""
    xz = u @ m.in_proj.weight.t()
    if m.in_proj.bias is not None:
        xz = xz + m.in_proj.bias
    x, z = xz.chunk(2, dim=-1)
    x = F.silu(conv_causal(x, m.conv1d.weight, m.conv1d.bias))
    A = -torch.exp(m.A_log)
    Bsz, L, D = x.shape
    h = x.new_zeros(Bsz, D, m.d_state)
    ys = []
    for t in range(L):
        proj = x[:, t] @ m.x_proj.weight.t()
        dt, Bt, Ct = proj.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(dt @ m.dt_proj.weight.t() + m.dt_proj.bias)        # (B, D)
        h = torch.exp(dt[..., None] * A) * h + (dt * x[:, t])[..., None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + m.D * x[:, t]
        ys.append(y * F.silu(z[:, t]))
    y = torch.stack(ys, 1)
    out = y @ m.out_proj.weight.t()
    return out + m.out_proj.bias if m.out_proj.bias is not None else out


def gated_rmsnorm(y, z, weight, group, eps, before_gate):
    if not before_gate:
        y = y * F.silu(z)
    shp = y.shape
    g = y.reshape(*shp[:-1], shp[-1] // group, group)
    g = g / torch.sqrt((g * g).mean(-1, keepdim=True) + eps)
    y = g.reshape(shp) * weight
    return y * F.silu(z) if before_gate else y


def mamba2_naive(m, u):
    """Mamba-2 block, one time step after another. u (B, L, d_model)."""
    zxbcdt = u @ m.in_proj.weight.t()
    if m.in_proj.bias is not None:
        zxbcdt = zxbcdt + m.in_proj.bias
    d_mlp = (zxbcdt.shape[-1] - 2 * m.d_ssm - 2 * m.ngroups * m.d_state - m.nheads) // 2
    z0, x0, z, xBC, dt = zxbcdt.split([d_mlp, d_mlp, m.d_ssm, m.conv_dim, m.nheads], dim=-1)
    xBC = F.silu(conv_causal(xBC, m.conv1d.weight, m.conv1d.bias))
    GN = m.ngroups * m.d_state
    x, Bm, Cm = xBC.split([m.d_ssm, GN, GN], dim=-1)
    Bsz, L, _ = x.shape
    H, P, N, G = m.nheads, m.headdim, m.d_state, m.ngroups
    A = -torch.exp(m.A_log)
    D = m.D.reshape(H, P) if m.D_has_hdim else m.D[:, None].expand(H, P)
    h = x.new_zeros(Bsz, H, P, N)
    ys = []
    for t in range(L):
        d = F.softplus(dt[:, t] + m.dt_bias).clamp(*m.dt_limit)          # (B, H)
        xt = x[:, t].reshape(Bsz, H, P)
        Bt = Bm[:, t].reshape(Bsz, G, N)[:, torch.arange(H) // (H // G)]    # head h uses group h // (H/G)
        Ct = Cm[:, t].reshape(Bsz, G, N)[:, torch.arange(H) // (H // G)]
        h = torch.exp(d * A)[..., None, None] * h + (d[..., None] * xt)[..., None] * Bt[:, :, None, :]
        y = (h * Ct[:, :, None, :]).sum(-1) + D * xt
        ys.append(y.reshape(Bsz, H * P))
    y = torch.stack(ys, 1)
    if m.rmsnorm:
        y = gated_rmsnorm(y, z, m.norm.weight, m.norm.group_size, m.norm.eps, m.norm_before_gate)
    else:
        y = y * F.silu(z)
    if d_mlp > 0:
        y = torch.cat([F.silu(z0) * x0, y], -1)
    out = y @ m.out_proj.weight.t()
    return out + m.out_proj.bias if m.out_proj.bias is not None else out
