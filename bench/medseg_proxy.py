""""Another scanner" proxies of a labelled volume, for the cross-scanner quality check.

Only one real T1 subject (Colin27) is available, so a second subject from a different scanner is
simulated: the volume is rigidly moved (head tilt), resampled to another voxel size, stored in
another axis order, and its intensities are remapped (scale/offset to another range, gamma,
smooth bias field, noise). The label follows the same geometric transform (nearest neighbour).
This tests resolution/orientation/intensity robustness, NOT anatomical variation between people.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates


@dataclass
class ProxyParams:
    spacing: Tuple[float, float, float] = (1.3, 1.3, 1.3)
    axcodes: Tuple[str, str, str] = ("L", "P", "S")
    rotation_deg: Tuple[float, float, float] = (8.0, -6.0, 10.0)   # about x, y, z (world)
    shift_mm: Tuple[float, float, float] = (4.0, -3.0, 6.0)
    scale: float = 16.0          # intensity range: e.g. 8-bit -> 12-bit
    offset: float = 100.0
    gamma: float = 0.8
    bias: float = 0.3            # peak-to-peak amplitude of the log bias field
    noise: float = 0.02          # std relative to the robust max
    seed: int = 0
    name: str = field(default="proxy")


def _rotation(deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_proxy(image: nib.Nifti1Image, label: nib.Nifti1Image, p: ProxyParams
               ) -> Tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Transformed (image float32, label uint8) pair on a new grid; see module docstring."""
    src_aff = image.affine
    img = np.asarray(image.dataobj, dtype=np.float32)
    lab = np.asarray(label.dataobj)
    # anatomy moves by the rigid transform T (world -> world) about the volume centre
    centre = src_aff @ np.r_[(np.asarray(img.shape) - 1) / 2.0, 1.0]
    R = _rotation(p.rotation_deg)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = centre[:3] - R @ centre[:3] + np.asarray(p.shift_mm)
    # new RAS grid covering the source field of view at the new spacing
    fov = np.abs(src_aff[:3, :3]).sum(0) * np.asarray(img.shape)
    new_shape = np.ceil(fov / np.asarray(p.spacing)).astype(int)
    ras = np.diag(list(p.spacing) + [1.0])
    ras[:3, 3] = centre[:3] - ras[:3, :3] @ ((new_shape - 1) / 2.0)
    # voxel of the new grid -> world -> (inverse motion) -> source voxel
    m = np.linalg.inv(src_aff) @ np.linalg.inv(T) @ ras
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in new_shape], indexing="ij"), 0).reshape(3, -1)
    src = m[:3, :3] @ grid + m[:3, 3:4]
    new_img = map_coordinates(img, src, order=1, mode="constant", cval=0.0).reshape(new_shape)
    new_lab = map_coordinates(lab.astype(np.float32), src, order=0, mode="constant", cval=0).reshape(new_shape)
    # intensity remap: gamma on [0, 1], smooth multiplicative bias, new range, noise
    rng = np.random.default_rng(p.seed)
    hi = float(np.percentile(new_img, 99.5)) or 1.0
    x = np.clip(new_img / hi, 0, None) ** p.gamma
    c = (grid.T.reshape(*new_shape, 3) - (new_shape - 1) / 2.0) / new_shape
    coef = rng.normal(0, 1, 6)
    field_ = c @ coef[:3] + (c ** 2) @ coef[3:]
    field_ = (field_ - field_.min()) / max(np.ptp(field_), 1e-6) - 0.5
    x = x * np.exp(p.bias * field_)
    x = x + rng.normal(0, p.noise, x.shape)
    out = (p.scale * 255.0 * x + p.offset).astype(np.float32)
    out_img = nib.Nifti1Image(out, ras)
    out_lab = nib.Nifti1Image(new_lab.astype(np.uint8), ras)
    tr = nib.orientations.ornt_transform(nib.io_orientation(ras), nib.orientations.axcodes2ornt(p.axcodes))
    out_img, out_lab = out_img.as_reoriented(tr), out_lab.as_reoriented(tr)
    for x_ in (out_img, out_lab):
        x_.set_qform(x_.affine, code=1)
        x_.set_sform(x_.affine, code=1)
    return out_img, out_lab


# Held-out test proxies (parameters never used by training; the validation proxy is separate).
TEST_PROXIES = (
    ProxyParams(spacing=(1.3, 1.3, 1.3), axcodes=("L", "P", "S"), rotation_deg=(8, -6, 10), shift_mm=(4, -3, 6),
                scale=16.0, offset=100.0, gamma=0.8, bias=0.3, noise=0.02, seed=11, name="proxyA_1.3mm_LPS_12bit"),
    ProxyParams(spacing=(0.9, 0.9, 2.5), axcodes=("P", "I", "R"), rotation_deg=(-12, 4, -5), shift_mm=(-5, 6, -2),
                scale=0.01, offset=0.0, gamma=1.3, bias=0.4, noise=0.03, seed=12, name="proxyB_0.9x0.9x2.5mm_PIR_float"),
    ProxyParams(spacing=(1.6, 1.2, 1.2), axcodes=("A", "S", "L"), rotation_deg=(3, 15, 0), shift_mm=(0, 8, 4),
                scale=4.0, offset=-300.0, gamma=0.65, bias=0.5, noise=0.04, seed=13, name="proxyC_1.6x1.2x1.2mm_ASL"),
)
VAL_PROXY = ProxyParams(spacing=(1.1, 1.1, 1.4), axcodes=("R", "A", "S"), rotation_deg=(-4, 3, 6), shift_mm=(2, 2, -3),
                        scale=2.0, offset=20.0, gamma=1.1, bias=0.2, noise=0.02, seed=5, name="val_proxy")
