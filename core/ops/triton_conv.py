"""Triton depthwise causal conv ("triton" backend of ``causal_conv1d``).

One fused kernel: taps + bias + SiLU in one pass over ``x`` (torch would make
one pass per tap). The backward reuses it: the input gradient is the causal
conv of the (right-padded) output gradient with the flipped taps; the weight
and bias gradients are W small reductions in torch.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
import torch
import torch.nn.functional as F

from .dispatch import register_backend
from .varlen import check_seq_idx
from .triton_scan import _HAVE_TRITON, _interpret, can_run, tl  # one triton import shim and device rule

if _HAVE_TRITON:
    import triton
_kernels = {}


def _conv_kernel(xp, w, bias, out, sin, sout, dim, Lout, Lp,
                 W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_SEQ: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    # xp: (batch, dim, Lp) already left-padded by W-1; out: (batch, dim, Lout), Lout = Lp - W + 1.
    # HAS_SEQ: sin (batch, Lp) / sout (batch, Lout) sequence ids; tap k of output t counts
    # only when sin[t + k] == sout[t] (packed sequences never see each other).
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    dm, tm = d < dim, t < Lout
    m = dm[:, None] & tm[None, :]
    base = xp + b * dim * Lp + d[:, None] * Lp
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_SEQ:
        s_out = tl.load(sout + b * Lout + t, mask=tm, other=0)
    for k in tl.static_range(W):
        wk = tl.load(w + d * W + k, mask=dm, other=0.0).to(tl.float32)
        mk = m
        if HAS_SEQ:
            s_in = tl.load(sin + b * Lp + t + k, mask=tm, other=0)
            mk = m & (s_in == s_out)[None, :]
        xv = tl.load(base + t[None, :] + k, mask=mk, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(bias + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out + b * dim * Lout + d[:, None] * Lout + t[None, :], acc, mask=m)


def _launch(xp, w, bias, silu, out_dtype, seq=None):
    """Causal conv of an already left-padded ``xp`` (batch, dim, Lp) -> (batch, dim, Lp - W + 1).

    ``seq``: None or (sin (batch, Lp), sout (batch, Lp - W + 1)) int32 sequence ids.
    """
    key = _interpret()  # jitting reads TRITON_INTERPRET: one kernel per setting, as in triton_scan
    if key not in _kernels:
        _kernels[key] = triton.jit(_conv_kernel)
    batch, dim, Lp = xp.shape
    W = w.shape[1]
    Lout = Lp - W + 1
    out = torch.empty(batch, dim, Lout, device=xp.device, dtype=torch.float32)
    BLOCK_D, BLOCK_L = 16, 128
    grid = (batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(max(Lout, 1), BLOCK_L))
    sin, sout = seq if seq is not None else (out, out)
    _kernels[key][grid](xp.contiguous(), w.contiguous(), bias if bias is not None else w, out,
                        sin, sout, dim, Lout, Lp, W=W, HAS_BIAS=bias is not None, SILU=silu,
                        HAS_SEQ=seq is not None, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L)
    return out.to(out_dtype)


class _TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, init, silu, seq_idx):
        W = weight.shape[1]
        pad = init.to(x.dtype) if init is not None else x.new_zeros(x.shape[0], x.shape[1], W - 1)
        xp = torch.cat([pad, x], dim=-1)
        ctx.save_for_backward(xp, weight, bias)
        ctx.silu, ctx.has_init = silu, init is not None
        ctx.seq = None
        if seq_idx is not None:  # the initial states belong to the first sequence
            sp = torch.cat([seq_idx[:, :1].expand(-1, W - 1), seq_idx], dim=1).contiguous()
            ctx.seq = (sp, seq_idx)
        return _launch(xp, weight, bias, silu, x.dtype, ctx.seq)

    @staticmethod
    def backward(ctx, gy):
        xp, weight, bias = ctx.saved_tensors
        W, L = weight.shape[1], gy.shape[-1]
        g = gy.float()
        if ctx.silu:  # recompute the pre-activation (one cheap pass) instead of storing it
            pre = _launch(xp, weight, bias, False, torch.float32, ctx.seq)
            s = torch.sigmoid(pre)
            g = g * s * (1 + pre * (1 - s))
        # d xp[s] = sum_k w[k] g[s - k]: a causal conv of g (padded right by W-1) with flipped taps
        seq_b, masks = None, None
        if ctx.seq is not None:  # outputs are xp positions (ids sp), inputs g's (ids sq, padded)
            sp, sq = ctx.seq
            sgp = torch.cat([sp, sq[:, -1:].expand(-1, W - 1)], dim=1).contiguous()
            seq_b = (sgp, sp)
            masks = [(sp[:, k:k + L] == sq)[:, None].float() for k in range(W)]
        gxp = _launch(F.pad(g, (W - 1, W - 1)), weight.flip(1).float(), None, False, torch.float32, seq_b)
        gx = gxp[..., W - 1:].to(xp.dtype)
        ginit = gxp[..., :W - 1].to(xp.dtype) if ctx.has_init else None
        xf = xp.float()
        gw = torch.stack([(g * xf[..., k:k + L] * (masks[k] if masks else 1.0)).sum((0, 2))
                          for k in range(W)], dim=1).to(weight.dtype)
        gb = g.sum((0, 2)).to(bias.dtype) if bias is not None else None
        return gx, gw, gb, ginit, None, None


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_states=None, seq_idx=None):
    """Depthwise causal conv with our Triton kernel. Shapes as :func:`core.ops.causal_conv1d`."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    sq = check_seq_idx(seq_idx, x.shape[0], x.shape[-1]) if seq_idx is not None else None
    return _TritonConv.apply(x, weight, bias, initial_states, activation is not None, sq)


if _HAVE_TRITON:
    register_backend("causal_conv1d", "triton", causal_conv1d_triton, can_run)
