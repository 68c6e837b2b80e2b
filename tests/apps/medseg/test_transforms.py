"""MONAI pipelines on the real Colin27: RAS + spacing, orientation invariance, robust intensities, patches."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai import transforms as T

from apps.medseg.transforms import preprocess_transforms, train_transforms, val_transforms

from .conftest import reorient, tiny_config


def test_preprocess_resamples_to_ras_spacing(brain_data):
    cfg = tiny_config()["data"]
    d = val_transforms(cfg)({"image": [str(brain_data["image"])], "label": str(brain_data["label"]), "name": "c"})
    img, lab = d["image"], d["label"]
    aff = img.affine.numpy()
    assert np.allclose(np.diag(aff)[:3], [4.0, 4.0, 4.0])            # RAS, 4 mm
    assert img.shape[1:] == lab.shape[1:] and img.shape[0] == 1
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}             # nearest: no blended labels
    # brain volume survives resampling (1.74 L at 1 mm)
    vol_ml = lab.sum().item() * 64 / 1000
    assert 1600 < vol_ml < 1900
    assert abs(float(np.percentile(img.numpy(), 99.5)) - 1.0) < 0.15  # percentile scaling to ~[0, 1]


def test_non_ras_input_gives_identical_preprocessing(brain_data, tmp_path):
    cfg = tiny_config()["data"]
    src = nib.load(str(brain_data["image"]))
    nib.save(reorient(src, ("P", "I", "L")), str(tmp_path / "pil.nii.gz"))
    tf = T.Compose(preprocess_transforms(cfg, with_label=False))
    a = tf({"image": [str(brain_data["image"])], "name": "ras"})["image"]
    b = tf({"image": [str(tmp_path / "pil.nii.gz")], "name": "pil"})["image"]
    assert a.shape == b.shape
    assert np.allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-5)
    assert torch.allclose(a.as_tensor(), b.as_tensor(), atol=1e-5)


def test_percentile_norm_ignores_scanner_range(brain_data, tmp_path):
    cfg = tiny_config()["data"]
    src = nib.load(str(brain_data["image"]))
    arr = np.asarray(src.dataobj, np.float32) * 16.0 + 100.0  # 8-bit -> 12-bit-like range with offset
    nib.save(nib.Nifti1Image(arr, src.affine), str(tmp_path / "x16.nii.gz"))
    tf = T.Compose(preprocess_transforms({**cfg, "crop_foreground": False}, with_label=False))
    a = tf({"image": [str(brain_data["image"])]})["image"]
    b = tf({"image": [str(tmp_path / "x16.nii.gz")]})["image"]
    assert torch.allclose(a.as_tensor(), b.as_tensor(), atol=1e-4)


def test_training_patches(brain_data):
    cfg = dict(tiny_config()["data"], aug="strong")
    torch.manual_seed(0)
    tf = train_transforms(cfg)
    tf.set_random_state(seed=0)
    out = tf({"image": [str(brain_data["image"])], "label": str(brain_data["label"]), "name": "c"})
    assert isinstance(out, list) and len(out) == cfg["samples_per_volume"]
    fg = 0
    for s in out:
        assert tuple(s["image"].shape) == (1, 32, 32, 32) and tuple(s["label"].shape) == (1, 32, 32, 32)
        assert torch.isfinite(s["image"]).all()
        assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0}
        fg += s["label"].sum().item()
    assert fg > 0  # pos/neg sampling puts brain in the patches
