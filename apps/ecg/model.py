"""ECG classifiers: a 1-D CNN stem + bidirectional Mamba blocks (the 1D-CNN ECG-Mamba design),
and two reference models of similar size (1-D ResNet, Transformer encoder) for comparison.

Every model maps ``x (B, n_leads, L)`` -> logits ``(B, num_classes)``.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# width/depth presets; "tiny" trains on a laptop CPU in minutes
PRESETS: Dict[str, dict] = {
    "tiny": dict(arch="mamba", d_model=32, n_layer=2, d_state=8, expand=2, stem_channels=[16, 32],
                 stem_strides=[4, 4], kernel_size=9, dropout=0.1),
    "small": dict(arch="mamba", d_model=64, n_layer=4, d_state=16, expand=2, stem_channels=[32, 48, 64],
                  stem_strides=[4, 2, 2], kernel_size=9, dropout=0.1),
    "base": dict(arch="mamba", d_model=128, n_layer=6, d_state=16, expand=2, stem_channels=[64, 96, 128],
                 stem_strides=[4, 2, 2], kernel_size=9, dropout=0.1),
}


def arch_options(arch: str) -> List[str]:
    """The config keys architecture ``arch`` takes (its constructor's, less n_leads/num_classes)."""
    import inspect

    return [n for n in inspect.signature(ARCHS[arch]).parameters if n not in ("n_leads", "num_classes")]


def all_model_keys() -> List[str]:
    """Every key a ``model`` config section may hold: preset, arch and any architecture's options."""
    return sorted({"preset", "arch"} | {k for a in ARCHS for k in arch_options(a)})


def model_config(preset: str = "small", **overrides) -> dict:
    """A preset's config with ``overrides`` applied. With another ``arch`` than the preset's, only the
    preset keys that architecture takes are kept (the rest are its own defaults). Unknown preset or
    arch, or an override the architecture does not take -> ValueError naming it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    arch = overrides.get("arch", cfg["arch"])
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; choose one of {sorted(ARCHS)}")
    valid = arch_options(arch)
    bad = [k for k in overrides if k != "arch" and k not in valid]
    if bad:
        raise ValueError(f"model.{bad[0]} is not an option of arch {arch}; its options: {', '.join(valid)}")
    cfg = {k: v for k, v in cfg.items() if k == "arch" or k in valid}
    cfg.update(overrides)
    return cfg


class ConvStem(nn.Module):
    """Strided conv + BatchNorm + GELU stages: ``(B, n_leads, L)`` -> ``(B, C_last, L / prod(strides))``."""

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[int], kernel_size: int = 9):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("stem_channels and stem_strides must have the same length")
        layers: List[nn.Module] = []
        c_in = in_channels
        for c, s in zip(channels, strides):
            k = max(kernel_size, s)
            layers += [nn.Conv1d(c_in, c, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm1d(c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in
        self.stride = int(math.prod(strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ECGMamba(nn.Module):
    """CNN stem -> ``n_layer`` bidirectional Mamba blocks -> mean+max pooling -> linear head.

    ``forward(x (B, n_leads, L)) -> logits (B, num_classes)``; ``features`` gives the
    per-token states ``(B, L / stride, d_model)``.
    """

    def __init__(self, n_leads: int, num_classes: int, d_model: int = 64, n_layer: int = 4, d_state: int = 16,
                 expand: int = 2, stem_channels: Sequence[int] = (32, 64), stem_strides: Sequence[int] = (4, 4),
                 kernel_size: int = 9, dropout: float = 0.1, mixer: str = "bimamba"):
        super().__init__()
        from core.layers import SSMBackbone

        self.stem = ConvStem(n_leads, stem_channels, stem_strides, kernel_size)
        self.proj = nn.Linear(self.stem.out_channels, d_model)
        kw = dict(d_state=d_state, expand=expand)
        if mixer == "bimamba":
            kw["combine"] = "add"
        self.backbone = SSMBackbone(d_model, n_layer, mixer=mixer, mixer_kwargs=kw, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * d_model, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.stem(x).transpose(1, 2))      # (B, T, d_model)
        return self.backbone(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        pooled = torch.cat([h.mean(1), h.amax(1)], dim=-1)
        return self.head(self.drop(pooled))


class _ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, k: int):
        super().__init__()
        self.c1 = nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
        self.b1 = nn.BatchNorm1d(c_out)
        self.c2 = nn.Conv1d(c_out, c_out, k, padding=k // 2, bias=False)
        self.b2 = nn.BatchNorm1d(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))


class ResNet1d(nn.Module):
    """Reference 1-D ResNet (two 3-tap-equivalent convs per block, stride-2 stages, global pooling)."""

    def __init__(self, n_leads: int, num_classes: int, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1),
                 kernel_size: int = 9, dropout: float = 0.1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(n_leads, width, 15, stride=4, padding=7, bias=False),
                                  nn.BatchNorm1d(width), nn.ReLU())
        layers, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * (2 ** min(i, 2))
            for j in range(n):
                layers.append(_ResBlock1d(c, c_out, 2 if j == 0 else 1, kernel_size))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        h = self.layers(self.stem(x))
        return self.head(self.drop(torch.cat([h.mean(-1), h.amax(-1)], dim=-1)))


class ECGTransformer(nn.Module):
    """Reference Transformer encoder: the same CNN stem, sinusoidal positions, pre-norm encoder layers."""

    def __init__(self, n_leads: int, num_classes: int, d_model: int = 64, n_layer: int = 4, n_head: int = 4,
                 stem_channels: Sequence[int] = (32, 64), stem_strides: Sequence[int] = (4, 4),
                 kernel_size: int = 9, dropout: float = 0.1, ff_mult: int = 2):
        super().__init__()
        self.stem = ConvStem(n_leads, stem_channels, stem_strides, kernel_size)
        self.proj = nn.Linear(self.stem.out_channels, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_head, ff_mult * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * d_model, num_classes)
        self.d_model = d_model

    def _pos(self, t: int, device, dtype) -> torch.Tensor:
        pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32)
                        * (-math.log(10000.0) / self.d_model))
        pe = torch.zeros(t, self.d_model, device=device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : self.d_model // 2]
        return pe.to(dtype)

    def forward(self, x):
        h = self.proj(self.stem(x).transpose(1, 2))
        h = h + self._pos(h.shape[1], h.device, h.dtype)
        h = self.norm(self.encoder(h))
        return self.head(self.drop(torch.cat([h.mean(1), h.amax(1)], dim=-1)))


ARCHS = {"mamba": ECGMamba, "resnet1d": ResNet1d, "transformer": ECGTransformer}


def build_model(cfg: dict, n_leads: int, num_classes: int) -> nn.Module:
    """Instantiate ``cfg["arch"]`` ("mamba", "resnet1d", "transformer") with the rest of ``cfg``."""
    cfg = dict(cfg)
    arch = cfg.pop("arch", "mamba")
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; choose one of {sorted(ARCHS)}")
    bad = [k for k in cfg if k not in arch_options(arch)]
    if bad:
        raise ValueError(f"model.{bad[0]} is not an option of arch {arch}; its options: "
                         f"{', '.join(arch_options(arch))}")
    return ARCHS[arch](n_leads=n_leads, num_classes=num_classes, **cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
