"""Synthetic labelled NIfTI volumes for the demo and tests (no external data).

Each volume: a noisy "body" with two ellipsoid "organs" (labels 1, 2) at random positions and
sizes, a smooth multiplicative bias field, anisotropic voxels, and optionally a non-RAS axis order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import nibabel as nib
import numpy as np


def synth_volume(rng: np.random.Generator, shape: Sequence[int] = (48, 48, 24),
                 spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns image float32 (X, Y, Z), label uint8 (X, Y, Z) and a RAS affine (4, 4)."""
    sp = np.asarray(spacing, float)
    grid = np.stack(np.meshgrid(*[np.arange(s) * d for s, d in zip(shape, sp)], indexing="ij"), -1)
    ext = np.asarray(shape) * sp
    c = ext / 2
    body = (((grid - c) / (ext * np.array([0.45, 0.42, 0.48]))) ** 2).sum(-1) <= 1
    label = np.zeros(shape, np.uint8)
    img = np.where(body, 0.35, 0.02).astype(np.float32)
    for lab, (rad, val) in enumerate([((12.0, 9.0, 10.0), 0.75), ((6.0, 6.0, 7.0), 1.0)], start=1):
        r = np.asarray(rad) * rng.uniform(0.8, 1.25, 3)
        ctr = c + rng.uniform(-0.18, 0.18, 3) * ext
        if lab == 2:  # keep the small organ beside the big one
            ctr = c + np.sign(rng.uniform(-1, 1, 3)) * np.array([14.0, 0.0, 0.0]) + rng.uniform(-3, 3, 3)
        inside = (((grid - ctr) / r) ** 2).sum(-1) <= 1
        label[inside & body] = lab
        img[inside & body] = val
    # smooth bias field and noise: the network must not rely on absolute intensities
    coords = (grid - c) / ext
    bias = np.exp(coords @ rng.normal(0, 0.3, 3) + 0.2 * rng.normal() * (coords ** 2).sum(-1))
    img = img * bias.astype(np.float32) * rng.uniform(80, 400) + rng.normal(0, 6.0, shape)
    affine = np.diag(list(sp) + [1.0])
    affine[:3, 3] = -c + rng.uniform(-5, 5, 3)
    return img.astype(np.float32), label, affine


def reorient(img: nib.Nifti1Image, axcodes: Tuple[str, str, str]) -> nib.Nifti1Image:
    """The same volume stored in another voxel axis order (world positions unchanged)."""
    tr = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(axcodes))
    return img.as_reoriented(tr)


def make_demo_dataset(root: str | Path, n_train: int = 4, n_test: int = 1, seed: int = 0) -> Dict[str, list]:
    """Write an nnU-Net-style folder ``root/imagesTr, labelsTr, imagesTs, labelsTs`` + dataset.json.

    The first test case is stored non-RAS (axes P, S, L) with qform and sform set.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = {"training": [], "test": []}
    for i in range(n_train + n_test):
        test = i >= n_train
        shape = (48, 48, 24) if i % 2 == 0 else (40, 44, 30)
        spacing = (1.5, 1.5, 3.0) if i % 2 == 0 else (1.8, 1.6, 2.5)
        img, lab, aff = synth_volume(rng, shape, spacing)
        name = f"synth_{i:03d}"
        im = nib.Nifti1Image(img, aff)
        lb = nib.Nifti1Image(lab, aff)
        if test and i == n_train:
            im, lb = reorient(im, ("P", "S", "L")), reorient(lb, ("P", "S", "L"))
        for x in (im, lb):
            x.set_qform(x.affine, code=1)
            x.set_sform(x.affine, code=1)
        nib.save(im, str(root / ("imagesTs" if test else "imagesTr") / f"{name}_0000.nii.gz"))
        nib.save(lb, str(root / ("labelsTs" if test else "labelsTr") / f"{name}.nii.gz"))
        names["test" if test else "training"].append(name)
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "synthetic"}, "labels": {"background": 0, "big_organ": 1, "small_organ": 2},'
        f' "numTraining": {n_train}, "file_ending": ".nii.gz"}}\n')
    return names
