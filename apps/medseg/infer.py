"""Hospital-style inference: NIfTI case(s) in, uint8 label NIfTI out on the input's own grid.

Pipeline per case: validated load -> the training preprocessing (RAS, spacing, normalisation,
foreground crop; MONAI tracks the resulting affine) -> sliding-window softmax (optional flip TTA)
-> probabilities resampled in world coordinates straight onto the input voxel grid (this inverts
orientation, spacing and crop in one step) -> argmax -> uint8 NIfTI with the input header
(same shape, affine, qform/sform and their codes; scaling slope/intercept reset).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from core.engine import ItemFailures, UserError, atomic_path, progress

from .data import find_input_cases
from .transforms import preprocess_transforms


def load_segmenter(ckpt: str | Path, device: str = "cpu"):
    """A trained :class:`~apps.medseg.train.SegModule` (checkpoint file or run folder) in eval mode on ``device``."""
    from core.engine import load_module, resolve_checkpoint, resolve_device

    from .train import SegModule

    dev = resolve_device(device)
    module = load_module(resolve_checkpoint(ckpt), SegModule, map_location="cpu")
    return module.to(dev).eval()


class WindowProgress:
    """Wraps the network for sliding-window inference and prints ``CASE: windows i/N (elapsed)`` every
    few seconds (stderr), so a log shows a large case or ``--tta`` moving."""

    def __init__(self, net: Callable, name: str, total: int, interval: Optional[float] = None):
        from core.engine.progress_log import every_s

        self.net, self.name, self.total = net, name, total
        self.interval = every_s() if interval is None else interval
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        self.done = min(self.total, self.done + int(x.shape[0]))
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(f"{self.name}: windows {self.done}/{self.total} ({now - self.t0:.0f} s)", file=sys.stderr, flush=True)
        return y


def count_windows(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Sliding windows MONAI runs over a volume of spatial ``shape`` (after padding to ``roi_size``)."""
    n = 1
    for s, r in zip(shape, roi_size):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return n


def preprocess_case(image_paths: Sequence[str | Path], data_cfg: Mapping,
                    name: Optional[str] = None) -> Tuple[MetaTensor, nib.Nifti1Image]:
    """Validated load + training preprocessing. Returns ``x`` (C, X', Y', Z') with its affine tracked
    by MONAI, and the channel-0 NIfTI image (the output grid)."""
    load, *rest = preprocess_transforms(data_cfg, with_label=False, keep_ref=True)
    d = load({"image": [str(p) for p in image_paths], "name": name})  # outside Compose: UserError stays one line
    d = T.Compose(rest)(d)
    return d["image"], d["ref"]


@torch.no_grad()
def sliding_window_probs(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, roi_size: Sequence[int],
                         sw_batch_size: int = 2, overlap: float = 0.25, device: str = "cpu", tta: bool = False,
                         show_progress: bool = False) -> torch.Tensor:
    """Softmax probabilities (K, X', Y', Z') on CPU for one preprocessed volume ``x`` (C, X', Y', Z').

    Windows run on ``device``; the stitching buffer stays on the CPU so a 256^3 volume fits.
    ``tta`` averages the identity and the three single-axis mirrorings.
    """
    inp = torch.as_tensor(x, dtype=torch.float32)[None]
    if isinstance(inp, MetaTensor):
        inp = inp.as_tensor()
    flips: List[Tuple[int, ...]] = [()] + ([(2,), (3,), (4,)] if tta else [])
    total = None
    for dims in flips:
        xi = torch.flip(inp, dims) if dims else inp
        logits = sliding_window_inference(xi, list(roi_size), sw_batch_size, net, overlap=overlap,
                                          mode="gaussian", sw_device=device, device="cpu",
                                          progress=show_progress)
        p = torch.softmax(logits.float(), dim=1)
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total.add_(p)
    return (total / len(flips))[0]


def probs_to_input_grid(probs: torch.Tensor, src_affine: torch.Tensor, ref: nib.Nifti1Image,
                        keep_probs: bool = False, chunk: int = 8) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Map probabilities (K, X', Y', Z') on the preprocessed grid back onto ``ref``'s voxel grid.

    Trilinear resampling in world coordinates inverts reorientation, resampling and cropping at
    once. Outside the cropped box the voxel is background: the background channel is completed so
    every voxel's probabilities sum to one. Classes go in chunks so memory stays ~ (chunk+2) volumes.
    Returns labels uint8 (X, Y, Z) and, with ``keep_probs``, float32 (K, X, Y, Z).
    """
    shape = tuple(int(s) for s in ref.shape[:3])
    dst = torch.as_tensor(ref.affine, dtype=torch.float64)
    resample = T.SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float64)
    k = probs.shape[0]
    best_val = best_idx = None
    kept = [] if keep_probs else None
    for start in range(0, k, chunk):
        part = probs[start:start + chunk].float()
        if start == 0:  # a ones channel measures how much of each output voxel lies inside the box
            part = torch.cat([torch.ones_like(part[:1]), part], 0)
        src = MetaTensor(part, affine=torch.as_tensor(src_affine, dtype=torch.float64).clone())
        out = resample(src, dst_affine=dst, spatial_size=shape)
        out = torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out, dtype=torch.float32)
        if start == 0:
            inside, out = out[0].clamp_(0, 1), out[1:]
            out[0] += 1.0 - inside
        v, i = out.max(0)
        i = i + start
        if best_val is None:
            best_val, best_idx = v, i
        else:
            better = v > best_val
            best_val = torch.where(better, v, best_val)
            best_idx = torch.where(better, i, best_idx)
        if kept is not None:
            kept.append(out.numpy())
    if k > 256:
        raise UserError(f"model has {k} classes; uint8 masks hold at most 256")
    labels = best_idx.numpy().astype(np.uint8)
    return labels, (np.concatenate(kept, 0) if kept is not None else None)


def keep_largest_component(labels: np.ndarray, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class in ``classes`` (default: every
    foreground class), with MONAI's ``KeepLargestConnectedComponent``; the removed voxels become
    background (nnU-Net-style post-processing). labels (X, Y, Z) uint8 -> same."""
    from monai.transforms import KeepLargestConnectedComponent

    present = [int(c) for c in np.unique(labels) if c != 0]
    todo = present if classes is None else [c for c in present if c in {int(k) for k in classes}]
    if not todo:
        return labels.copy()
    klcc = KeepLargestConnectedComponent(applied_labels=todo, is_onehot=False, independent=True)
    out = klcc(torch.as_tensor(labels.astype(np.int64))[None])[0]
    out = out.as_tensor() if isinstance(out, MetaTensor) else out
    return np.asarray(out).astype(labels.dtype)


def postprocessing_classes(config: Mapping, keep_largest: bool) -> Optional[List[int]]:
    """Classes to keep the largest component of: every class with ``--keep-largest``, else what
    training decided on validation (``config["postprocessing"]["keep_largest"]``), else none."""
    if keep_largest:
        return None  # all
    return [int(c) for c in (config.get("postprocessing") or {}).get("keep_largest", [])]


def _output_header(ref: nib.Nifti1Image, dtype) -> nib.Nifti1Header:
    hdr = ref.header.copy()
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)  # no scaling: stored values are the labels
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    return hdr


def nifti_like(data: np.ndarray, ref: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI with ``ref``'s header (affine, qform/sform and codes unchanged) holding ``data``.

    ``data`` (X, Y, Z) or (X, Y, Z, K) must be on ref's grid. Passing ref's own affine keeps
    nibabel from rewriting qform/sform (it only does so when the affine changes).
    """
    if tuple(data.shape[:3]) != tuple(ref.shape[:3]):
        raise ValueError(f"data shape {data.shape} is not on the reference grid {ref.shape[:3]}")
    hdr = _output_header(ref, data.dtype)
    cls = type(ref) if isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    img = cls(data, ref.affine, header=hdr)
    return img


def save_nifti_atomic(img: nib.Nifti1Image, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``img`` to ``path`` via a temporary file + rename (never half-written)."""
    path = Path(path)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, overwrite=overwrite, suffix=suffix) as tmp:
        # nibabel picks the format from the name: write to a name ending in .nii(.gz), then move
        real = tmp.with_name(tmp.name[: -len(".tmp")])
        nib.save(img, str(real))
        real.replace(tmp)
    return path


def save_mask(labels: np.ndarray, ref: nib.Nifti1Image, path: str | Path, overwrite: bool = False) -> Path:
    """uint8 label mask (X, Y, Z) on ``ref``'s grid -> ``path`` atomically."""
    return save_nifti_atomic(nifti_like(np.ascontiguousarray(labels, dtype=np.uint8), ref), path, overwrite)


def predict_file_cases(net: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[str | Path],
                       out_dir: str | Path, data_cfg: Mapping, roi_size: Sequence[int], num_channels: int,
                       sw_batch_size: int = 2, overlap: float = 0.25, device: str = "cpu", tta: bool = False,
                       save_probabilities: bool = False, overwrite: bool = False,
                       log: Callable[[str], None] = print, keep_largest: bool = False,
                       keep_largest_classes: Optional[Sequence[int]] = (),
                       on_failure: Optional[Callable[[str], None]] = None) -> Tuple[List[Path], List[str]]:
    """Predict every case in ``inputs`` (folders in nnU-Net naming and/or files) into ``out_dir``.

    Post-processing: ``keep_largest`` keeps the largest component of every class; otherwise of
    the classes in ``keep_largest_classes`` (training's decision, stored in the checkpoint).

    A bad case is reported once, in one line (``on_failure(line)``, default ``log("error: " + line)``),
    and skipped; returns (written mask paths, failure lines). Progress: a line per case, and per few
    seconds of sliding windows.
    """
    if on_failure is None:
        def on_failure(line: str) -> None:
            log(f"error: {line}")
    cases, problems = find_input_cases(inputs)
    failures = [msg for _, msg in problems]
    for msg in failures:
        on_failure(msg)
    out_dir = Path(out_dir)
    written: List[Path] = []
    if not cases:
        if not failures:
            failures.append(f"{inputs[0]}: no NIfTI cases found")
            on_failure(failures[-1])
        return written, failures
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, paths in progress(sorted(cases.items()), "cases", total=len(cases)):
        out_path = out_dir / f"{name}.nii.gz"
        prob_path = out_dir / f"{name}_probabilities.nii.gz"
        try:
            if not overwrite:
                for p in ([out_path, prob_path] if save_probabilities else [out_path]):
                    if p.exists():
                        raise UserError(p, "already exists (pass --overwrite to replace it)")
            if len(paths) != num_channels:
                raise UserError(paths[0], f"case {name}: {len(paths)} channel file(s), the model expects "
                                          f"{num_channels} ({name}_0000 .. {name}_{num_channels - 1:04d})")
            t0 = time.time()
            x, ref = preprocess_case(paths, data_cfg, name)
            n_win = count_windows(x.shape[1:], roi_size, overlap) * (4 if tta else 1)
            probs = sliding_window_probs(WindowProgress(net, name, n_win), x, roi_size, sw_batch_size, overlap,
                                         device, tta)
            labels, p_in = probs_to_input_grid(probs, x.affine, ref, keep_probs=save_probabilities)
            if keep_largest or keep_largest_classes:
                labels = keep_largest_component(labels, None if keep_largest else keep_largest_classes)
            save_mask(labels, ref, out_path, overwrite=overwrite)
            if save_probabilities:
                p4 = np.ascontiguousarray(np.moveaxis(p_in, 0, -1), dtype=np.float32)
                save_nifti_atomic(nifti_like(p4, ref), prob_path, overwrite=overwrite)
            written.append(out_path)
            fg = int((labels > 0).sum())
            log(f"{name}: wrote {out_path} ({fg} foreground voxels, {time.time() - t0:.1f} s)")
        except UserError as e:
            failures.append(str(e))
            on_failure(str(e))
    return written, failures


def predict_command(checkpoint, inputs: Sequence[str | Path], out: str | Path, device: str = "cpu", tta: bool = False,
                    save_probabilities: bool = False, overlap: Optional[float] = None, keep_largest: bool = False,
                    overwrite: bool = False) -> int:
    """``ssm-medseg predict``: masks under ``out``; one line per failed case, one summary line, no
    empty folder left behind. Returns the exit code (2 if any case failed)."""
    from core.engine import OutputFolder

    module = load_segmenter(checkpoint, device)
    cfg = module.config
    failures = ItemFailures("case")
    with OutputFolder(out):
        written, failed = predict_file_cases(
            module.net, inputs, Path(out), cfg["data"], cfg["data"]["patch_size"], int(module.hparams.in_channels),
            sw_batch_size=cfg["train"]["sw_batch_size"], overlap=overlap or cfg["train"]["overlap"], device=device,
            tta=tta, save_probabilities=save_probabilities, overwrite=overwrite, keep_largest=keep_largest,
            keep_largest_classes=postprocessing_classes(cfg, False),
            log=lambda line: print(line, flush=True), on_failure=failures.fail)
    total = len(written) + len(failed)
    if failed:
        return failures.finish(total, f"{out}/")
    print(f"{len(written)} case(s) written to {out}/")
    return 0
