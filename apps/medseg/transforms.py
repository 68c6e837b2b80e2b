"""MONAI transform pipelines: load -> RAS -> spacing -> intensity normalisation -> foreground crop
-> pos/neg patch sampling -> spatial + intensity augmentation.

The deterministic head (:func:`preprocess_transforms`) is shared by training, validation and
``predict``, so inference sees exactly what training saw; ``predict`` inverts it through the
affine that MONAI tracks on the MetaTensor (see :mod:`apps.medseg.infer`).

The augmentation is built for "train on one scanner, predict on another": robust percentile
intensity scaling plus random gamma, bias field, contrast, noise, blur and simulated low
resolution cover different intensity ranges and resolutions; rotations and scaling cover head
position and voxel size; orientation is removed by the RAS reorientation.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor

from .data import load_case

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class LoadCased(T.MapTransform):
    """``{"image": [paths], "label": path | None, "name"}`` -> MetaTensors ``image`` (C, X, Y, Z) and
    ``label`` (1, X, Y, Z) with the file affine, via the validating :func:`load_case`."""

    def __init__(self, keys=("image", "label"), keep_ref: bool = False):
        super().__init__(keys, allow_missing_keys=True)
        self.keep_ref = keep_ref  # predict needs the input header to write the mask on its grid

    def __call__(self, d: Mapping) -> Dict[str, Any]:
        out = dict(d)
        img, lab, ref = load_case(d["image"], d.get("label"), d.get("name"))
        affine = torch.as_tensor(ref.affine, dtype=torch.float64)
        meta = {"filename_or_obj": str(d["image"][0]), "original_affine": ref.affine.copy(),
                "spatial_shape": np.asarray(img.shape[1:])}
        out["image"] = MetaTensor(torch.from_numpy(img), affine=affine.clone(), meta=dict(meta))
        if lab is not None:
            out["label"] = MetaTensor(torch.from_numpy(lab[None].astype(np.float32)), affine=affine.clone(),
                                      meta=dict(meta))
        else:
            out.pop("label", None)
        if self.keep_ref:
            out["ref"] = ref
        return out


class AboveMin:
    """Foreground for cropping: voxels above the volume minimum (air in CT, zero padding in MRI)."""

    def __init__(self, margin: float = 1e-3):
        self.margin = margin

    def __call__(self, x):
        lo = x.min()
        return x > lo + self.margin * (x.max() - lo)


class PlannedNormalised(T.MapTransform):
    """Per-channel normalisation from a plan (``data.norm`` a list, one entry per channel):
    ``{"scheme": "ct", "clip": [lo, hi], "mean", "std"}`` clips to the dataset's foreground
    percentiles and z-scores with its foreground statistics (nnU-Net's CT scheme);
    ``{"scheme": "zscore"}`` z-scores the channel per case; ``{"scheme": "none"}`` keeps it."""

    def __init__(self, specs: Sequence[Mapping], keys=("image",)):
        super().__init__(keys)
        for s in specs:
            if s.get("scheme") not in ("ct", "zscore", "none"):
                raise ValueError(f"unknown data.norm scheme {s.get('scheme')!r} (ct, zscore, none)")
        self.specs = list(specs)

    def __call__(self, d: Mapping) -> Dict[str, Any]:
        out = dict(d)
        for key in self.keys:
            x = out[key]
            if x.shape[0] != len(self.specs):
                from core.engine import UserError

                raise UserError(f"data.norm has {len(self.specs)} channel entries, the image has {x.shape[0]}")
            y = torch.as_tensor(x).clone().float() if not isinstance(x, MetaTensor) else x.clone().float()
            for c, s in enumerate(self.specs):
                xc = y[c].as_tensor() if isinstance(y, MetaTensor) else y[c]
                if s["scheme"] == "ct":
                    lo, hi = s["clip"]
                    y[c] = (xc.clamp(float(lo), float(hi)) - float(s["mean"])) / float(s["std"])
                elif s["scheme"] == "zscore":
                    y[c] = (xc - xc.mean()) / xc.std().clamp_min(1e-8)
            out[key] = y
        return out


def _normalise(cfg: Mapping, keys=("image",)) -> List:
    norm = cfg["norm"]
    if isinstance(norm, (list, tuple)):
        return [PlannedNormalised(norm, keys)]
    if norm == "ct":
        lo, hi = cfg["ct_window"]
        return [T.ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if norm == "zscore":
        return [T.NormalizeIntensityd(keys, nonzero=True, channel_wise=True)]
    if norm == "percentile":
        lo, hi = cfg["percentiles"]
        # robust [0, 1] per channel: an 8-bit, 12-bit or float scanner range all land in the same place
        return [T.ScaleIntensityRangePercentilesd(keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0,
                                                  clip=False, relative=False, channel_wise=True)]
    if norm == "none":
        return []
    raise ValueError(f"unknown data.norm {norm!r} (ct, zscore, percentile, none)")


def preprocess_transforms(cfg: Mapping, with_label: bool = True, keep_ref: bool = False) -> List:
    """Deterministic head: load, RAS, resample to ``cfg['spacing']``, normalise, crop foreground."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    ts: List = [LoadCased(keep_ref=keep_ref), T.Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS)]
    if cfg.get("spacing"):
        ts.append(T.Spacingd(keys, pixdim=list(cfg["spacing"]), mode=modes, padding_mode="border"))
    ts += _normalise(cfg)
    if cfg.get("crop_foreground", True):
        ts.append(T.CropForegroundd(keys, source_key="image", select_fn=AboveMin(), margin=4,
                                    allow_smaller=True))
    ts.append(T.EnsureTyped(keys, dtype=torch.float32, track_meta=True))
    return ts


def augmentation_transforms(cfg: Mapping) -> List:
    """Random part: pos/neg patch sampling then spatial and intensity augmentation."""
    patch = [int(p) for p in cfg["patch_size"]]
    level = cfg.get("aug", "strong")
    keys = ["image", "label"]
    # sample a larger box so rotation/scaling has real context around the final patch
    big = [int(round(p * 1.3)) if level != "none" else p for p in patch]
    ts: List = [
        T.SpatialPadd(keys, spatial_size=big, mode="constant"),
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=big, pos=cfg["pos"], neg=cfg["neg"],
                                 num_samples=int(cfg["samples_per_volume"]), allow_smaller=False),
    ]
    if level == "none":
        return ts + [T.EnsureTyped(keys, dtype=torch.float32, track_meta=False)]
    rot = cfg.get("rotate_deg", 20.0)
    rot = [float(np.deg2rad(float(r))) for r in (rot if isinstance(rot, (list, tuple)) else [rot] * 3)]
    smin, smax = cfg.get("scale_range", [0.8, 1.25])
    ts.append(T.RandAffined(keys, prob=0.8, spatial_size=patch, rotate_range=tuple(rot),
                            scale_range=[(1.0 / smax - 1.0, 1.0 / smin - 1.0)] * 3,
                            mode=("bilinear", "nearest"), padding_mode="border"))
    ts.append(T.CenterSpatialCropd(keys, roi_size=patch))  # when RandAffine did not fire
    for ax in cfg.get("flip_axes", []) or []:
        ts.append(T.RandFlipd(keys, prob=0.5, spatial_axis=int(ax)))
    img = ["image"]
    if level == "strong":
        ts += [
            T.RandSimulateLowResolutiond(img, prob=0.25, zoom_range=(0.4, 1.0)),
            T.RandBiasFieldd(img, prob=0.5, coeff_range=(0.0, 0.4)),
            T.RandAdjustContrastd(img, prob=0.5, gamma=(0.5, 2.0)),
            T.RandGaussianSmoothd(img, prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)),
            T.RandGaussianNoised(img, prob=0.3, std=0.05),
            T.RandScaleIntensityd(img, prob=0.5, factors=0.25),
            T.RandShiftIntensityd(img, prob=0.5, offsets=0.1),
        ]
    else:  # "light": nnU-Net-like mild intensity changes
        ts += [T.RandScaleIntensityd(img, prob=0.3, factors=0.1), T.RandShiftIntensityd(img, prob=0.3, offsets=0.1),
               T.RandGaussianNoised(img, prob=0.15, std=0.02)]
    return ts + [T.EnsureTyped(keys, dtype=torch.float32, track_meta=False)]


def train_transforms(cfg: Mapping) -> T.Compose:
    """Full training pipeline for :class:`monai.data.CacheDataset` (deterministic head is cached)."""
    return T.Compose(preprocess_transforms(cfg, True) + augmentation_transforms(cfg))


def val_transforms(cfg: Mapping) -> T.Compose:
    """Whole preprocessed volumes for sliding-window validation."""
    return T.Compose(preprocess_transforms(cfg, True))


def user_error_in(e: BaseException):
    """The :class:`UserError` MONAI's ``Compose`` wrapped into a RuntimeError, if any."""
    from core.engine import UserError

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def make_dataset(cases: Sequence[dict], cfg: Mapping, train: bool, cache_rate: float = 1.0):
    """A MONAI ``CacheDataset`` over ``cases``: files are read and preprocessed once, not every epoch."""
    from monai.data import CacheDataset

    tf = train_transforms(cfg) if train else val_transforms(cfg)
    try:
        return CacheDataset(list(cases), transform=tf, cache_rate=cache_rate, num_workers=0, progress=False,
                            copy_cache=True)
    except Exception as e:  # a bad file: report it in one line, not as a transform traceback
        ue = user_error_in(e)
        if ue is not None:
            raise ue from None
        raise
