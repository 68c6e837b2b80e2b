"""3-D UNet-Mamba: residual conv encoder-decoder with multi-directional Mamba at low resolution.

Layout (``n = len(widths)`` stages, input side divisible by ``2**(n-1)``):
encoder stage i = [stride-2 conv if i > 0] + ``depths[i]`` residual conv blocks
                  + (if i in ``mamba_stages``) ``mamba_layers`` scan-Mamba layers (SegMamba's
                  tri-orientated scan from :mod:`core.layers`: forward, backward, inter-slice);
decoder = transposed-conv upsampling, concatenated skip, one residual block per stage; 1x1x1 head.

Every conv block accepts a visibility ``mask`` (B, 1, *S) so MambaMIM pretraining can run the
encoder *sparsely*: masked voxels are zeroed after each conv and excluded from the instance-norm
statistics, so convolutions only ever see visible voxels. In Mamba layers masked tokens are filled
by :class:`TOKI` (state-space token interpolation) before the scan.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.layers import Mamba, RMSNorm, flatten_scans, merge_scans
from core.layers.scan_orders import expand_orders

PRESETS: Dict[str, dict] = {
    # CPU tests and demos: ~0.3 M parameters, Mamba on the two coarsest stages
    "tiny": dict(widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), mamba_stages=(2, 3), mamba_layers=1,
                 d_state=8, expand=1, orders="tri"),
    # GPU: nnU-Net-like widths, Mamba on the three coarsest stages
    "base": dict(widths=(32, 64, 128, 256, 320), depths=(1, 2, 2, 2, 2), mamba_stages=(2, 3, 4),
                 mamba_layers=2, d_state=16, expand=2, orders="tri"),
}


def model_config(model_cfg: dict) -> dict:
    """``{"preset": "tiny", "widths": ...}`` -> full keyword dict for :class:`UNetMamba` (minus channels)."""
    cfg = dict(model_cfg or {})
    preset = cfg.pop("preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (choose from {sorted(PRESETS)})")
    out = dict(PRESETS[preset])
    out.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()})
    return out


class MaskedInstanceNorm3d(nn.Module):
    """Instance norm whose statistics use only visible voxels when a mask (B, 1, *S) is given."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:  # the fused kernel: same maths, much faster on CPU
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        dims = tuple(range(2, x.ndim))
        n = mask.sum(dims, keepdim=True).clamp_min(1.0)
        mean = (x * mask).sum(dims, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / n
        y = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (y * self.weight.view(shape) + self.bias.view(shape)) * mask


class ResBlock(nn.Module):
    """conv3-norm-act-conv3-norm + (1x1 projected) skip, act. Optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = MaskedInstanceNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = MaskedInstanceNorm3d(cout)
        self.skip = (nn.Conv3d(cin, cout, 1, stride=stride, bias=False)
                     if (cin != cout or stride != 1) else nn.Identity())

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x), mask), 0.01)
        h = self.norm2(self.conv2(h), mask)
        out = F.leaky_relu(h + self.skip(x), 0.01)
        return out if mask is None else out * mask


class TOKI(nn.Module):
    """State-space token interpolation for masked tokens (MambaMIM).

    In each scan sequence, a masked token at position t is filled from the nearest visible token
    before it (distance d_f) and after it (d_b) in scan order, carried by learned per-channel
    state-space decays, as a diagonal SSM would propagate a state across the gap:
    ``fill = (w_f * W_f x_prev + w_b * W_b x_next + w_0 * tok) / (w_f + w_b + w_0)``,
    ``w_f = exp(-softplus(a_f) * d_f)``, ``w_b = exp(-softplus(a_b) * d_b)``; tok is a learned token
    used when no visible neighbour is near. Visible tokens pass unchanged.
    """

    def __init__(self, d_model: int, n_orders: int):
        super().__init__()
        self.a_f = nn.Parameter(torch.full((n_orders, d_model), -1.0))
        self.a_b = nn.Parameter(torch.full((n_orders, d_model), -1.0))
        self.proj_f = nn.Parameter(torch.eye(d_model).repeat(n_orders, 1, 1))
        self.proj_b = nn.Parameter(torch.eye(d_model).repeat(n_orders, 1, 1))
        self.token = nn.Parameter(torch.zeros(n_orders, d_model))
        self.w0 = nn.Parameter(torch.full((n_orders, 1), -4.0))

    def forward(self, seqs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """seqs (B, K, L, C), visible (B, K, L) bool -> (B, K, L, C) with masked tokens filled."""
        B, K, L, C = seqs.shape
        idx = torch.arange(L, device=seqs.device).expand(B, K, L)
        prev = torch.where(visible, idx, torch.full_like(idx, -1)).cummax(-1).values
        nxt = torch.where(visible, idx, torch.full_like(idx, L)).flip(-1).cummin(-1).values.flip(-1)
        has_p, has_n = prev >= 0, nxt < L
        x_p = seqs.gather(2, prev.clamp(0, L - 1).unsqueeze(-1).expand(B, K, L, C))
        x_n = seqs.gather(2, nxt.clamp(0, L - 1).unsqueeze(-1).expand(B, K, L, C))
        x_p = torch.einsum("bklc,kdc->bkld", x_p, self.proj_f)
        x_n = torch.einsum("bklc,kdc->bkld", x_n, self.proj_b)
        d_p = (idx - prev).clamp_min(0).to(seqs.dtype).unsqueeze(-1)
        d_n = (nxt - idx).clamp_min(0).to(seqs.dtype).unsqueeze(-1)
        w_p = torch.exp(-F.softplus(self.a_f)[None, :, None] * d_p) * has_p.unsqueeze(-1)
        w_n = torch.exp(-F.softplus(self.a_b)[None, :, None] * d_n) * has_n.unsqueeze(-1)
        w_0 = F.softplus(self.w0)[None, :, None]
        fill = (w_p * x_p + w_n * x_n + w_0 * self.token[None, :, None]) / (w_p + w_n + w_0)
        return torch.where(visible.unsqueeze(-1), seqs, fill)


class ScanMambaLayer(nn.Module):
    """x + merge_k Mamba_k(RMSNorm(scan_k(x))), then x + MLP(x): a Mamba block over 3-D scan orders."""

    def __init__(self, d_model: int, orders="tri", d_state: int = 16, expand: int = 2, toki: bool = True):
        super().__init__()
        self.orders = expand_orders(orders, 3)
        k = len(self.orders)
        self.norm = RMSNorm(d_model)
        self.mixers = nn.ModuleList(Mamba(d_model, d_state=d_state, expand=expand) for _ in range(k))
        self.toki = TOKI(d_model, k) if toki else None
        self.mlp = nn.Sequential(nn.Conv3d(d_model, 2 * d_model, 1), nn.GELU(), nn.Conv3d(2 * d_model, d_model, 1))
        self.norm2 = MaskedInstanceNorm3d(d_model)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, X, Y, Z); mask (B, 1, X, Y, Z) visibility or None -> (B, C, X, Y, Z), dense."""
        B, C, *S = x.shape
        seqs = flatten_scans(x, self.orders)                               # (B, K, L, C)
        if mask is not None and self.toki is not None:
            vis = flatten_scans(mask, self.orders)[..., 0] > 0.5            # (B, K, L)
            seqs = self.toki(seqs, vis)
        ys = torch.stack([m(self.norm(seqs[:, k])) for k, m in enumerate(self.mixers)], 1)
        y = merge_scans(ys, S, self.orders)
        if mask is not None and self.toki is not None:
            x = merge_scans(seqs, S, self.orders)  # the TOKI-filled grid is the residual stream
        x = x + y
        return x + self.mlp(self.norm2(x))


class UNetMamba(nn.Module):
    """3-D UNet-Mamba. ``forward(x (B, in_channels, X, Y, Z)) -> logits (B, out_channels, X, Y, Z)``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, widths: Sequence[int] = (8, 16, 32, 64),
                 depths: Sequence[int] = (1, 1, 1, 1), mamba_stages: Sequence[int] = (2, 3), mamba_layers: int = 1,
                 d_state: int = 16, expand: int = 2, orders="tri", toki: bool = True):
        super().__init__()
        n = len(widths)
        if len(depths) != n:
            raise ValueError(f"widths {widths} and depths {depths} need the same length")
        self.in_channels, self.out_channels, self.widths = in_channels, out_channels, tuple(widths)
        self.mamba_stages = tuple(int(s) % n for s in mamba_stages)
        self.stem = nn.Conv3d(in_channels, widths[0], 3, padding=1, bias=False)
        self.stem_norm = MaskedInstanceNorm3d(widths[0])
        self.enc = nn.ModuleList()
        self.mamba = nn.ModuleDict()
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = [ResBlock(widths[i - 1] if i else w, w, stride=2 if i else 1)]
            blocks += [ResBlock(w, w) for _ in range(max(d, 1) - 1)]
            self.enc.append(nn.ModuleList(blocks))
            if i in self.mamba_stages:
                self.mamba[str(i)] = nn.ModuleList(ScanMambaLayer(w, orders, d_state, expand, toki)
                                                   for _ in range(mamba_layers))
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(n - 1))
        self.dec = nn.ModuleList(ResBlock(2 * widths[i], widths[i]) for i in range(n - 1))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def encode(self, x: torch.Tensor, masks: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Encoder features per stage [(B, widths[i], S / 2**i)]; with ``masks`` (one (B, 1, S / 2**i)
        per stage) convolutions see only visible voxels and Mamba stages fill masked tokens (TOKI)."""
        m0 = masks[0] if masks is not None else None
        h = F.leaky_relu(self.stem_norm(self.stem(x if m0 is None else x * m0), m0), 0.01)
        feats = []
        for i, blocks in enumerate(self.enc):
            m = masks[i] if masks is not None else None
            for b in blocks:
                h = b(h, m)
            if str(i) in self.mamba:
                for layer in self.mamba[str(i)]:
                    h = layer(h, m)
                feats.append(h)
                if m is not None:
                    h = h * m  # the next convolutions must again see only visible voxels
            else:
                feats.append(h)
        return feats

    def decode(self, feats: List[torch.Tensor]) -> torch.Tensor:
        """Decoder features (B, widths[0], S) from encoder features."""
        h = feats[-1]
        for i in range(len(self.widths) - 2, -1, -1):
            h = self.dec[i](torch.cat([self.up[i](h), feats[i]], 1))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.divisor
        if any(s % d for s in x.shape[2:]):
            raise ValueError(f"UNetMamba: spatial size {tuple(x.shape[2:])} must be a multiple of {d}")
        return self.head(self.decode(self.encode(x)))


def build_model(model_cfg: dict, in_channels: int, num_classes: int) -> UNetMamba:
    """UNetMamba from a config ``{"preset": ..., overrides...}``."""
    return UNetMamba(in_channels=in_channels, out_channels=num_classes, **model_config(model_cfg))


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
