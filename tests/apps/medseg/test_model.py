"""UNet-Mamba, TOKI and MambaMIM: shapes, sparse-encoder property, interpolation maths, loss decreases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from apps.medseg.model import TOKI, build_model, count_parameters
from apps.medseg.pretrain import MambaMIM, MIMModule
from apps.medseg.train import load_pretrained_into


def test_unet_mamba_shapes_and_presets():
    torch.manual_seed(0)
    net = build_model({"preset": "tiny"}, in_channels=2, num_classes=3)
    assert 1e5 < count_parameters(net) < 2e6
    assert "2" in net.mamba and "3" in net.mamba and "0" not in net.mamba
    x = torch.randn(1, 2, 32, 32, 16, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 3, 32, 32, 16)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in net.named_parameters() if "mamba" in n and "toki" not in n)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 2, 20, 32, 16))
    big = build_model({"preset": "base"}, 1, 2)
    assert count_parameters(big) > 10 * count_parameters(build_model({"preset": "tiny"}, 1, 2))
    custom = build_model({"preset": "tiny", "widths": [4, 8, 16], "depths": [1, 1, 2], "mamba_stages": [2]}, 1, 2)
    assert custom.divisor == 4 and list(custom.mamba) == ["2"]


def test_toki_interpolates_from_nearest_visible_tokens():
    torch.manual_seed(0)
    toki = TOKI(d_model=3, n_orders=1).double()
    with torch.no_grad():
        toki.a_f.fill_(0.3)
        toki.a_b.fill_(-0.2)
        toki.proj_f.copy_(torch.randn(1, 3, 3))
        toki.proj_b.copy_(torch.randn(1, 3, 3))
        toki.token.copy_(torch.randn(1, 3))
    seq = torch.randn(1, 1, 8, 3, dtype=torch.float64)
    vis = torch.tensor([[[True, False, False, True, False, True, False, False]]])
    out = toki(seq, vis)
    assert torch.equal(out[vis], seq[vis])  # visible tokens pass unchanged
    sp = F.softplus
    w0 = sp(toki.w0[0, 0])

    def expect(t, p, n):
        num = w0 * toki.token[0]
        den = w0
        if p is not None:
            w = torch.exp(-sp(toki.a_f[0]) * (t - p))
            num, den = num + w * (toki.proj_f[0] @ seq[0, 0, p]), den + w
        if n is not None:
            w = torch.exp(-sp(toki.a_b[0]) * (n - t))
            num, den = num + w * (toki.proj_b[0] @ seq[0, 0, n]), den + w
        return num / den

    for t, p, n in ((1, 0, 3), (2, 0, 3), (4, 3, 5), (6, 5, None), (7, 5, None)):
        assert torch.allclose(out[0, 0, t], expect(t, p, n), atol=1e-12), t
    # no visible token before the first one
    vis2 = torch.tensor([[[False, False, True, True, True, True, True, True]]])
    assert torch.allclose(toki(seq, vis2)[0, 0, 0], expect(0, None, 2), atol=1e-12)


def _cfg():
    from .conftest import tiny_config

    return tiny_config()


def test_mim_masks_and_sparse_encoder():
    torch.manual_seed(0)
    net = build_model({"preset": "tiny"}, 1, 2)
    mim = MambaMIM(net, mask_ratio=0.75)
    x = torch.randn(2, 1, 32, 32, 32)
    masks = mim.draw_masks(x, torch.Generator().manual_seed(1))
    assert [tuple(m.shape[2:]) for m in masks] == [(32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]
    low = masks[-1]
    assert low.sum().item() == 2 * round(64 * 0.25)  # ratio holds on the bottleneck grid
    for i, m in enumerate(masks):  # every scale is the bottleneck draw, upsampled
        assert torch.equal(F.max_pool3d(m, 2 ** (3 - i)) if i < 3 else m, low)
    # convolutions see only visible voxels: changing masked input voxels changes no encoder feature
    net.eval()
    with torch.no_grad():
        f1 = net.encode(x, masks)
        x2 = x + 5.0 * torch.randn_like(x) * (1 - masks[0])
        f2 = net.encode(x2, masks)
    for a, b in zip(f1, f2):
        assert torch.allclose(a, b, atol=1e-5)
    # ... while the reconstruction loss sees them (target), only where masked
    l1, recon, m = mim(x, masks)
    assert recon.shape == x.shape and m.shape == (2, 1, 32, 32, 32)
    x3 = x + 5.0 * torch.randn_like(x) * masks[0]  # change only visible voxels' *targets*
    tgt = mim.patch_target(x)
    assert torch.allclose(tgt.mean((2, 3, 4)), torch.zeros(2, 1), atol=1e-4)
    assert not torch.isclose(mim(x3, masks)[0], l1)


def test_pretraining_lowers_loss_and_transfers_weights():
    torch.manual_seed(0)
    cfg = _cfg()
    module = MIMModule(cfg, in_channels=1)
    x = torch.randn(1, 1, 16, 16, 16).cumsum(2) / 4  # smooth structure to predict
    masks = module.mim.draw_masks(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(module.parameters(), 3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = module.mim(x, masks)[0]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    # --init-from copies everything but the head into a fresh segmentation net
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pre.ckpt"
        torch.save({"state_dict": module.state_dict()}, path)
        seg = build_model(cfg["model"], 1, 2)
        info = load_pretrained_into(seg, path)
        assert info["loaded"] >= 0.9 * (info["total"] - 2)
        assert torch.equal(seg.stem.weight, module.mim.net.stem.weight)
        assert torch.equal(seg.mamba["3"][0].mixers[0].A_log, module.mim.net.mamba["3"][0].mixers[0].A_log)
        other = build_model({"preset": "tiny", "widths": [4, 8, 16, 32]}, 1, 2)
        from core.engine import UserError

        with pytest.raises(UserError, match="architecture differs"):
            load_pretrained_into(other, path)
        torch.save({"state_dict": {"x": torch.zeros(1)}}, Path(d) / "other.ckpt")
        with pytest.raises(UserError, match="not an ssm-medseg pretraining checkpoint"):
            load_pretrained_into(seg, Path(d) / "other.ckpt")
    assert math.isfinite(losses[-1])
