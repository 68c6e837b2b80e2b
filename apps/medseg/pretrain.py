"""MambaMIM self-supervised pretraining of the UNet-Mamba on unlabelled volumes.

* Bottom-up 3-D hybrid masking: one Bernoulli mask (ratio ~0.75) drawn on the bottleneck grid
  and upsampled (nearest) to every encoder scale, so a masked bottleneck token hides the same
  region at every resolution; the conv stages run sparsely (masked voxels zeroed, excluded from
  normalisation statistics), the Mamba stages fill masked tokens with TOKI (see model.TOKI).
* Decoder: the UNet decoder itself; skip features of conv-only stages get a learned per-scale
  mask embedding at masked voxels (SparK-style densifying), then a 1x1x1 reconstruction head.
* Target: voxels normalised per bottleneck-cell patch (mean 0, std 1); loss: MSE on masked
  patches only.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.engine import UserError, best_or_last_checkpoint, configure_optimizers, is_rank_zero, make_trainer, write_json

from .model import UNetMamba, build_model, count_parameters


class MambaMIM(nn.Module):
    """Masked image modelling wrapper. ``forward(x (B, C, *S)) -> (loss, recon (B, C, *S), mask (B, 1, *S))``."""

    def __init__(self, net: UNetMamba, mask_ratio: float = 0.75):
        super().__init__()
        self.net, self.mask_ratio = net, float(mask_ratio)
        self.mask_embed = nn.ParameterList(nn.Parameter(torch.zeros(1, w, 1, 1, 1)) for w in net.widths)
        for p in self.mask_embed:
            nn.init.trunc_normal_(p, std=0.02)
        self.recon = nn.Conv3d(net.widths[0], net.in_channels, 1)

    def draw_masks(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
        """Visibility masks per encoder scale, [(B, 1, S / 2**i)], from one bottleneck-grid draw."""
        d = self.net.divisor
        B, S = x.shape[0], [s // d for s in x.shape[2:]]
        n = int(torch.tensor(S).prod())
        n_keep = max(1, int(round(n * (1.0 - self.mask_ratio))))
        noise = torch.rand(B, n, generator=generator, device="cpu").to(x.device)
        keep = noise.argsort(1)[:, :n_keep]
        low = torch.zeros(B, n, device=x.device, dtype=x.dtype).scatter_(1, keep, 1.0).view(B, 1, *S)
        return [F.interpolate(low, scale_factor=d // 2 ** i, mode="nearest") if d // 2 ** i > 1 else low
                for i in range(len(self.net.widths))]

    def patch_target(self, x: torch.Tensor) -> torch.Tensor:
        """Voxels normalised within each bottleneck cell (p^3 voxels, p = divisor): (B, C, *S)."""
        p = self.net.divisor
        mean = F.avg_pool3d(x, p)
        var = (F.avg_pool3d(x * x, p) - mean ** 2).clamp_min(0)
        up = lambda t: F.interpolate(t, scale_factor=p, mode="nearest")
        return (x - up(mean)) / torch.sqrt(up(var) + 1e-6)

    def forward(self, x: torch.Tensor, masks: Optional[List[torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks = masks if masks is not None else self.draw_masks(x)
        feats = self.net.encode(x, masks)
        dense = []
        for i, (f, m) in enumerate(zip(feats, masks)):
            if str(i) in self.net.mamba:  # TOKI already filled the masked tokens of this stage
                dense.append(f)
            else:
                dense.append(f * m + self.mask_embed[i] * (1 - m))
        recon = self.recon(self.net.decode(dense))
        target = self.patch_target(x)
        hidden = 1.0 - masks[0]
        err = ((recon - target) ** 2 * hidden).sum() / (hidden.sum() * x.shape[1]).clamp_min(1.0)
        return err, recon, masks[0]


class MIMModule(L.LightningModule):
    """Lightning wrapper for :class:`MambaMIM`; the net lives at ``mim.net`` (what ``--init-from`` reads)."""

    def __init__(self, config: dict, in_channels: int):
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        net = build_model(config["model"], in_channels, 2)
        self.mim = MambaMIM(net, config["pretrain"]["mask_ratio"])

    def training_step(self, batch, _):
        loss, _, _ = self.mim(batch["image"])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        p = self.config["pretrain"]
        return configure_optimizers(self, lr=p["lr"], weight_decay=p["weight_decay"])


def pretrain_transforms(data_cfg: Mapping):
    """Preprocessing head + random patches + light spatial/intensity augmentation (no labels)."""
    from monai import transforms as T

    from .transforms import preprocess_transforms

    patch = [int(p) for p in data_cfg["patch_size"]]
    ts = preprocess_transforms(data_cfg, with_label=False) + [
        T.SpatialPadd(["image"], spatial_size=patch),
        T.RandSpatialCropSamplesd(["image"], roi_size=patch, num_samples=int(data_cfg["samples_per_volume"]),
                                  random_size=False),
        T.RandFlipd(["image"], prob=0.5, spatial_axis=0),
        T.RandScaleIntensityd(["image"], prob=0.3, factors=0.1),
        T.EnsureTyped(["image"], dtype=torch.float32, track_meta=False),
    ]
    return T.Compose(ts)


def run_pretrain(cfg: dict, cases: Sequence[dict], in_channels: int, out: Path, trainer_kwargs: Mapping,
                 num_workers: int = 0, progress: bool = True) -> Optional[dict]:
    """MambaMIM on ``cases`` (``{"name", "image": [paths]}``); writes checkpoints and ``metrics.json``
    (rank 0; ``None`` on the other ranks of a DDP run)."""
    from monai.data import CacheDataset, list_data_collate

    from .train import RepeatDataset, seeded_loader

    d, p = cfg["data"], cfg["pretrain"]
    per_item = int(d["samples_per_volume"])
    bs = max(1, int(p["batch_size"]) // per_item)
    ds = CacheDataset([{"image": c["image"], "name": c["name"]} for c in cases], transform=pretrain_transforms(d),
                      cache_rate=1.0, num_workers=0, progress=False)
    dl = seeded_loader(RepeatDataset(ds, int(p["steps_per_epoch"]) * bs), batch_size=bs, shuffle=True,
                       num_workers=num_workers, collate_fn=list_data_collate, persistent_workers=num_workers > 0)
    module = MIMModule(cfg, in_channels)
    if is_rank_zero():
        write_json(out / "config.json", {"config": cfg, "in_channels": in_channels,
                                         "cases": [c["name"] for c in cases]})
    trainer = make_trainer(out, monitor="train_loss", mode="min", progress=progress, **trainer_kwargs)
    t0 = time.time()
    trainer.fit(module, dl)
    if not trainer.is_global_zero:
        return None
    result = {"checkpoint": str(best_or_last_checkpoint(out)),
              "last_train_loss": float(trainer.callback_metrics.get("train_loss", float("nan"))),
              "epochs": trainer.current_epoch, "steps": trainer.global_step,
              "train_seconds": round(time.time() - t0, 1), "parameters": count_parameters(module.mim)}
    write_json(out / "metrics.json", result)
    return result


@torch.no_grad()
def save_reconstructions(module: MIMModule, cases: Sequence[dict], out_dir: Path, n: int = 2,
                         seed: int = 0, overwrite: bool = True) -> List[Path]:
    """Save input, mask and de-normalised reconstruction of one centre patch per case as NIfTI."""
    import nibabel as nib
    import numpy as np
    from monai import transforms as T

    from .infer import save_nifti_atomic
    from .transforms import preprocess_transforms

    d = module.config["data"]
    patch = [int(p) for p in d["patch_size"]]
    tf = T.Compose(preprocess_transforms(d, with_label=False) + [
        T.SpatialPadd(["image"], spatial_size=patch), T.CenterSpatialCropd(["image"], roi_size=patch)])
    g = torch.Generator().manual_seed(seed)
    written = []
    module.eval()
    for c in list(cases)[:n]:
        item = tf({"image": c["image"], "name": c["name"]})
        x = item["image"]
        affine = x.affine.numpy()
        xt = x.as_tensor()[None].float()
        masks = module.mim.draw_masks(xt, g)
        _, recon, m = module.mim(xt, masks)
        # back to intensities: undo the per-patch normalisation with the true patch statistics
        pd = module.mim.net.divisor
        mean = F.interpolate(F.avg_pool3d(xt, pd), scale_factor=pd, mode="nearest")
        std = F.interpolate((F.avg_pool3d(xt * xt, pd) - F.avg_pool3d(xt, pd) ** 2).clamp_min(0).sqrt(),
                            scale_factor=pd, mode="nearest")
        rec = torch.where(m > 0, xt, recon * std + mean)
        for tag, arr in (("input", xt), ("masked", xt * m), ("recon", rec)):
            path = out_dir / f"{c['name']}_{tag}.nii.gz"
            img = nib.Nifti1Image(np.ascontiguousarray(arr[0, 0].numpy(), dtype=np.float32), affine)
            written.append(save_nifti_atomic(img, path, overwrite=overwrite))
    return written


def pretrain_cases(images: Optional[Sequence[str]] = None, data: Optional[str] = None) -> Tuple[list, int]:
    """Cases and channel count from ``--images`` (NIfTI files/folders) or ``--data`` (labels unused)."""
    from .data import find_input_cases, load_data

    if images:
        groups, problems = find_input_cases(images)
        if problems:
            raise UserError(problems[0][1])
        cases = [{"name": k, "image": [str(p) for p in v]} for k, v in sorted(groups.items())]
        if not cases:
            raise UserError(images[0], "no NIfTI volumes found")
        if len({len(c["image"]) for c in cases}) > 1:
            raise UserError(images[0], "cases have different numbers of channels")
        return cases, len(cases[0]["image"])
    ds = load_data(data)
    return ds["training"] + ds["validation"] + ds["test"], ds["num_channels"]


def pretrain_command(out: str | Path, images: Optional[Sequence[str]] = None, data: Optional[str] = None, config=None,
                     set_pairs: Sequence[str] = (), trainer_kwargs: Optional[Mapping] = None, num_workers: int = 0,
                     seed: int = 0, overwrite: bool = False, save_recon: int = 0,
                     progress: bool = True) -> Optional[dict]:
    """``ssm-medseg pretrain``: config, cases, run folder (rank 0), :func:`run_pretrain`, reconstructions."""
    from core.engine import load_module, prepare_run_dir, seed_everything

    from .config import RUN_FILES, resolve

    cfg = resolve(config, set_pairs)
    cases, n_ch = pretrain_cases(images, data)
    out = prepare_run_dir(out, overwrite, clear=RUN_FILES)
    seed_everything(seed)
    res = run_pretrain(cfg, cases, n_ch, out, dict(trainer_kwargs or {}), num_workers, progress)
    if res is not None and save_recon:
        module = load_module(res["checkpoint"], MIMModule)
        files = save_reconstructions(module, cases, out / "reconstructions", n=save_recon, seed=seed)
        print(f"reconstructions: {len(files)} NIfTI files in {out / 'reconstructions'}")
    return res
